"""A light in-process sampler of the training thread: explains the time no hook covers.

At `hz` ticks a second a daemon thread looks at the training thread. When a hooked region is open (forward,
DataLoader wait, collective...) it does nothing: the hook already explains that time. Otherwise it reads the
thread's Python stack (`sys._current_frames`) and classifies it with `collectors.stack_rules` (decode and
augmentation -> cpu_preprocessing, file/object-store reads -> data_loading, logging and anything unmatched
-> host_overhead, ...).

Samples are not spans of a fixed width. The hook context reports every *gap* between hooked regions with
its exact start and end; the sampler turns the samples that fell in a gap into spans that tile exactly that
gap (a change of category between two samples splits at their midpoint). A gap that no tick landed in (it
was shorter than the tick) takes the category its *signature* — the hooks on either side, e.g.
"DataLoader.__next__ -> forward" — had when it was sampled in other steps: training loops repeat, so the
same gap does the same work. Gaps whose signature was never sampled stay unattributed.

Inside a DataLoader without workers the Dataset runs on the training thread, within the loader's hooked
region; the sampler splits that region too (`HookContext.enter_loader`: its inside is a gap): reading stays
data_loading, decode/transform/collate become cpu_preprocessing spans nested in the loader's span (the
engine counts them as preprocessing). It is woken as such a region opens and samples at `loader_hz` while
inside one, reading the stack only down to the loader's own frame. There it also reads the training thread's
work clock (`collectors.hooks.thread_work_clock`: time on a CPU or waiting for one, and the timeslices it
began) with each sample: the samples land mostly where the thread waits (a read, a sleep), and the short
decode or augmentation between two waits goes unseen, but not uncounted (`HIDDEN_WORK_MAX_CPU`; less what
the waits themselves cost, `StackSampler._less_waits`).
"""

from __future__ import annotations

import collections
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from collectors.base import Collector, RecordSink
from collectors.hooks.hook_context import HookContext
from collectors.hooks.stack_classify import OWN_LABEL, classify_frame
from collectors.hooks.thread_work_clock import measure_wait_cost_ns
from gpuwatch.records import Category, SpanKind

MIN_GAP_NS = 2_000
"""Gaps shorter than this are not worth a span."""
MAX_PENDING_GAPS = 4096
"""Unsampled gaps waiting for their signature to be learned; older ones are dropped (stay unattributed)."""
MAX_SAMPLES_PER_GAP = 20_000
"""A gap that never closes (no hooks, no gw.step) stops collecting samples here; the last category holds."""
PROBE_MIN_GAP_NS = 100_000
"""An unexplained gap at least this long gets its signature probed."""
PROBE_EVERY_NS = 250_000
"""While probing, one stack every this many ns of the training thread's own events."""
PROBE_RETRY_STEPS = 20
"""A signature still unexplained after a probe is probed again this many steps later."""
THIN_SAMPLES = 3
"""A signature learned from fewer samples than this is not trusted with a long gap (`PROBE_MIN_GAP_NS`) that
no tick sampled: the gap waits, as an unexplained one does, and the signature is probed. Its few samples may
be ticks that got the GIL at a gap's edge (returning from a hooked C call, `torch.autograd.backward`'s
wrapper) while the gap itself is pure Python no tick can enter: one such sample made a 4 ms bookkeeping gap
compute in every step of a CI run (host_overhead 1.4% where the loop spent 17.8%)."""
MAX_SIGNATURES = 10_000
"""Gap signatures remembered (span names with a counter in them would otherwise grow this forever)."""
LOADER_HZ = 200.0
"""Samples a second while the training thread is inside a DataLoader that runs the Dataset itself: its
reads and transforms alternate every few milliseconds (a stack costs ~10 us read only down to the loader)."""
WAKE_MIN_NS = 5_000_000
"""A DataLoader region wakes the sampler as it opens only when the previous one took this long: a loader
that hands over in-memory tensors in microseconds is not worth a thread switch per step (0.3% of a 10 ms
step); a slow one is, and its first moments are then sampled too."""
LATE_NS = 1_000_000
"""A sample this much later than its tick was kept from running by the training thread's work (it held the
GIL or the core). A wait (a read) frees both at once, so a late sample that sees a wait marks where the wait
began: its run starts there, not at the midpoint from the previous sample (which would lend the wait part
of the work before it; on a busy 2-core machine that put 3 points too many in data_loading)."""
HIDDEN_WORK_MAX_CPU = 0.5
"""Inside a DataLoader region, between two samples that both saw the loader waiting (data_loading), the
training thread's work clock says how long it worked in between. Where it worked for less than this share of
that time, the samples saw waits, and the work between them is what the loader does between its waits: it
goes to the work category this loader's samples saw most (decode, augment, collate: cpu_preprocessing),
placed just before the later sample. Without the clock, numpy augmentation of each item after its 1.5 ms read
(tests/support/planted_trainer.py, slow_loader) came out at 4.4-8.3% of the step against 8.5-12.1% measured:
it holds the GIL, and the samples land in the reads. With the CPU clock, 10.5-12.1% against 9.2-10.7% on a
quiet machine, but 4.1% against 7.8% in a CI run, where the augmentation also waited for a core: hence CPU
plus run-queue time. Where the thread worked most of the time without beginning a timeslice (it never
waited), the samples saw that work itself, the loader's own reading, and it stays as sampled. Where it began
one, it woke from a wait in between and the work is the loader's work between its waits whatever its share:
on a busy host the sampler gets a core when the training thread gives one up, so its samples land in the reads
with 6 ms of PIL decode between them, 85% of the stretch (tests/support/planted_imagefolder.py beside a CPU
hog: this cap took 2 points of decode to data_loading)."""
HIDDEN_WORK_MIN_NS = 20_000
"""Work between two waits below this is the loader's own bookkeeping, not worth a span."""
BACKOFF_MAX = 4
"""While ticks find nothing to sample (the training thread inside hooked regions, every closed gap explained
by a learned signature), the tick interval doubles up to this many times `1 / hz`; a sample, or a gap whose
signature is not learned yet, brings it back to `1 / hz`. Each tick costs a thread wake-up and a GIL
hand-off with the training thread whether it samples or not."""
IDLE_WAIT_S = 1.0
"""Longest sleep through steps the watch does not observe (it is woken as one is observed again)."""
DATA_LOADING = Category.DATA_LOADING.value
_NO_CLOCK = (-1, -1)
_NO_LOADER_CLOCK: tuple[None, None] = (None, None)
"""`HookContext.loader_clock` of a region that has none."""
_Sample = tuple[int, str, str, bool, int, int]
"""(t_ns, category, label, late, the training thread's work clock ns, its timeslices; -1 for what was not
read)"""
STACK_SAMPLE = SpanKind.STACK_SAMPLE.value
_INFERRED = {"inferred": True}
"""The attrs of every inferred span (one shared dict, read-only: one fewer allocation per gap)."""
_HIDDEN = {"inferred": True, "from": "thread_work_clock"}
"""The attrs of work found by the thread's work clock between two samples (`HIDDEN_WORK_MAX_CPU`)."""


def _torch_profiler_on() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch._C._autograd._profiler_enabled())
    except Exception:
        return True  # cannot tell: stay out of its way


def _ran_through(prev: _Sample, cur: _Sample) -> bool:
    """Both samples saw the loader work and the thread began no timeslice in between: it never waited, so it
    worked all the time between them, whatever its work clock says. That clock misses time the host took the
    core (a VM's steal), and a run-queue wait still in progress as the later sample is read (a thread waiting
    for a core shows it only once it has one again). On this project's VM such stretches of PIL decode read
    5% short when quiet and 56% short beside two CPU hogs; in a CI run 7-10 ms a step went to data_loading
    (tests/support/planted_imagefolder.py: 26.0% against 20.7%). The wait still in progress then shows in the
    next stretch, and may count twice: beside a CPU hog that test's preprocessing came -0.8 to +1.4 points off
    (5 runs); without this rule, 7.3 points short in 1 run of 4."""
    return prev[1] not in ("", DATA_LOADING) and cur[1] not in ("", DATA_LOADING) and 0 <= prev[5] == cur[5]


def _kept(base_depth: int, label: str) -> bool:
    """Whether a sample is kept. One inside a DataLoader region (`base_depth` > 0) that finds the training
    thread in gpuwatch's own code (the loader hook closing the region, or handing the GIL over in a clock
    read) is not: that code is microseconds long, but as a sample it names the work before it, and counted
    among the loader's samples it can outvote the loader's real work (`HIDDEN_WORK_MAX_CPU`). In about 1 run
    in 3 on a 2-core machine, 5 such samples against 1 of numpy and 1 of collate sent every hidden
    augmentation to host_overhead, "gpuwatch (own overhead)": cpu_preprocessing 0.7% against a truth of 6.4%
    (tests/support/planted_trainer.py, slow_loader). Elsewhere gpuwatch's own code is its own overhead."""
    return base_depth == 0 or label != OWN_LABEL


@dataclass(slots=True)
class _Signature:
    counts: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    best: tuple[str, str] | None = None
    """(category, label) with the most samples, kept as samples are added: read for every inferred gap."""
    samples: int = 0

    def add(self, category: str, label: str, n: int) -> None:
        self.samples += n
        self.counts[category] = self.counts.get(category, 0) + n
        self.labels[category] = label
        self.best = None

    def dominant(self) -> tuple[str, str]:
        best = self.best
        if best is None:
            category = max(self.counts, key=lambda c: self.counts[c])
            best = self.best = (category, self.labels[category])
        return best


class StackSampler(Collector):
    """Samples the training thread at `hz` when no hook covers it.

    The GIL biases a sampling thread: it gets to run when the training thread releases the GIL (inside C
    calls, sleeps, I/O), so a short gap of pure-Python work can go unsampled step after step. A gap
    signature that stays unexplained although its gaps are long is therefore *probed*: the next gap that
    opens after the same hook is traced on the training thread itself (`sys.setprofile`, only for that one
    gap, only if no other profile function is set) and stacks are taken from the trace events. So is a
    signature learned from fewer than `THIN_SAMPLES` samples, whose long gaps wait meanwhile.

    Args:
        ctx: the process's hook context (training thread, gaps, sink, clock).
        hz: ticks per second (tens of Hz is enough: gap signatures fill in short gaps).
        probes: allow gap probes.
        loader_hz: ticks per second inside a DataLoader without workers (0: leave those regions whole).
    """

    name = "stack_sampler"

    def __init__(
        self, ctx: HookContext, hz: float = 50.0, *, probes: bool = True, loader_hz: float = LOADER_HZ
    ) -> None:
        self.ctx = ctx
        self.interval_s = 1.0 / max(hz, 0.1)
        self.loader_interval_s = 1.0 / loader_hz if loader_hz > 0 else self.interval_s
        self._wake = threading.Event()
        self._sleeping_slow = False
        self._woken_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cost_thread: threading.Thread | None = None
        self.wait_cost_ns = 0
        """What one wait costs the training thread's work clock on this host (`measure_wait_cost_ns`), taken
        off per timeslice where the loader's samples saw it waiting (`HIDDEN_WORK_MAX_CPU`)."""
        self._samples: dict[int, list[_Sample]] = {}
        """gap serial -> its samples"""
        self._signatures: dict[tuple[str, str], _Signature] = {}
        self._pending: collections.deque[tuple[int, int, tuple[str, str], bool]] = collections.deque(
            maxlen=MAX_PENDING_GAPS
        )
        self._learned = False
        self._unexplained = False
        """The last drain met a gap long enough to sample (`PROBE_MIN_GAP_NS`) whose signature no sample has
        explained yet: keep ticking at `hz`."""
        self._probed_at: dict[str, int] = {}
        self._probe_last_ns = 0
        self.samples = 0
        """Stacks read so far by the sampling thread."""
        self.probe_samples = 0
        """Stacks read by gap probes."""
        self.probes = 0
        self.ticks = 0
        if probes:
            ctx.on_probe_start = self._probe_start
            ctx.on_probe_stop = self._probe_stop
        if loader_hz > 0:
            ctx.on_loader_enter = self._loader_entered
        self._idle = False
        ctx.on_observe = self._observed

    def start(self, sink: RecordSink) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="gpuwatch-stack-sampler", daemon=True)
        self._thread.start()
        if self.ctx.on_loader_enter is not None:  # loader regions are split by the work clock
            name = "gpuwatch-wait-cost"
            self._cost_thread = threading.Thread(target=self._measure_wait_cost, name=name, daemon=True)
            self._cost_thread.start()

    def _measure_wait_cost(self) -> None:
        """On a thread of its own: its 30 ms of sleeps must not keep the sampler from the first steps."""
        try:
            cost = measure_wait_cost_ns(self._stop)
            if not self._stop.is_set():
                self.wait_cost_ns = cost
        except Exception as exc:
            self._tick_failed(exc)

    def stop(self) -> None:
        """Stop ticking, then turn every closed gap still held into spans."""
        self._stop.set()
        self._wake.set()
        self.ctx.on_loader_enter = None
        self.ctx.on_observe = None
        self.ctx.on_probe_start = None
        if self.ctx.probing and threading.get_ident() == self.ctx.train_ident:
            self.ctx._stop_probe()
        self.ctx.on_probe_stop = None
        for thread in (self._thread, self._cost_thread):  # the cost's thread ends within one probe (3 ms)
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5.0)
        self._thread = self._cost_thread = None
        try:
            self._drain(final=True)
        except Exception as exc:
            self.ctx.hook_error("stack_sampler", exc)

    def _loop(self) -> None:
        """`run_paced`, with two paces: `loader_hz` while inside a split DataLoader region, and woken
        early when one opens during a slow wait."""
        ctx = self.ctx
        next_t = time.monotonic()
        backoff = 1
        while not self._stop.is_set():
            if not ctx.observing:
                self._sit_out()
                next_t = time.monotonic()
                continue
            sampled = True
            try:
                sampled = self.tick(late=time.monotonic() - next_t > LATE_NS / 1e9)
            except Exception as exc:
                self._tick_failed(exc)
            fast = ctx.base_depth > 0
            backoff = 1 if sampled or fast or self._unexplained else min(backoff * 2, BACKOFF_MAX)
            next_t += self.loader_interval_s if fast else self.interval_s * backoff
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (suspended, overloaded): skip missed ticks instead of bursting
                next_t, delay = time.monotonic(), 0.0
            self._sleeping_slow = not fast
            if self._wake.wait(delay):  # a loader opened (or stop): sample now
                self._wake.clear()
                next_t = min(self._woken_at, time.monotonic())
                backoff = 1
            self._sleeping_slow = False

    def _sit_out(self) -> None:
        """The steps the watch does not observe: turn the gaps of the last observed one into spans, then
        sleep until a step is observed again (`_observed`), and resume at a random point of the tick
        interval, so the first sample falls anywhere in the observed steps, not always in their first gap."""
        try:
            self._drain(final=False)
        except Exception as exc:
            self._tick_failed(exc)
        self._idle = True
        if not self.ctx.observing:  # the training thread sets `observing`, then reads `_idle`: no lost wake
            self._wake.wait(IDLE_WAIT_S)
        self._idle = False
        self._wake.clear()
        self._stop.wait(random.random() * self.interval_s)

    def _observed(self) -> None:
        # training thread, at a step boundary where observation resumes: one test, and an Event.set
        if self._idle:
            self._wake.set()

    def _loader_entered(self) -> None:
        # training thread: two tests, and for a slow loader an Event.set once per slow wait
        if self._sleeping_slow and self.ctx.last_loader_ns >= WAKE_MIN_NS:
            self._sleeping_slow = False
            self._woken_at = time.monotonic()
            self._wake.set()

    def _tick_failed(self, exc: Exception) -> None:
        self.ctx.hook_error("stack_sampler", exc)  # a bad frame must not end sampling

    # ---- one tick -------------------------------------------------------------------------------------
    def tick(self, *, late: bool = False) -> bool:
        """Sample the training thread if it is between hooked regions; then emit spans for closed gaps.
        `late`: this tick ran more than `LATE_NS` after it was due. Returns whether it took a sample."""
        ctx = self.ctx
        self.ticks += 1
        base = ctx.base_depth
        sampled = False
        if ctx.depth == base and ctx.observing and not ctx.probing:
            serial = ctx.gap_serial
            frame = sys._current_frames().get(ctx.train_ident)
            if frame is not None and ctx.depth == base and serial == ctx.gap_serial:
                t = ctx.now_ns()
                cpu, slices = ctx.train_clock.read() if base > 0 else _NO_CLOCK
                category, label = self.classify(frame, in_loader=base > 0)
                del frame
                self.samples += 1
                if _kept(base, label):
                    self._add(serial, t, category, label, late, cpu, slices)
                sampled = True
        self._drain(final=False)
        return sampled

    def _add(
        self,
        serial: int,
        t: int,
        category: str,
        label: str,
        late: bool = False,
        cpu_ns: int = -1,
        slices: int = -1,
    ) -> None:
        samples = self._samples.get(serial)
        if samples is None:
            samples = self._samples[serial] = []
        if len(samples) < MAX_SAMPLES_PER_GAP:
            samples.append((t, category, label, late, cpu_ns, slices))

    @staticmethod
    def classify(frame: object, *, in_loader: bool = False) -> tuple[str, str]:
        """(category, label) of one stack, innermost frame first (`stack_classify.classify_frame`)."""
        return classify_frame(frame, in_loader=in_loader)

    # ---- gap probes (training thread) ---------------------------------------------------------------------
    def _probe_start(self, key: str) -> bool:
        if sys.getprofile() is not None or _torch_profiler_on():
            return False  # someone else profiles this thread: never replace their function
        self.probes += 1
        self._probe_last_ns = 0
        sys.setprofile(self._probe_event)
        return True

    def _probe_stop(self) -> None:
        if sys.getprofile() == self._probe_event:
            sys.setprofile(None)

    def _probe_event(self, frame: Any, event: str, arg: Any) -> None:
        t = time.perf_counter_ns()
        if t - self._probe_last_ns < PROBE_EVERY_NS:
            return
        self._probe_last_ns = t
        try:
            ctx = self.ctx
            if ctx.depth != ctx.base_depth:
                return
            category, label = self.classify(frame, in_loader=ctx.base_depth > 0)
            self.probe_samples += 1
            if _kept(ctx.base_depth, label):
                self._add(ctx.gap_serial, ctx.now_ns(), category, label)
        except Exception as exc:
            sys.setprofile(None)
            self.ctx.hook_error("stack_probe", exc)

    # ---- gaps -> spans -----------------------------------------------------------------------------------
    def _drain(self, final: bool) -> None:
        ctx = self.ctx
        gaps = ctx.closed_gaps
        signatures, emit, tid = self._signatures, ctx.emit_span, ctx.train_tid
        self._unexplained = False
        while gaps:
            try:
                serial, start, end, key_before, key_after, inside = gaps.popleft()
            except IndexError:
                break
            samples = self._samples.pop(serial, None)
            if not samples and not inside:  # most gaps of an observed step: unsampled, by their signature
                sig = signatures.get((key_before, key_after))
                if sig is not None and (sig.samples >= THIN_SAMPLES or end - start < PROBE_MIN_GAP_NS):
                    if end - start >= MIN_GAP_NS:  # as `_gap` then `_by_signature` would, without 3 calls
                        category, label = sig.dominant()
                        emit(start, end, STACK_SAMPLE, label, category, tid=tid, attrs=_INFERRED)
                    continue
            cpu, slices = ctx.loader_clock.pop(serial, _NO_LOADER_CLOCK) if inside else _NO_LOADER_CLOCK
            self._gap(
                start, end, (key_before, key_after), samples, inside_loader=inside, cpu_ns=cpu, slices=slices
            )
        if len(self._samples) > 64:  # samples of gaps that fell off the context's deque
            current = ctx.gap_serial
            for serial in [s for s in self._samples if s < current - 64]:
                del self._samples[serial]
        if len(ctx.loader_clock) > 64:
            current = ctx.gap_serial
            for serial in [s for s in list(ctx.loader_clock) if s < current - 64]:
                ctx.loader_clock.pop(serial, None)
        if self._learned or final:
            self._learned = False
            self._retry_pending(final)

    def _gap(
        self,
        start: int,
        end: int,
        signature: tuple[str, str],
        samples: list[_Sample] | None,
        *,
        inside_loader: bool = False,
        cpu_ns: tuple[int, int] | None = None,
        slices: tuple[int, int] | None = None,
    ) -> None:
        """Spans tiling one closed gap from its samples (or its signature). Inside a DataLoader region the
        loader's own span already says data_loading: only other categories are emitted there; `cpu_ns`: the
        training thread's work clock as that region opened and closed; `slices`: its timeslices then."""
        skip = DATA_LOADING if inside_loader else None
        if end - start < MIN_GAP_NS:
            return
        if not samples:
            sig = self._signatures.get(signature)
            long_gap = end - start >= PROBE_MIN_GAP_NS
            if sig is None or (long_gap and cpu_ns is None and sig.samples < THIN_SAMPLES):
                self._hold((start, end, signature, inside_loader))
                if long_gap:
                    self._unexplained = True
                    self._want_probe(signature[0])
            elif cpu_ns is not None:
                self._loader_gap_by_cpu(start, end, cpu_ns, [], sig, signature[0], slices)
            else:
                self._by_signature(start, end, sig, inside_loader)
            return
        samples.sort()
        sig = self._signatures.get(signature)
        if sig is None:
            sig = (
                _Signature()
                if len(self._signatures) >= MAX_SIGNATURES
                else self._signatures.setdefault(signature, _Signature())
            )
        if sig.samples < THIN_SAMPLES <= sig.samples + len(samples) or not sig.counts:
            self._learned = True  # first learned, or trusted with long gaps from now on: held gaps may go
        if cpu_ns is not None and all(sample[4] >= 0 for sample in samples):
            for _t, category, label, _late, _cpu, _slices in samples:
                sig.add(category, label, 1)
            self._loader_gap_by_cpu(start, end, cpu_ns, samples, sig, signature[0], slices)
            return
        # runs of equal category; a change splits at the midpoint between the two samples, or where a late
        # sample found the thread waiting (LATE_NS)
        runs: list[list[Any]] = []  # [category, label, first_t, last_t, count, starts_at_first]
        for t, category, label, late, _cpu, _slices in samples:
            if runs and runs[-1][0] == category:
                runs[-1][3] = t
                runs[-1][4] += 1
            else:
                runs.append([category, label, t, t, 1, late and category == DATA_LOADING])
        edge = start
        for i, (category, label, _first, last, count, _) in enumerate(runs):
            sig.add(category, label, count)
            if i + 1 == len(runs):
                cut = end
            else:
                nxt = runs[i + 1]
                cut = min(max(nxt[2] if nxt[5] else (last + nxt[2]) // 2, edge), end)
            if cut > edge and category != skip:
                self._emit(edge, cut, category, label, count, inferred=False)
            edge = cut

    def _loader_gap_by_cpu(
        self,
        start: int,
        end: int,
        cpu_ns: tuple[int, int],
        samples: list[_Sample],
        sig: _Signature,
        loader_key: str,
        slices: tuple[int, int] | None = None,
    ) -> None:
        """A DataLoader region's work from its samples and the training thread's work clock, read as the region
        opened and closed and with each sample.

        Between two readings the thread worked (ran, or waited for a core) for the clock's difference, and
        waited (read, slept) the rest: data_loading, which the loader's own span already says. The work is what a sample
        at either end saw (the later one first); between two samples that both saw the loader waiting, it
        is the work this loader's samples saw most (`HIDDEN_WORK_MAX_CPU`). A span ends at the later sample
        (a sample that waits marks where the work before it ended), or starts at the earlier one where only
        that one saw the work; the last stretch of the region ends with its work (collate). Where the
        thread worked between waits but no sample of this loader ever saw what, the next such region is
        probed (its calls traced, `StackSampler`), which names the work for the regions after it.
        """
        work = [(n, c) for c, n in sig.counts.items() if c != DATA_LOADING]
        usual = max(work)[1] if work else None
        first, last = slices or _NO_CLOCK
        # category "": the region's ends are not samples
        edge_start = (start, "", "", False, cpu_ns[0], first)
        edge_end = (end, "", "", False, cpu_ns[1], last)
        prev = edge_start
        for cur in [*samples, edge_end]:
            wall = cur[0] - prev[0]
            cpu = wall if _ran_through(prev, cur) else min(max(cur[4] - prev[4], 0), wall)
            if cpu <= 0:
                pass
            elif cur[1] not in ("", DATA_LOADING):
                self._emit(cur[0] - cpu, cur[0], cur[1], cur[2], 1, inferred=False)
            elif prev[1] not in ("", DATA_LOADING):
                self._emit(prev[0], prev[0] + cpu, prev[1], prev[2], 1, inferred=False)
            elif not samples and sig.dominant()[0] != DATA_LOADING:  # unsampled: what it did when sampled
                category, label = sig.dominant()
                self._emit(end - cpu, end, category, label, 0, inferred=True)
            elif HIDDEN_WORK_MIN_NS <= (cpu := self._less_waits(cpu, prev[5], cur[5])) and (
                cpu < HIDDEN_WORK_MAX_CPU * wall or 0 <= prev[5] < cur[5]
            ):
                if usual is None:
                    self._want_probe(loader_key)
                else:
                    self._emit(
                        cur[0] - cpu, cur[0], usual, sig.labels[usual], 0, inferred=True, attrs=_HIDDEN
                    )
            prev = cur

    def _less_waits(self, cpu: int, slices_before: int, slices_after: int) -> int:
        """The work between two readings where neither sample saw the loader work, less what its waits cost:
        `wait_cost_ns` per timeslice begun in between. Only there: where a sample saw the loader working, its
        timeslices are as often the GIL handed to and fro, or a preemption, as waits of its own."""
        if slices_before < 0 or slices_after < slices_before:
            return cpu
        return max(cpu - (slices_after - slices_before) * self.wait_cost_ns, 0)

    def _want_probe(self, key: str) -> None:
        step = self.ctx.step
        last = self._probed_at.get(key)
        if (last is not None and step - last < PROBE_RETRY_STEPS) or len(self._probed_at) >= MAX_SIGNATURES:
            return
        self._probed_at[key] = step
        self.ctx.probe_keys.add(key)

    def _hold(self, gap: tuple[int, int, tuple[str, str], bool]) -> None:
        """Keep a gap until its signature is learned (or trusted, `THIN_SAMPLES`); when too many wait, the
        oldest goes as its signature says now, or is dropped (left unattributed) if it has none."""
        if len(self._pending) == MAX_PENDING_GAPS:
            self._release(self._pending.popleft(), final=True)
        self._pending.append(gap)

    def _retry_pending(self, final: bool = False) -> None:
        still: collections.deque[tuple[int, int, tuple[str, str], bool]] = collections.deque(
            maxlen=MAX_PENDING_GAPS
        )
        while self._pending:
            gap = self._pending.popleft()
            if not self._release(gap, final):
                still.append(gap)
        self._pending = still

    def _release(self, gap: tuple[int, int, tuple[str, str], bool], final: bool) -> bool:
        """Emit a held gap as its signature says, if it has one it can be trusted with (any, when `final`)."""
        start, end, signature, inside_loader = gap
        sig = self._signatures.get(signature)
        if sig is None or (sig.samples < THIN_SAMPLES and not final and end - start >= PROBE_MIN_GAP_NS):
            return False
        self._by_signature(start, end, sig, inside_loader)
        return True

    def _by_signature(self, start: int, end: int, sig: _Signature, inside_loader: bool) -> None:
        """An unsampled gap as its signature says: a DataLoader region by its shares, any other gap whole as
        the category seen most."""
        if inside_loader:
            self._loader_gap_by_shares(start, end, sig)
        else:
            category, label = sig.dominant()
            self._emit(start, end, category, label, 0, inferred=True)

    def _loader_gap_by_shares(self, start: int, end: int, sig: _Signature) -> None:
        """An unsampled DataLoader region read without the work clock (a fast loader): each category its
        samples saw gets that share of the region, the work placed at its end (collate is last), and the
        loader's own span says the rest (data_loading). Not all to the category seen most: a loader of
        in-memory tensors (benchmarks/overhead.py --loop small, 0.3 ms a batch) is sampled a dozen times in 600
        steps, and its collate, 3.8-4.0% of the step (timed by the loop), came out at 0.1-0.2% in some runs
        and 9-10% in others, whichever category led by one sample."""
        edge = end
        for category, count in sorted(sig.counts.items(), key=lambda kv: -kv[1]):
            if category == DATA_LOADING:
                continue
            length = (end - start) * count // sig.samples
            if length >= MIN_GAP_NS:
                self._emit(edge - length, edge, category, sig.labels[category], 0, inferred=True)
                edge -= length

    def _emit(
        self,
        start: int,
        end: int,
        category: str,
        label: str,
        samples: int,
        *,
        inferred: bool,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        attrs = attrs or (_INFERRED if inferred else {"samples": samples})
        self.ctx.emit_span(start, end, STACK_SAMPLE, label, category, tid=self.ctx.train_tid, attrs=attrs)
