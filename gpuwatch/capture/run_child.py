"""Inside every Python process `gpuwatch run` starts: find the ones that train, and watch each from its first
training call.

The launcher (`capture/launcher.py`) puts `capture/bootstrap/` first on PYTHONPATH and the run's settings in
the environment; the `sitecustomize.py` there waits for torch and calls `loaded()`. Which processes are
watched:

- not a launcher: `torchrun`, `python -m torch.distributed.run` / `.launch` (the elastic agent) get nothing;
- not a descendant of a watched process: a watched process puts its pid in `GPUWATCH_RUN_WATCHED_PID`, so
  its DataLoader workers (forked or spawned) and any helper it starts stay unwatched;
- a process that makes a *training call*: its first DataLoader iteration, its first backward pass, or the
  script's own `gpuwatch.watch()`, outside a DataLoader worker (`torch.utils.data.get_worker_info()`).
  A process that never makes one (an `mp.spawn` parent waiting for its ranks, a helper that only imports
  torch) is never watched and writes nothing.

Cheap until then: a process that never imports torch never imports gpuwatch. When torch has loaded, the
modules a watch needs are imported (so the first training call pays only the watch's start) and two
trip-wires (class attributes replaced by a wrapper) wait for the first training call. The first to fire
removes both, starts the watch (`auto_steps.RunWatcher`, which also finds the steps), and the call goes on
through the watch's own hooks, so it is timed too.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

ENV_OPTIONS = "GPUWATCH_RUN_OPTIONS"
"""JSON: {"run_dir": ..., "watch": {gpuwatch.watch keyword arguments}}; set by the launcher."""
ENV_RUN_DIR = "GPUWATCH_RUN_DIR"
"""The run directory (also the default of a script's own `gpuwatch.watch()`)."""
ENV_WATCHED = "GPUWATCH_RUN_WATCHED_PID"
"""Set by a watched process for its descendants: they are not watched."""
LAUNCHER_MODULES = frozenset({"torch.distributed.run", "torch.distributed.launch"})
LAUNCHER_SCRIPTS = frozenset({"torchrun"})
PRELOAD = (
    "gpuwatch.capture.auto_steps",
    "gpuwatch.store.segment_writer",
    "collectors.hooks.torch_hooks",
    "collectors.hooks.collective_hooks",
    "collectors.hooks.checkpoint_hooks",
    "collectors.hooks.stack_sampler",
    "collectors.hooks.profiler_window",
    "collectors.system.proc_sampler",
    "collectors.system.nvml_sampler",
    "collectors.pyspy.step_detect",
)
"""What a watch imports as it starts, imported once torch has loaded: the first training call then costs the
watch's start (~15 ms), not ~100 ms of imports inside the script's first timed iteration."""


def program_of(argv: Sequence[str]) -> tuple[str, str]:
    """What a Python command line runs: ("module", name), ("script", path), ("code", "") or ("stdin", "").

    `argv` is the whole command, interpreter first (`sys.orig_argv`).
    """
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        for j, flag in enumerate(arg[1:], start=2):
            if flag in "cm":
                value = arg[j:] or (argv[i + 1] if i + 1 < len(argv) else "")
                return ("module", value) if flag == "m" else ("code", "")
            if flag in "WX":
                i += 0 if arg[j:] else 1  # the value is the rest of this argument, or the next one
                break
        i += 1
    if i < len(argv) and argv[i] == "--":
        i += 1
    if i < len(argv) and argv[i] != "-":
        return "script", argv[i]
    return "stdin", ""


def is_launcher(argv: Sequence[str]) -> bool:
    """Is this Python command torch's launcher (it starts the ranks and trains nothing itself)?"""
    kind, name = program_of(argv)
    if kind == "module":
        return name in LAUNCHER_MODULES
    return kind == "script" and os.path.basename(name) in LAUNCHER_SCRIPTS


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.armed: bool | None = None
        self.decided = False
        self.pid = os.getpid()
        self.watcher: Any = None
        self.run_dir = ""
        self.options: dict[str, Any] = {}
        self.restore: list[Callable[[], None]] = []


_STATE = _State()


def loaded(name: str, module: Any) -> None:
    """Called by the bootstrap `sitecustomize` once `torch` or `gpuwatch.capture.watch` has finished loading
    in a process of the job: arm the trip-wires, or let a script's own watch join. Never raises."""
    try:
        if not _armed():
            return
        if name == "torch":
            _arm_tripwires(module)
        else:
            module._RUN_HOOK = _join_user_watch
    except Exception as exc:
        _say(f"not watching this process ({type(exc).__name__}: {exc})")


def _armed() -> bool:
    """Is this process a candidate: not torch's launcher, settings readable (decided once)."""
    state = _STATE
    if state.armed is None:
        state.armed = False
        if is_launcher(getattr(sys, "orig_argv", sys.argv)) or os.environ.get(ENV_WATCHED):
            return False
        config = json.loads(os.environ[ENV_OPTIONS])
        state.run_dir = str(config["run_dir"])
        state.options = dict(config.get("watch") or {})
        state.armed = True
    return state.armed


def _say(message: str) -> None:
    try:
        print(f"gpuwatch run: {message}", file=sys.stderr, flush=True)
    except Exception:
        pass


# ---- the trip-wires -----------------------------------------------------------------------------------
def _arm_tripwires(torch: Any) -> None:
    """torch has loaded: wait for this process's first DataLoader iteration or backward pass."""
    import importlib

    from torch.utils.data import dataloader

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # an optional collector that cannot load here: the watch notes it when it starts
            pass

    if _STATE.decided:  # the script's own gpuwatch.watch() came first and decided already
        return
    _tripwire(dataloader.DataLoader, "_get_iterator", "DataLoader iteration")
    autograd = torch.autograd
    if "_engine_run_backward" in vars(autograd):
        _tripwire(autograd, "_engine_run_backward", "backward pass")
    else:  # older torch
        _tripwire(autograd, "backward", "backward pass")


def _tripwire(owner: Any, attr: str, trigger: str) -> None:
    original = vars(owner)[attr]

    def tripwire(*args: Any, **kwargs: Any) -> Any:
        start_watch(trigger)
        return getattr(owner, attr)(*args, **kwargs)  # now the watch's hook (or the original again)

    def restore() -> None:
        if vars(owner).get(attr) is tripwire:
            setattr(owner, attr, original)

    setattr(owner, attr, tripwire)
    _STATE.restore.append(restore)


def start_watch(trigger: str) -> Any:
    """Decide, once, whether this process is watched, and start its watch; returns it (or None)."""
    state = _STATE
    with state.lock:
        if state.decided:
            return state.watcher if state.pid == os.getpid() else None
        state.decided = True
        state.pid = os.getpid()  # a rank forked before its parent decided decides for itself
        for restore in state.restore:
            restore()
        state.restore.clear()
        if _in_dataloader_worker():
            return None
        os.environ[ENV_WATCHED] = str(os.getpid())  # inherited by workers and helpers: they stay unwatched
        try:
            from gpuwatch.capture.auto_steps import RunWatcher

            watcher = RunWatcher(state.run_dir, trigger=trigger, **state.options)
            watcher.start()
        except Exception as exc:
            _say(f"not watching this process ({type(exc).__name__}: {exc})")
            return None
        state.watcher = watcher if watcher.enabled else None
        return state.watcher


def _in_dataloader_worker() -> bool:
    data = sys.modules.get("torch.utils.data")
    try:
        return data is not None and data.get_worker_info() is not None
    except Exception:
        return False


# ---- the script's own gpuwatch.watch() ----------------------------------------------------------------
def _join_user_watch(user: Any) -> bool:
    """`Watcher.start` asks this first: the script's own watch joins this process's run watch (True)."""
    if getattr(user, "is_run_watch", False):
        return False
    host = start_watch("gpuwatch.watch()")
    if host is None:
        return False
    host.adopt(user)
    return True
