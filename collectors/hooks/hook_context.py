"""What every in-process hook shares: the sink, one clock, the training thread and its open hook regions.

`gpuwatch.watch` creates one `HookContext` per process and publishes it as `ACTIVE`; hooks read that global
and do nothing when it is None (no watch running, or a forked DataLoader worker, see `_disable_in_child`).

Hooks call `begin(key)` / `end(...)` around the region they time. On the training thread the context counts
open regions; the time between regions ("gaps": Python the hooks do not see) is handed to the stack sampler
as `(serial, start_ns, end_ns, key_before, key_after, inside_loader)`, so sampled stacks explain exactly the uncovered
time and never overlap a hooked region. A DataLoader without workers runs the Dataset inside its region:
`enter_loader` makes that region's inside a gap of its own (the base depth moves into it), so the sampler
tells reading from decoding and transforming there too. Times are integer ns since the writer's anchor,
read from `time.perf_counter_ns` plus a fixed offset (monotonic and cheap; equal to `time.time_ns() - anchor`
at start).
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from collectors.base import RecordSink
from collectors.hooks.thread_work_clock import ThreadWorkClock
from gpuwatch.records import Span

LOADER_CLOCK_MIN_NS = 1_000_000
"""A split DataLoader region reads the training thread's work clock as it opens and closes (two reads, ~4 us)
only when the previous one took this long: a loader handing over in-memory tensors in microseconds has no
waits to tell its work from, and 4 us is 0.1% of a 3 ms step."""
INSIDE = " (inside)"
"""Added to a DataLoader region's key for the gap inside it: the gap after it, opened as it closes, has the
region's own key, and a probe asked for one must not be spent on the other (it was, in a race with the
sampler's drain: the probe traced the few microseconds after the loader, and the next was 20 steps later)."""
ACTIVE: HookContext | None = None
"""The context of the running watch in this process while it observes the current step, or None: every hook
checks this first. A watch that thins its steps (`gpuwatch.capture.step_pacing`) sets it to None for the
steps it does not observe, so its hooks cost one global read there."""
WATCHING: HookContext | None = None
"""The context of the running watch, observed step or not: what the hooks that stay on in every step read
(checkpoint writes: rare, long, and often periodic, so a sample of steps would miss or double them)."""

MAX_PENDING_GAPS = 8192
"""Closed gaps kept for the stack sampler; older ones fall off (their time stays unattributed)."""
SLOW_HOOK_NS = 50_000_000
"""A hook whose own work (not the call it wraps) holds the training thread longer than this is noted
(`hook_slow:<hook>`): gpuwatch's code should take microseconds there."""
IN_COLLECTIVE = "in_collective"
"""Per-thread flag: a hooked collective is running (its inner calls belong to it)."""
IN_DATA_LOADING = "in_data_loading"
"""Per-thread flag: a DataLoader `__next__` is running (a torch.load in it reads data, not a checkpoint)."""


class HookContext:
    """Shared state of one process's in-process collectors.

    Args:
        sink: where spans go (the run's segment writer).
        rank: this process's global rank.
        anchor_unix_ns: the writer's wall-clock anchor; every time is ns since it.
    """

    def __init__(self, sink: RecordSink, rank: int, anchor_unix_ns: int) -> None:
        self.sink = sink
        self.rank = rank
        self.pid = os.getpid()
        self.anchor_unix_ns = anchor_unix_ns
        self._offset_ns = (time.time_ns() - anchor_unix_ns) - time.perf_counter_ns()
        self.train_ident = threading.get_ident()
        self.train_tid = threading.get_native_id()
        self.train_clock = ThreadWorkClock(self.train_tid, self.train_ident)
        """How long the training thread ran or waited for a CPU (the stack sampler splits loader regions by it)."""
        self.step = 0
        """Index of the step in progress (the next `gw.step()` closes it)."""
        self.distributed = False
        """True once a process group is initialized (checked at step boundaries)."""
        # training-thread region bookkeeping (only the training thread writes these)
        self.depth = 0
        self.base_depth = 0
        """The region depth at which time is a gap: 0, or inside a DataLoader that runs the Dataset on
        this thread (`enter_loader`), that region's depth."""
        self.gap_serial = 0
        self.gap_start_ns = self.now_ns()
        self.gap_key = "start"
        self.closed_gaps: collections.deque[tuple[int, int, int, str, str, bool]] = collections.deque(
            maxlen=MAX_PENDING_GAPS
        )
        self.observing = True
        """False during a step the watch does not observe (`observe`): regions still count their depth, but
        no gap is handed to the stack sampler (it does not sample then either)."""
        self.on_observe: Callable[[], None] | None = None
        """Called on the training thread as observation resumes after steps without it (`observe`): the
        stack sampler sleeps through those steps."""
        self._tls = threading.local()
        self._noted: set[str] = set()
        # gap probes (see collectors.hooks.stack_sampler): gaps opening after one of these keys get traced
        self.probe_keys: set[str] = set()
        self.on_probe_start: Callable[[str], bool] | None = None
        self.on_probe_stop: Callable[[], None] | None = None
        self.probing = False
        self.on_top_begin: Callable[[str, int], None] | None = None
        """Called on the training thread as each outermost region opens, with its key and start (ns): how
        `gpuwatch run` finds steps in a loop that marks none (gpuwatch/capture/auto_steps.py)."""
        self.on_loader_enter: Callable[[], None] | None = None
        """Set by a stack sampler that splits DataLoader regions (`enter_loader` calls it: sample now);
        None: DataLoader regions stay whole."""
        self.last_loader_ns = 0
        """How long the insides of the last split DataLoader regions took (ns): the last one's, or half the
        one's before it where that is longer. One short region (the `next` that ends an epoch with
        StopIteration) does not take the work clock and the sampler's wake from the first region of the next
        epoch; a loader that turned fast loses them within a few regions."""
        self.loader_clock: dict[int, tuple[tuple[int, int], tuple[int, int] | None]] = {}
        """Gap serial of a split DataLoader region -> the training thread's work clock (`train_clock`, ns) as
        it opened and as it closed, and its timeslices begun then (`ThreadWorkClock.read`; None where
        schedstat has none), for the sampler to tell the work there from the waits (it pops each one it
        reads)."""
        self._loader_cpu_start_ns = -1
        self._loader_slices_start = -1

    # ---- clock -----------------------------------------------------------------------------------
    def now_ns(self) -> int:
        """Now, in ns since the writer's anchor."""
        return time.perf_counter_ns() + self._offset_ns

    # ---- regions ----------------------------------------------------------------------------------
    def begin(self, key: str) -> int:
        """Open a hooked region called `key`; returns its start (ns). Pair with `end`/`abandon`."""
        t = time.perf_counter_ns() + self._offset_ns
        if threading.get_ident() == self.train_ident:
            if self.depth == self.base_depth and self.observing:
                if self.probing:
                    self._stop_probe()
                gap = (self.gap_serial, self.gap_start_ns, t, self.gap_key, key, self.base_depth > 0)
                self.closed_gaps.append(gap)
                self.gap_serial += 1
            self.depth += 1
            if self.depth == 1 and self.on_top_begin is not None:
                self.on_top_begin(key, t)
        return t

    def enter_loader(self, key: str) -> int:
        """Inside a just-opened DataLoader region on the training thread: its inside becomes a gap (the
        Dataset's reads and transforms, for the sampler). Returns the base depth to give `leave_loader`."""
        outer = self.base_depth
        wake = self.on_loader_enter
        if wake is not None and self.last_loader_ns >= LOADER_CLOCK_MIN_NS:
            # read before the region opens to the sampler: the read releases the GIL, and a tick that took
            # it then would sample this hook, not the loader
            self._loader_cpu_start_ns, self._loader_slices_start = self.train_clock.read()
        inside = key + INSIDE
        self.gap_start_ns = time.perf_counter_ns() + self._offset_ns
        self.gap_key = inside
        self.base_depth = self.depth
        if wake is not None:
            if self.probe_keys and inside in self.probe_keys and self.on_probe_start is not None:
                self.probe_keys.discard(inside)  # its work was never sampled: trace this region's calls
                self.probing = self.on_probe_start(inside)
            wake()
        return outer

    def leave_loader(self, outer: int, key: str) -> None:
        """Close the gap `enter_loader` opened (before the region's own `end`)."""
        if self.base_depth != self.depth:
            return  # a region inside was left open (an exception through a hook): give its gap up
        if self.probing:
            self._stop_probe()
        t = time.perf_counter_ns() + self._offset_ns
        if self._loader_cpu_start_ns >= 0:
            worked, slices = self.train_clock.read()
            if worked >= 0:
                self.loader_clock[self.gap_serial] = (
                    (self._loader_cpu_start_ns, worked),
                    (self._loader_slices_start, slices)
                    if slices >= 0 and self._loader_slices_start >= 0
                    else None,
                )
            self._loader_cpu_start_ns = -1
        self.closed_gaps.append((self.gap_serial, self.gap_start_ns, t, self.gap_key, key + " end", True))
        self.gap_serial += 1  # before the base depth moves: a sample taken meanwhile is dropped
        self.base_depth = outer
        self.last_loader_ns = max(t - self.gap_start_ns, self.last_loader_ns >> 1)

    def end(
        self,
        start_ns: int,
        kind: str,
        name: str,
        category: str | None,
        key: str = "",
        **fields: Any,
    ) -> int:
        """Close a region opened by `begin` and emit its span; returns its end (ns)."""
        t = time.perf_counter_ns() + self._offset_ns
        if threading.get_ident() == self.train_ident:
            self._leave(t, key or name)
            tid = self.train_tid
        else:
            tid = threading.get_native_id()
        # the span is built here, not through emit_span: once per hooked region on the training thread
        self.sink.emit_span(
            Span(
                rank=self.rank,
                kind=kind,
                name=name,
                start_ns=start_ns,
                end_ns=t,
                category=category,
                pid=self.pid,
                tid=tid,
                step=self.step,
                **fields,
            )
        )
        return t

    def emit_since(self, start_ns: int, kind: str, name: str, category: str | None, **fields: Any) -> int:
        """Emit a span of the calling thread from `start_ns` until now without a hooked region (a short
        call the sampler may overlap, a label-only user span); returns its end (ns)."""
        t = time.perf_counter_ns() + self._offset_ns
        tid = self.train_tid if threading.get_ident() == self.train_ident else threading.get_native_id()
        self.emit_span(start_ns, t, kind, name, category, tid=tid, step=self.step, **fields)
        return t

    def emit_span(
        self, start_ns: int, end_ns: int, kind: str, name: str, category: str | None, **fields: Any
    ) -> None:
        """Emit a span of this process, its rank and pid filled in here (for every hook alike); `fields`
        are the other `Span` fields (`tid`, `step`, `stream`, `attrs`...). Times in ns since the anchor."""
        self.sink.emit_span(
            Span(
                rank=self.rank,
                kind=kind,
                name=name,
                start_ns=start_ns,
                end_ns=end_ns,
                category=category,
                pid=self.pid,
                **fields,
            )
        )

    def abandon(self, key: str = "") -> None:
        """Close a region without a span (its end was lost, e.g. an optimizer step that raised)."""
        if threading.get_ident() == self.train_ident:
            self._leave(time.perf_counter_ns() + self._offset_ns, key)

    def restart_gap(self, key: str) -> int:
        """Forget the time so far on the training thread (gpuwatch's own start-up): a new gap opens now."""
        t = self.now_ns()
        self.closed_gaps.clear()
        self.gap_serial += 1
        self.gap_start_ns = t
        self.gap_key = key
        return t

    def rehome(self) -> None:
        """Make the calling thread the training thread (the loop runs elsewhere than where the watch
        started): its region count and gaps start afresh."""
        self.train_ident = threading.get_ident()
        self.train_tid = threading.get_native_id()
        old, self.train_clock = self.train_clock, ThreadWorkClock(self.train_tid, self.train_ident)
        old.close()
        self.depth = 0
        self.base_depth = 0
        self.closed_gaps.clear()
        self.gap_start_ns = self.now_ns()

    def _leave(self, t: int, key: str) -> None:
        if self.depth > 0:
            self.depth -= 1
        if self.depth < self.base_depth:  # a DataLoader region closed without `leave_loader`
            self.base_depth = self.depth
        if self.depth == self.base_depth:
            self.gap_start_ns = t
            self.gap_key = key
            if (
                self.probe_keys
                and self.observing
                and key in self.probe_keys
                and self.on_probe_start is not None
            ):
                self.probe_keys.discard(key)
                self.probing = self.on_probe_start(key)

    def _stop_probe(self) -> None:
        self.probing = False
        if self.on_probe_stop is not None:
            self.on_probe_stop()

    # ---- per-thread flags (nested collectives, checkpoint internals) ------------------------------
    def flag(self, name: str) -> bool:
        return getattr(self._tls, name, False)

    def set_flag(self, name: str, value: bool) -> None:
        setattr(self._tls, name, value)

    # ---- errors -----------------------------------------------------------------------------------
    def hook_error(self, where: str, exc: BaseException) -> None:
        """Record a failing hook once (later failures are counted by the sink); never raises."""
        try:
            at = ""
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:  # where it broke, for a bug report
                at = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
            self.sink.note(f"hook_error:{where}", f"{where} hook failed and was skipped: {exc!r}{at}")
        except Exception:
            pass

    def slow_hook(self, where: str, own_ns: int) -> None:
        """Record a hook whose own work held the training thread past `SLOW_HOOK_NS` (the first time with
        its duration; later times are counted by the sink); never raises."""
        try:
            self.sink.note(
                f"hook_slow:{where}",
                f"{where} hook held the training thread {own_ns / 1e6:.1f} ms in gpuwatch's own code "
                f"(over {SLOW_HOOK_NS / 1e6:.0f} ms): the job waited for it",
            )
        except Exception:
            pass

    def note_once(self, key: str, message: str) -> None:
        if key in self._noted:
            return
        self._noted.add(key)
        try:
            self.sink.note(key, message)
        except Exception:
            pass


# ---- patching ------------------------------------------------------------------------------------
class Patcher:
    """Replaces attributes and puts the originals back; a later patch by someone else is left in place.

    One function reachable under several names (`torch.save` and `torch.serialization.save`) gets one
    wrapper, so a call through either name is timed once.
    """

    def __init__(self) -> None:
        self._done: list[tuple[Any, str, Any, Any, bool]] = []
        self._wrappers: dict[int, Any] = {}

    def patch(self, owner: Any, attr: str, make: Callable[[Any], Any]) -> bool:
        """Set `owner.attr = make(original)`; returns False when the attribute is missing."""
        original = getattr(owner, attr, None)
        if original is None:
            return False
        if getattr(original, "__gpuwatch_original__", None) is not None:
            return True  # already ours
        wrapper = self._wrappers.get(id(original))
        if wrapper is None:
            wrapper = make(original)
            wrapper.__gpuwatch_original__ = original
            self._wrappers[id(original)] = wrapper
        own = attr in getattr(owner, "__dict__", {})
        setattr(owner, attr, wrapper)
        self._done.append((owner, attr, original, wrapper, own))
        return True

    def restore(self) -> None:
        while self._done:
            owner, attr, original, wrapper, own = self._done.pop()
            try:
                if getattr(owner, attr, None) is not wrapper:
                    continue  # someone patched over us: leave theirs (ours stays inert without ACTIVE)
                if own:
                    setattr(owner, attr, original)
                else:
                    delattr(owner, attr)  # it was inherited: let the base class's show through again
            except Exception:
                pass
        self._wrappers.clear()


def unwrap(fn: Any) -> Any:
    """The function a gpuwatch wrapper replaced (or `fn` itself)."""
    return getattr(fn, "__gpuwatch_original__", fn)


def _disable_in_child() -> None:
    # A forked DataLoader worker inherits the patched functions but not the writer thread: go quiet.
    global ACTIVE, WATCHING
    ACTIVE = None
    WATCHING = None


os.register_at_fork(after_in_child=_disable_in_child)


def activate(ctx: HookContext | None) -> None:
    """Publish the context of a starting watch (observing), or None as it closes."""
    global ACTIVE, WATCHING, _compiling
    ACTIVE = ctx
    WATCHING = ctx
    if ctx is not None:
        ctx.observing = True
    torch = sys.modules.get("torch")
    compiler = getattr(torch, "compiler", None)
    _compiling = getattr(compiler, "is_compiling", _never)


def observe(ctx: HookContext, on: bool) -> None:
    """Observe the coming step or not (called at a step boundary by the watch that published `ctx`)."""
    global ACTIVE
    if WATCHING is not ctx:
        return
    was = ctx.observing
    if on and not was:
        ctx.gap_serial += 1  # a sample the sampler took meanwhile belongs to no gap: it is dropped
    ctx.observing = on
    ACTIVE = ctx if on else None
    wake = ctx.on_observe
    if on and not was and wake is not None:
        wake()


def _never() -> bool:
    return False


_compiling: Callable[[], bool] = _never


_MODULES = sys.modules
_DYNAMO = "torch._dynamo"


def tracing() -> bool:
    """Is torch.compile tracing the caller? (Only asked of torch once its tracer is loaded.)"""
    return _DYNAMO in _MODULES and _compiling()


def current() -> HookContext | None:
    """The active context, or None when not watching or while torch.compile traces the caller: a hook
    traced into a graph would break it (timing calls cannot be compiled), so hooks step aside there.

    Only asked of torch once torch.compile's tracer is loaded: until then nothing can be tracing, and every
    hook call (seven a step in a plain loop) saves torch's two-call check."""
    ctx = ACTIVE
    if ctx is None or (_DYNAMO in _MODULES and _compiling()):
        return None
    return ctx
