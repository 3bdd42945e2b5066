"""The watch `gpuwatch run` starts in each training process, and its steps when the script marks none.

`RunWatcher` is a `Watcher` whose step boundaries come from the first of:

1. `gw.step()` of the script's own `gpuwatch.watch()`: that watch joins this one (`adopt`), and its steps
   are the script's, exactly as without `gpuwatch run`.
2. Optimizer steps: torch's global optimizer step post-hook. The first optimizer that steps is the clock
   (a GAN's second optimizer does not cut the step again); gradient-accumulation micro-batches fall inside
   one step because only the real update calls `step()`.
3. The periodic structure of the training thread: as each outermost hooked region opens (batch fetch,
   forward, backward, a collective, a checkpoint) the thread's stack is kept as one *event*; the detector
   attach uses on py-spy stacks (`collectors.pyspy.step_detect`) finds the loop frame and cuts a step at each
   wrap back to the top of the loop body. Events are exact (no sampling), so one per region is enough.

Step 0 starts where the loop starts, not when the process started: where the DataLoader iterator created
last before the first boundary is created, when the same line creates it and fetches from it (`for batch in
loader:`, as a script's own timing counts it), else at its first batch (`batches = iter(loader)` before the
loop, `next(batches)` in it); without a DataLoader, when the watch started (the first backward pass). Model
building, process-group set-up and data generation before it are not a step; nor is the time after the
last boundary (the rest of the last iteration, then teardown).
Which source gave the steps is in the writer's meta (`steps_source`) and in a note `gpuwatch summary` shows.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any

from gpuwatch.capture.watch import Watcher
from gpuwatch.records import Category, Span, SpanKind

GW_STEP = "gw.step"
OPTIMIZER = "optimizer"
LOOP = "training loop"
LOOP_DETECT_EVERY_S = 2.0
"""How often the training-loop detector looks at new events (steps show up in a live run this late)."""
EVENT_RATE_HZ = 1e6
"""Events are exact instants, not samples: a rate that makes the detector's resolution term 1."""
MAX_EVENTS = 20_000
"""Events kept for loop detection; once the loop is known only those after the last boundary are kept."""
KEEP_BEFORE = 512
"""Events kept before the last boundary once the loop is known: the detector sees whole steps before it."""
MAX_FRAMES = 64
"""Frames kept per event, from the root (the loop frame is near it)."""
_COMPUTE_KEYS = frozenset({"forward", "backward", "optimizer"})
_DATA_KEYS = frozenset({"DataLoader.__next__", "DataLoader.__iter__"})
_NOT_EVENTS = frozenset({"step", "close", "start"})

Frame = tuple[str, str, int]


class RunWatcher(Watcher):
    """The watch of one process of a `gpuwatch run` job (see the module docstring).

    Args:
        run_dir: the job's run directory.
        trigger: the call that started it ("DataLoader iteration", "backward", "gpuwatch.watch()").
        **options: `gpuwatch.watch` keyword arguments.
    """

    is_run_watch = True
    """`gpuwatch.watch()` of the script joins a watch with this set instead of starting a second one."""

    def __init__(self, run_dir: str, *, trigger: str, **options: Any) -> None:
        super().__init__(run_dir, **options)
        self.trigger = trigger
        self.steps_source: str | None = None
        """GW_STEP, OPTIMIZER or LOOP once a source has cut a step; None before."""
        self._lock = threading.Lock()
        self._loop = _LoopSteps()
        self._loop_start_ns: int | None = None
        self._iter_at: tuple[Frame | None, int] | None = None
        self._loop_steps = 0
        self._last_boundary_ns: int | None = None
        self._backwards = 0
        self._optimizer: weakref.ref[Any] | None = None
        self._optimizer_name = ""
        self._opt_handle: Any = None
        self._user_closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> RunWatcher:
        super().start()
        ctx = self.ctx
        if not self.enabled or ctx is None:
            return self
        try:
            ctx.on_top_begin = self._on_top_begin
            if "torch" in sys.modules:  # after the torch hooks' own hook: the optimizer span closes first
                from torch.optim.optimizer import register_optimizer_step_post_hook

                self._opt_handle = register_optimizer_step_post_hook(self._on_optimizer)
            self._thread = threading.Thread(target=self._detect_loop, name="gpuwatch-steps", daemon=True)
            self._thread.start()
            self.writer.set_meta(run={"trigger": self.trigger})
            mp = sys.modules.get("multiprocessing")
            if mp is not None and mp.parent_process() is not None:
                # a forked multiprocessing child ends with os._exit (no atexit): close with its finalizers
                from multiprocessing.util import Finalize

                Finalize(None, self.close, exitpriority=100)
        except Exception as exc:
            ctx.hook_error("run_steps", exc)
        return self

    def close(self, status: str = "ended") -> None:
        if self._closing or not self.enabled or os.getpid() != self._pid:
            return super().close(status)
        self._stop.set()
        ctx = self.ctx
        if ctx is not None:
            ctx.on_top_begin = None
        if self._opt_handle is not None:
            self._opt_handle.remove()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        try:
            if self.steps_source in (None, LOOP):
                self._emit_loop_steps(final=True)
            self._note_steps()
        except Exception as exc:
            if ctx is not None:
                ctx.hook_error("run_steps", exc)
        super().close(status)

    def _steps_from_calls(self) -> bool:
        return self.steps_source in (GW_STEP, OPTIMIZER)  # torch calls the optimizer hook in every step

    # ---- 1. the script's own gpuwatch.watch() ----------------------------------------------------------
    def adopt(self, user: Watcher) -> None:
        """Make the script's own watch `user` a handle on this one: its `step()` marks the steps from now on,
        its `close()` ends them (this watch goes on until the process exits)."""
        ctx = self.ctx
        assert ctx is not None
        with self._lock:
            self.steps_source = GW_STEP
            self._loop.clear()
            if threading.get_ident() != ctx.train_ident:
                ctx.rehome()  # the script's loop runs on the thread that opened its watch
            self._step_start_ns = ctx.now_ns()  # the script's first step starts where its watch starts
            self._step_index = max(self._step_index, self._loop_steps)
        user.step = self._user_step  # type: ignore[method-assign]
        user.close = self._user_close  # type: ignore[method-assign]
        user.enabled, user.run_dir, user.rank, user.world_size = (
            True,
            self.run_dir,
            self.rank,
            self.world_size,
        )
        user.writer = self.writer  # a `with` block that raises notes it in this run
        self.writer.note(
            "run_script_watch",
            "the script's own gpuwatch.watch() joined the watch of `gpuwatch run` (its gw.step() marks the "
            "steps; its run directory and options are not used)",
        )

    def _user_step(self, stage: str | None = None, tags: Any = None) -> None:
        if not self._user_closed:
            Watcher.step(self, stage, tags)

    def _user_close(self, status: str = "ended") -> None:
        self._user_closed = True  # no more steps; the spans go on until the process exits

    # ---- 2. optimizer steps ----------------------------------------------------------------------------
    def _on_optimizer(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        ctx = self.ctx
        if ctx is None or not self.enabled:
            return
        try:
            with self._lock:
                if self.steps_source == GW_STEP:
                    return
                if self._optimizer is None:
                    self._optimizer = weakref.ref(optimizer)
                    self._optimizer_name = type(optimizer).__name__
                elif self._optimizer() is not optimizer:
                    return  # another optimizer of the same step
                if threading.get_ident() != ctx.train_ident and self._step_index > 0:
                    return
                if self.steps_source != OPTIMIZER:
                    self.steps_source = OPTIMIZER
                    self._loop.clear()
                    self._step_index = max(self._step_index, self._loop_steps)
                    first = self._last_boundary_ns or self._loop_start_ns
                    if first is not None:
                        self._step_start_ns = max(self._step_start_ns, first)
        except Exception as exc:
            ctx.hook_error("run_steps", exc)
            return
        Watcher.step(self)

    # ---- 3. the training loop's periodic structure ------------------------------------------------------
    def _on_top_begin(self, key: str, t_ns: int) -> None:
        """The training thread opens an outermost region (called inside `HookContext.begin`)."""
        try:
            if self._step_index == 0 and self._loop_steps == 0 and key in _DATA_KEYS:
                self._find_loop_start(key, t_ns)
            source = self.steps_source
            if source in (GW_STEP, OPTIMIZER) or key in _NOT_EVENTS:
                return
            category = (
                Category.COMPUTE.value
                if key in _COMPUTE_KEYS
                else Category.DATA_LOADING.value
                if key in _DATA_KEYS
                else None
            )
            self._loop.add(t_ns, _stack_here(), category)
            if key == "backward" and self._optimizer is None:
                # no step boundary reaches the hooks' own bookkeeping (forward discovery, profiler window,
                # device timer): give it one per backward pass, outside any module hook
                self._backwards += 1
                if self._backwards >= 2:
                    self._on_boundary(self._backwards - 2)
        except Exception as exc:
            if self.ctx is not None:
                self.ctx.hook_error("run_steps", exc)

    def _find_loop_start(self, key: str, t_ns: int) -> None:
        """Step 0 starts at the first batch of the iterator created last, or at its creation when the same
        line does both (`for batch in loader:`: iterator creation belongs to the loop, as the script's own
        timing would count it)."""
        if key == "DataLoader.__iter__":
            self._loop_start_ns = None
            self._iter_at = (_caller_site(), t_ns)
        elif self._loop_start_ns is None:
            site = self._iter_at[0] if self._iter_at is not None else None
            same = site is not None and site == _caller_site()
            self._loop_start_ns = self._iter_at[1] if same and self._iter_at is not None else t_ns

    def _detect_loop(self) -> None:
        while not self._stop.wait(LOOP_DETECT_EVERY_S):
            if self.steps_source not in (None, LOOP):
                return
            try:
                self._emit_loop_steps(final=False)
            except Exception as exc:
                if self.ctx is not None:
                    self.ctx.hook_error("run_steps", exc)
                return

    def _emit_loop_steps(self, final: bool) -> None:
        """Emit the steps found since the last emitted boundary (the detector thread, then `close` after it).

        Detection runs without `_lock`, so an optimizer step or a joining watch never waits for it."""
        ctx = self.ctx
        if ctx is None:
            return
        found = self._loop.boundaries(ctx.now_ns(), self._loop_start_ns, final)
        with self._lock:
            if self.steps_source in (None, LOOP):
                self._emit_steps_at(ctx, found)

    def _emit_steps_at(self, ctx: Any, boundaries: list[int]) -> None:
        if self._last_boundary_ns is not None:
            boundaries = [self._last_boundary_ns] + [b for b in boundaries if b > self._last_boundary_ns]
        for start, end in zip(boundaries[:-1], boundaries[1:]):
            self.writer.emit_span(
                Span(
                    rank=self.rank,
                    kind=SpanKind.STEP.value,
                    name=f"step {self._loop_steps}",
                    start_ns=start,
                    end_ns=end,
                    pid=ctx.pid,
                    tid=ctx.train_tid,
                    step=self._loop_steps,
                    attrs={"source": LOOP, "confidence": self._loop.confidence},
                )
            )
            self._loop_steps += 1
            self.steps_source = LOOP
        if boundaries:
            self._last_boundary_ns = boundaries[-1]
            self._loop.forget_before(boundaries[-1])

    # ---- what the summary says --------------------------------------------------------------------------
    def _final_meta(self) -> dict[str, Any]:
        meta = super()._final_meta()
        meta["steps_source"] = self.steps_source
        if self.steps_source == LOOP:
            meta["steps"] = self._loop_steps
        meta["run"] = {"trigger": self.trigger, "loop_detection": self._loop.reason or None}
        return meta

    def _note_steps(self) -> None:
        source = self.steps_source
        if source == GW_STEP:
            text = "steps from the script's own gw.step() calls"
        elif source == OPTIMIZER:
            text = f"steps from optimizer steps ({self._optimizer_name}.step(), torch's optimizer hook)"
        elif source == LOOP:
            text = (
                f"steps from the training loop's structure, confidence {self._loop.confidence:.2f} "
                f"({self._loop.reason})"
            )
        else:
            text = (
                "no steps found (no gw.step(), no optimizer step, no repeating training loop: "
                f"{self._loop.reason or 'no hooked region on the training thread'}); the budget covers the "
                "whole watch, start-up included"
            )
        self.writer.note("run_steps", f"{text}; watched from the first {self.trigger}")


class _LoopSteps:
    """The training thread's events and the step detector over them (callers hold the watcher's lock,
    except `add`, which the training thread calls)."""

    def __init__(self) -> None:
        self._events: list[tuple[int, tuple[Frame, ...], str | None]] = []
        self._stacks: dict[tuple[Frame, ...], tuple[Frame, ...]] = {}
        self._marker: Any = None
        self.confidence = 0.0
        self.reason = ""
        self._append_lock = threading.Lock()

    def add(self, t_ns: int, stack: tuple[Frame, ...], category: str | None) -> None:
        stack = self._stacks.setdefault(stack, stack)
        with self._append_lock:
            if len(self._events) < MAX_EVENTS:
                self._events.append((t_ns, stack, category))

    def clear(self) -> None:
        with self._append_lock:
            self._events.clear()
        self._stacks.clear()

    def forget_before(self, t_ns: int) -> None:
        """Drop events before `t_ns` once the loop is known (later cuts reuse its marker)."""
        if self._marker is None:
            return
        with self._append_lock:
            keep = next((i for i, e in enumerate(self._events) if e[0] >= t_ns), len(self._events))
            del self._events[: max(0, keep - KEEP_BEFORE)]

    def boundaries(self, now_ns: int, loop_start_ns: int | None, final: bool) -> list[int]:
        """Step boundaries (ns) in the events so far; [] while the loop is not known with confidence."""
        import numpy as np

        from collectors.pyspy.step_detect import DEFAULT_MIN_CONFIDENCE, detect_steps

        with self._append_lock:
            events = list(self._events)
        if len(events) < 2:
            return []
        starts = np.fromiter((e[0] for e in events), np.int64, len(events))
        ends = np.append(starts[1:], np.int64(max(now_ns, int(starts[-1]) + 1)))
        det = detect_steps(
            starts,
            ends,
            [e[1] for e in events],
            [e[2] for e in events],
            EVENT_RATE_HZ,
            marker=self._marker,
            min_confidence=DEFAULT_MIN_CONFIDENCE,
        )
        if self._marker is None:  # what the note says: the detection that found the loop, or the latest
            self.reason, self.confidence = det.reason, det.confidence
            if det.marker is None or det.confidence < DEFAULT_MIN_CONFIDENCE or not det.steps:
                return []
            self._marker = det.marker
            self.reason = f"{det.describe_marker()}, from line {det.marker.top_line}"
        elif det.marker != self._marker:
            return []
        found = [int(b) for b in det.boundaries_ns.tolist()]
        # the loop's first iteration has no wrap before it: it starts with its first batch, when that
        # batch was fetched at the top line of the loop
        if found and loop_start_ns is not None and loop_start_ns < found[0]:
            first = next((e for e in events if e[0] == loop_start_ns), None)
            if first is not None and self._at_top(first[1]):
                found.insert(0, loop_start_ns)
        return found

    def _at_top(self, stack: tuple[Frame, ...]) -> bool:
        m = self._marker
        depth = len(m.prefix)
        return (
            len(stack) > depth
            and stack[:depth] == m.prefix
            and stack[depth] == (m.loop_file, m.loop_function, m.top_line)
        )


_NOT_USER = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # gpuwatch/
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "collectors")
    + os.sep,
)


def _caller_site() -> Frame | None:
    """The innermost frame of the training thread outside gpuwatch and torch: where the script made the call."""
    torch_dir = (
        os.path.dirname(getattr(sys.modules.get("torch"), "__file__", None) or "/nonexistent/x") + os.sep
    )
    f: Any = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        if not name.startswith(_NOT_USER) and not name.startswith(torch_dir):
            return (name, f.f_code.co_name, f.f_lineno)
        f = f.f_back
    return None


def _stack_here() -> tuple[Frame, ...]:
    """The calling thread's stack, root first, at most MAX_FRAMES from the root."""
    frames: list[Frame] = []
    f: Any = sys._getframe(1)
    while f is not None:
        code = f.f_code
        frames.append((code.co_filename, code.co_name, f.f_lineno))
        f = f.f_back
    frames.reverse()
    return tuple(frames[:MAX_FRAMES])
