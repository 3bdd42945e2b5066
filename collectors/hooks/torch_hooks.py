"""Hooks on the training phases of any PyTorch loop, found without the user passing loader, model or optimizer.

- DataLoader: every iterator's `__next__` (single- and multi-process: both inherit it from
  `_BaseDataLoaderIter`) and iterator creation (worker start-up) -> `data_loading`.
- Forward: global module hooks run for one step to find the *top-level* modules (called on the training
  thread outside any other module's forward); then only those get instance hooks and the global hooks are
  removed, so submodules keep PyTorch's hook-free fast path. Discovery runs again at steps 10, 100, 1000...
- Backward: `torch.autograd._engine_run_backward`, the one call under `Tensor.backward`,
  `torch.autograd.backward` and `torch.autograd.grad`.
- Optimizer: torch's global optimizer step pre/post hooks.
- In a distributed run, the time between the end of the autograd graph and the return of backward (the
  DDP reducer's final callback waiting for its bucket all-reduces) -> a `sync` collective span matched
  across ranks by its per-process sequence number.
- On a GPU: CUDA events around each phase (device spans), host<->device copies (`Tensor.to/cuda/cpu`),
  blocking `.item()` and `torch.cuda.synchronize()` -> `memcpy` / `sync`.

Phases are `compute` host spans; on a GPU rank the engine takes compute from the device spans instead.
Every hook catches its own errors (noted once) and does nothing when no watch is active.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from collectors.base import Collector, RecordSink
from collectors.hooks import hook_context as hc
from collectors.hooks.device_timer import DeviceTimer
from collectors.hooks.hook_context import HookContext, Patcher
from collectors.hooks.hook_region import call_in_region, guarded_hook
from gpuwatch.records import Category, SpanKind

PHASE = SpanKind.PHASE.value
COMPUTE = Category.COMPUTE.value
DATA = Category.DATA_LOADING.value
DISCOVERY_STEPS = frozenset({0, 10, 100, 1000, 10_000, 100_000})
"""Steps during which global module hooks look for new top-level modules (step 0's discovery goes on up
to step 2 when it found nothing: a first step without a forward)."""
REDUCER_WAIT_MIN_NS = 50_000
"""Shorter tails of backward are bookkeeping, not a wait for communication."""


class TorchHooks(Collector):
    """DataLoader, forward, backward and optimizer timing (plus copies and syncs on a GPU).

    Args:
        ctx: the process's hook context.
        device_timing: record CUDA events around phases when CUDA is available.
    """

    name = "torch_hooks"

    def __init__(self, ctx: HookContext, *, device_timing: bool = True) -> None:
        self.ctx = ctx
        self.device_timing = device_timing
        self.timer: DeviceTimer | None = None
        self._patcher = Patcher()
        self._torch: Any = None
        self._global_handles: list[Any] = []
        self._hooked: weakref.WeakSet[Any] = weakref.WeakSet()
        self._instance_handles: list[Any] = []
        self._module_handles: dict[int, list[Any]] = {}
        """id(module) -> its two forward hooks (removed while the watch does not observe: `pause`)."""
        self._paused = False
        self._found: list[Any] = []  # top-level modules seen by the current discovery
        self._fwd_stack: list[tuple[Any, int, Any]] = []  # (module, start_ns or -1 when nested, device token)
        self._opt_stack: list[tuple[Any, int, Any]] = []
        self._names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self.ddp_seen = False
        self.dynamo_mode = False
        """True once torch.compile compiled code while the global module hooks were on (they then stay)."""
        self._reducer_seq = 0
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """True between a `start` that found torch imported and `stop`: a watch started before the job
        imported torch asks this at step boundaries, and starts the hooks once torch is there."""
        return self._started

    @property
    def discovering(self) -> bool:
        """True while global module hooks look for top-level modules: the watch observes those steps (a
        step it did not observe would find none). Under torch.compile they stay for good and are not that."""
        return bool(self._global_handles) and not self.dynamo_mode

    def start(self, sink: RecordSink) -> None:
        torch = sys.modules.get("torch")
        if torch is None or self._started:
            return
        self._torch = torch
        self._started = True
        for install in (self._install_dataloader, self._install_backward, self._install_optimizer):
            try:
                install(torch)
            except Exception as exc:
                self.ctx.hook_error(f"install:{install.__name__}", exc)
        self._start_discovery()
        try:
            if self.device_timing and torch.cuda.is_available():
                self.timer = DeviceTimer(self.ctx, torch)
                self._install_gpu(torch)
        except Exception as exc:
            self.ctx.hook_error("install:gpu", exc)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._stop_discovery()
        for handle in [*self._instance_handles, *(h for pair in self._module_handles.values() for h in pair)]:
            try:
                handle.remove()
            except Exception:
                pass
        self._instance_handles.clear()
        self._module_handles.clear()
        self._paused = False
        self._patcher.restore()
        if self.timer is not None:
            try:
                self.timer.flush(wait=True)
            except Exception as exc:
                self.ctx.hook_error("device_timer", exc)

    def on_step(self, finished_step: int) -> None:
        """Called by the watcher at each step boundary (training thread): discovery, device spans, cleanup."""
        if not self._started:
            return
        try:
            # a forward/optimizer that raised left its region open: close it so gaps stay right
            while self._opt_stack:
                self._opt_stack.pop()
                self.ctx.abandon("optimizer")
            if self._global_handles and not self.dynamo_mode:
                if _dynamo_compiled():
                    # torch.compile traced code under our global hooks: adding or removing module hooks now
                    # would change its guards and recompile it, so the global hooks stay (they step aside
                    # inside compiled code, and time the eager top-level modules from here on)
                    self.dynamo_mode = True
                    self._found.clear()
                    self.ctx.note_once(
                        "torch_compile",
                        "torch.compile in use: module timing stays on global hooks (no recompiles)",
                    )
                else:
                    self._adopt_found()
                    if self._hooked or finished_step >= 2:
                        self._stop_discovery()
            if finished_step + 1 in DISCOVERY_STEPS and not self._global_handles and not _dynamo_compiled():
                self._start_discovery()
            if self.timer is not None:
                self.timer.poll()
        except Exception as exc:
            self.ctx.hook_error("torch_hooks.on_step", exc)

    # ---- DataLoader --------------------------------------------------------------------------------
    def _install_dataloader(self, torch: Any) -> None:
        from torch.utils.data import dataloader as dl

        next_region = _loader_region("DataLoader.__next__", _end_next, flag=hc.IN_DATA_LOADING, split=True)
        iterator_region = _loader_region("DataLoader.__iter__", _end_iterator_start)
        self._patcher.patch(dl._BaseDataLoaderIter, "__next__", next_region)
        self._patcher.patch(dl.DataLoader, "_get_iterator", iterator_region)

    # ---- forward -----------------------------------------------------------------------------------
    def _start_discovery(self) -> None:
        try:
            module_mod = self._torch.nn.modules.module
            self._global_handles = [
                module_mod.register_module_forward_pre_hook(self._global_pre),
                module_mod.register_module_forward_hook(self._global_post, always_call=True),
            ]
        except Exception as exc:
            self.ctx.hook_error("forward_discovery", exc)

    def _stop_discovery(self) -> None:
        for handle in self._global_handles:
            try:
                handle.remove()
            except Exception:
                pass
        self._global_handles = []

    def _adopt_found(self) -> None:
        for module in self._found:
            if module in self._hooked:
                continue
            self._hooked.add(module)
            if not self._paused:
                self._hook_module(module)
        self._found.clear()

    def _hook_module(self, module: Any) -> None:
        self._module_handles[id(module)] = [
            module.register_forward_pre_hook(self._instance_pre),
            module.register_forward_hook(self._instance_post, always_call=True),
        ]

    def pause(self) -> None:
        """The watch stops observing (training thread, at a step boundary): take the forward hooks off the
        top-level modules, whose calls then take PyTorch's hook-free path again (a module with hooks costs
        ~5 us more per call, 0.15% of a 3 ms step). The other hooks stay and return at once."""
        if self._paused or not self._started:
            return
        self._paused = True
        handles, self._module_handles = self._module_handles, {}
        for pair in handles.values():
            for handle in pair:
                try:
                    handle.remove()
                except Exception:
                    pass

    def resume(self) -> None:
        """The watch observes again: the top-level modules found so far get their forward hooks back."""
        if not self._paused:
            return
        self._paused = False
        for module in list(self._hooked):
            try:
                self._hook_module(module)
            except Exception as exc:
                self.ctx.hook_error("forward_resume", exc)

    def _name(self, module: Any) -> str:
        name = self._names.get(module)
        if name is None:
            cls = type(module).__name__
            # DDP / FSDP / torch.compile wrappers: say what they wrap
            inner = getattr(module, "_orig_mod", None) or getattr(module, "module", None)
            if inner is not None and hasattr(inner, "forward"):
                cls = f"{cls}({type(inner).__name__})"
            name = self._names[module] = f"forward {cls}"
            if type(module).__name__ == "DistributedDataParallel":
                self.ddp_seen = True
        return name

    def _enter(self, ctx: HookContext, module: Any) -> None:
        if threading.get_ident() != ctx.train_ident:
            return
        if self._fwd_stack:
            self._fwd_stack.append((module, -1, None))
            return
        token = self.timer.start() if self.timer is not None else None
        self._fwd_stack.append((module, ctx.begin("forward"), token))

    def _exit(self, ctx: HookContext, module: Any) -> None:
        if threading.get_ident() != ctx.train_ident or not self._fwd_stack:
            return
        entry = self._fwd_stack.pop()
        while entry[0] is not module and self._fwd_stack:  # unwinding after an exception
            entry = self._fwd_stack.pop()
        if entry[1] < 0:
            return
        name = self._name(module)
        ctx.end(entry[1], PHASE, name, COMPUTE, key="forward")
        if self.timer is not None:
            self.timer.stop(entry[2], SpanKind.KERNEL.value, name, COMPUTE, step=ctx.step)

    # The four hooks below are guarded: they get the context from `hc.current()`, which is None under
    # torch.compile tracing, so the traced hook is an immediate return (nothing to break the graph on).
    @guarded_hook("forward")
    def _global_pre(self, ctx: HookContext, module: Any, args: Any) -> None:
        if module in self._hooked:
            return  # its instance hook handles it
        if not self._fwd_stack and not self.dynamo_mode and threading.get_ident() == ctx.train_ident:
            self._found.append(module)
            self._name(module)
        self._enter(ctx, module)

    @guarded_hook("forward")
    def _global_post(self, ctx: HookContext, module: Any, args: Any, output: Any) -> None:
        if module not in self._hooked:
            self._exit(ctx, module)

    @guarded_hook("forward")
    def _instance_pre(self, ctx: HookContext, module: Any, args: Any) -> None:
        self._enter(ctx, module)

    @guarded_hook("forward")
    def _instance_post(self, ctx: HookContext, module: Any, args: Any, output: Any) -> None:
        self._exit(ctx, module)

    # ---- backward ----------------------------------------------------------------------------------
    def _install_backward(self, torch: Any) -> None:
        autograd = torch.autograd
        if not self._patcher.patch(autograd, "_engine_run_backward", self._wrap_backward):
            # older torch: no single entry point; time the two public ones
            self._patcher.patch(autograd, "backward", self._wrap_backward)
            self._patcher.patch(autograd, "grad", self._wrap_backward)

    def _wrap_backward(self, original: Any) -> Any:
        hooks = self

        def _engine_run_backward(*args: Any, **kwargs: Any) -> Any:
            ctx = hc.current()
            if ctx is None:
                return original(*args, **kwargs)

            def before() -> tuple[Any, Any]:
                probe = hooks._arm_reducer_probe(args) if ctx.distributed else None
                return probe, hooks.timer.start() if hooks.timer is not None else None

            def finish(t0: int, state: tuple[Any, Any], _result: Any) -> None:
                probe, token = state
                t1 = ctx.end(t0, PHASE, "backward", COMPUTE, key="backward")
                if hooks.timer is not None:
                    hooks.timer.stop(token, SpanKind.KERNEL.value, "backward", COMPUTE, step=ctx.step)
                if probe is not None:
                    hooks._finish_reducer_probe(ctx, probe, t1)

            return call_in_region(ctx, "backward", "backward", original, args, kwargs, finish, before=before)

        return _engine_run_backward

    def _arm_reducer_probe(self, args: Any) -> tuple[Any, list[int]] | None:
        """Queue an autograd final callback at the root of this backward: it runs before DDP's finalizer."""
        roots = args[0] if args else None
        if roots is None:
            return None
        if not isinstance(roots, (tuple, list)):
            roots = (roots,)
        root = next((t for t in roots if getattr(t, "grad_fn", None) is not None), None)
        if root is None:
            return None
        ctx = self.ctx
        engine = self._torch.autograd.Variable._execution_engine
        fired: list[int] = []

        def callback() -> None:
            fired.append(ctx.now_ns())

        def prehook(grad_outputs: Any) -> None:
            if not fired:
                try:
                    engine.queue_callback(callback)
                except Exception as exc:
                    ctx.hook_error("reducer_probe", exc)

        return root.grad_fn.register_prehook(prehook), fired

    def _finish_reducer_probe(self, ctx: HookContext, probe: tuple[Any, list[int]], t_end: int) -> None:
        handle, fired = probe
        handle.remove()
        if not fired or t_end - fired[0] < REDUCER_WAIT_MIN_NS or threading.get_ident() != ctx.train_ident:
            return
        self._reducer_seq += 1
        name = "DDP reducer wait" if self.ddp_seen else "autograd final callbacks (distributed)"
        ctx.emit_span(
            fired[0],
            t_end,
            SpanKind.COLLECTIVE.value,
            name,
            Category.SYNC.value,
            tid=ctx.train_tid,
            step=ctx.step,
            seq=self._reducer_seq,
            attrs={"process_group": "ddp_reducer", "collective": "ddp_reducer_wait"},
        )

    # ---- optimizer -----------------------------------------------------------------------------------
    def _install_optimizer(self, torch: Any) -> None:
        from torch.optim import optimizer as optim_mod

        self._instance_handles += [
            optim_mod.register_optimizer_step_pre_hook(self._opt_pre),
            optim_mod.register_optimizer_step_post_hook(self._opt_post),
        ]

    @guarded_hook("optimizer")  # returns None: a value would replace the step's arguments
    def _opt_pre(self, ctx: HookContext, optimizer: Any, args: Any, kwargs: Any) -> None:
        if threading.get_ident() != ctx.train_ident:
            return
        token = self.timer.start() if self.timer is not None else None
        self._opt_stack.append((optimizer, ctx.begin("optimizer"), token))

    @guarded_hook("optimizer")
    def _opt_post(self, ctx: HookContext, optimizer: Any, args: Any, kwargs: Any) -> None:
        if threading.get_ident() != ctx.train_ident or not self._opt_stack:
            return
        opt, t0, token = self._opt_stack.pop()
        name = f"optimizer {type(opt).__name__}.step"
        ctx.end(t0, PHASE, name, COMPUTE, key="optimizer")
        if self.timer is not None:
            self.timer.stop(token, SpanKind.KERNEL.value, name, COMPUTE, step=ctx.step)

    # ---- GPU only: copies and host-device syncs -------------------------------------------------------
    def _install_gpu(self, torch: Any) -> None:
        from collectors.hooks.device_copy_hooks import install_device_copy_hooks

        install_device_copy_hooks(self._patcher, torch)


def _dynamo_compiled() -> bool:
    """Has torch.compile (dynamo) compiled anything in this process? (False when it was never imported.)"""
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return False
    try:
        return bool(utils.counters["stats"].get("unique_graphs", 0))
    except Exception:
        return True  # cannot tell: assume compiled code exists and never touch module hooks again


# ---- DataLoader wrappers (module level: they are installed on the class) ---------------------------
def _loader_name(it: Any) -> str:
    name = it.__dict__.get("_gpuwatch_name")
    if name is None:
        workers = getattr(it, "_num_workers", "?")
        name = f"DataLoader.__next__ (num_workers={workers})"
        try:
            it._gpuwatch_name = name
        except Exception:
            pass
    return name


def _loader_attrs(it: Any) -> dict[str, Any]:
    return {
        "num_workers": getattr(it, "_num_workers", None),
        "pin_memory": getattr(it, "_pin_memory", None),
        "prefetch_factor": getattr(it, "_prefetch_factor", None),
        "persistent_workers": getattr(it, "_persistent_workers", None),
        "batch_size": getattr(getattr(it, "_index_sampler", None), "batch_size", None),
    }


def _loader_region(
    key: str, end: Callable[[HookContext, int, Any], None], flag: str = "", *, split: bool = False
) -> Any:
    """A `Patcher` factory that times a DataLoader method (`self` only) as the `data_loading` region `key`;
    `end(ctx, start_ns, self)` closes it with the span. With `split`, a loader without workers running on
    the training thread opens its inside to the stack sampler (`HookContext.enter_loader`): what the
    Dataset does there (read, or decode/transform/collate: cpu_preprocessing) is told apart."""

    def wrap(original: Any) -> Any:
        def method(self: Any) -> Any:
            ctx = hc.current()
            if ctx is None:
                return original(self)

            def finish(t0: int, _state: Any, _result: Any) -> None:
                end(ctx, t0, self)

            call = original
            if (
                split
                and ctx.on_loader_enter is not None
                and getattr(self, "_num_workers", None) == 0
                and threading.get_ident() == ctx.train_ident
            ):
                call = _split_loader(ctx, key, original)
            return call_in_region(ctx, key, "dataloader", call, (self,), {}, finish, flag=flag)

        method.__name__ = original.__name__
        return method

    return wrap


def _split_loader(ctx: HookContext, key: str, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`original` run with its inside open to the stack sampler (called inside the loader's region)."""

    def inside(it: Any) -> Any:
        try:
            outer = ctx.enter_loader(key)
        except Exception as exc:
            ctx.hook_error("dataloader", exc)
            return original(it)
        try:
            return original(it)
        finally:
            try:
                ctx.leave_loader(outer, key)
            except Exception as exc:
                ctx.hook_error("dataloader", exc)

    return inside


def _end_next(ctx: HookContext, t0: int, it: Any) -> None:
    first = not it.__dict__.get("_gpuwatch_seen", False)
    if first:
        it._gpuwatch_seen = True
    attrs = _loader_attrs(it) if first else None  # the loader's settings, once per iterator
    ctx.end(t0, PHASE, _loader_name(it), DATA, key="DataLoader.__next__", attrs=attrs)


def _end_iterator_start(ctx: HookContext, t0: int, loader: Any) -> None:
    name = f"DataLoader iterator start (num_workers={getattr(loader, 'num_workers', '?')})"
    ctx.end(t0, PHASE, name, DATA, key="DataLoader.__iter__")
