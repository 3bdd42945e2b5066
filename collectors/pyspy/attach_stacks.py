"""py-spy stack intervals -> the training thread's classified spans, detected steps, and what workers do.

Consumes the `StackInterval`s of `PySpyRecorder` (every thread of the target and its child processes):
- picks the training thread (the one with the most forward/backward/optimizer time; `--thread` overrides),
- classifies each of its intervals through the shared rules table (`collectors.stack_rules`) and emits
  `Span(kind="stack_sample", category=...)` on it (consecutive intervals of the same label are merged),
- finds steps (`collectors.pyspy.step_detect`) and emits `Span(kind="step")` on it once confident,
- sums what DataLoader worker processes spend their time on (spans on the worker pids with category None,
  so the engine never mistakes a worker for the training thread; the category is kept in `attrs`),
- emits the collectives other threads of the training process run (sync spans on their own tids): while
  the training thread only waits for them, the engine counts that time as sync.
"""

from __future__ import annotations

import linecache
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from collectors.base import RecordSink
from collectors.pyspy.pyspy_sampler import Frame, StackInterval
from collectors.pyspy.step_detect import DEFAULT_MIN_CONFIDENCE, LoopMarker, StepDetection, detect_steps
from collectors.stack_rules import classify_stack, higher_priority, source_rule
from gpuwatch.records import Category, Span, SpanKind

WORKER_FILE = "torch/utils/data/_utils/worker.py"
WORKER_LOOP = "_worker_loop"
WORKER_IDLE = "idle (waiting for indices)"
_LOADER_INTERNAL = (
    "torch/utils/data/_utils/fetch.py",
    "torch/utils/data/_utils/worker.py",
    "torch/utils/data/dataset.py",
)
DECIDE_AFTER_CHUNKS = 3
"""Without any forward/backward/optimizer sample after this many chunks, fall back to the main thread."""
LOCKED_WINDOW = 4000
"""Intervals re-examined per chunk once the step marker is locked (keeps live step detection O(chunk))."""

ThreadKey = tuple[int, int]
"""(pid, Python thread id) as py-spy reports them."""
ResolveThread = Callable[[int, int], "tuple[int, str] | None"]
"""(pid, Python thread id) -> (kernel tid, thread name), or None when unknown."""


def short_function(name: str) -> str:
    """py-spy reports qualified names (`Queue.get`); the rules match bare ones like `co_name` (`get`)."""
    return name.rsplit(".", 1)[-1]


def _norm(path: str) -> str:
    return path.replace("\\", "/")


def leaf_label(frames: tuple[Frame, ...]) -> str:
    """Name an unmatched stack by its innermost frame: `function (file.py:line)`."""
    if not frames:
        return "?"
    filename, function, line = frames[-1]
    return f"{function} ({_norm(filename).rsplit('/', 1)[-1]}:{line})"


class StackClassifier:
    """Stack -> (category or None, label), cached per distinct stack (stacks repeat thousands of times)."""

    def __init__(self, max_cache: int = 50_000, *, device_syncs: bool = False) -> None:
        self.device_syncs = device_syncs
        """Also classify by the innermost line's text (`SOURCE_RULES`): on a GPU, `loss.item()` waits."""
        self._cache: dict[tuple[Frame, ...], tuple[str | None, str]] = {}
        self._worker_cache: dict[tuple[Frame, ...], tuple[str | None, str]] = {}
        self._max = max_cache

    def classify(self, frames: tuple[Frame, ...]) -> tuple[str | None, str]:
        hit = self._cache.get(frames)
        if hit is None:
            # leaf first: under a DataLoader, and among rules of one category, the innermost frame names the
            # cause; qualified names (`Normalize.__call__`) let transform classes be told by their name
            rule = classify_stack((f, n) for f, n, _ in reversed(frames))
            if frames and self.device_syncs:  # the innermost line shows C calls py-spy cannot see (`.item()`)
                filename, _, line = frames[-1]
                rule = higher_priority(rule, source_rule(filename, linecache.getline(filename, line)))
            hit = (rule.category.value, rule.label) if rule is not None else (None, leaf_label(frames))
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[frames] = hit
        return hit

    def classify_worker(self, frames: tuple[Frame, ...]) -> tuple[str | None, str] | None:
        """What a DataLoader worker's main thread does, or None if `frames` is not a worker's loop.

        The DataLoader's own frames (fetch, the worker loop) would classify as data_loading; for a worker
        what matters is the work under them (decode, augment, collate, reads), or that it waits for indices.
        """
        hit = self._worker_cache.get(frames)
        if hit is not None:
            return hit
        at = next(
            (
                i
                for i, f in enumerate(frames)
                if f[0].replace("\\", "/").endswith(WORKER_FILE) and short_function(f[1]) == WORKER_LOOP
            ),
            None,
        )
        if at is None:
            return None
        below = frames[at + 1 :]
        if not below or (
            "multiprocessing/" in _norm(below[0][0]) or short_function(below[0][1]) in ("get", "poll", "wait")
        ):
            hit = (None, WORKER_IDLE)
        else:
            work = tuple(f for f in below if not _norm(f[0]).endswith(_LOADER_INTERNAL))
            rule = classify_stack((f, n) for f, n, _ in reversed(work))
            hit = (rule.category.value, rule.label) if rule is not None else (None, leaf_label(work or below))
        if len(self._worker_cache) >= self._max:
            self._worker_cache.clear()
        self._worker_cache[frames] = hit
        return hit


@dataclass
class WorkerReport:
    """Where DataLoader workers spent their sampled time, over all workers."""

    pids: list[int] = field(default_factory=list)
    ns_by_label: dict[str, int] = field(default_factory=dict)
    category_by_label: dict[str, str | None] = field(default_factory=dict)

    @property
    def total_ns(self) -> int:
        return sum(self.ns_by_label.values())

    def pct_by_label(self) -> dict[str, float]:
        total = self.total_ns or 1
        ordered = sorted(self.ns_by_label.items(), key=lambda kv: -kv[1])
        return {label: round(100.0 * ns / total, 1) for label, ns in ordered}

    def sentence(self, top: int = 3) -> str | None:
        """'2 DataLoader workers: 85% in image decode (PIL), 10% in numpy, 5% idle (waiting for indices)'."""
        if not self.pids or not self.total_ns:
            return None
        parts = []
        for label, pct in list(self.pct_by_label().items())[:top]:
            parts.append(f"{pct:.0f}% {label}" if label == WORKER_IDLE else f"{pct:.0f}% in {label}")
        n = len(self.pids)
        return (
            f"{n} DataLoader worker{'s' if n != 1 else ''} (pids {', '.join(map(str, sorted(self.pids)))}): "
            + ", ".join(parts)
        )


@dataclass(frozen=True, slots=True)
class TrainingThread:
    pid: int
    thread_id: int
    tid: int
    """Kernel thread id used as the spans' `tid`."""
    name: str
    how: str
    """Why this thread: "most forward/backward/optimizer time", "--thread", "main thread (fallback)"."""


class AttachStacks:
    """Turns stack intervals into spans in `sink` (see the module docstring). Thread-safe `feed`.

    Args:
        sink: where spans go (the run's writer).
        rank: the rank to record.
        anchor_unix_ns: the writer's anchor; span times are ns since it.
        target_pid: the attached process.
        rate_hz: sampling rate (step-detection confidence).
        resolve_thread: maps py-spy's thread keys to kernel tids and names.
        thread_override: (pid, thread id) chosen by the user, or None to find the training thread.
        min_step_confidence: steps are emitted from this confidence on.
        on_training_spans: called with each batch of emitted training-thread spans (device-busy placement).
        device_syncs: the target uses a GPU: a line calling `.item()`/`.cpu()`/`synchronize()` is sync.
    """

    def __init__(
        self,
        sink: RecordSink,
        *,
        rank: int,
        anchor_unix_ns: int,
        target_pid: int,
        rate_hz: float,
        resolve_thread: ResolveThread,
        thread_override: ThreadKey | None = None,
        min_step_confidence: float = DEFAULT_MIN_CONFIDENCE,
        on_training_spans: Callable[[list[Span]], None] | None = None,
        device_syncs: bool = False,
    ) -> None:
        self.sink = sink
        self.rank = rank
        self.anchor = anchor_unix_ns
        self.target_pid = target_pid
        self.rate_hz = rate_hz
        self.resolve_thread = resolve_thread
        self.override = thread_override
        self.min_conf = min_step_confidence
        self.on_training_spans = on_training_spans
        self.classifier = StackClassifier(device_syncs=device_syncs)
        self.training: TrainingThread | None = None
        self.workers = WorkerReport()
        self.steps: StepDetection | None = None
        self.steps_emitted = 0
        self.training_ns_by_category: Counter[str] = Counter()
        self.sampled_unix_ns: tuple[int, int] | None = None
        """First and last sampled instant (unix ns) of any thread."""
        self._lock = threading.Lock()
        self._buffer: list[StackInterval] = []
        self._chunks = 0
        self._pending: dict[int, tuple[int, int, str | None, str, dict[str, Any] | None]] = {}
        # training-thread history for step detection
        self._h_start: list[int] = []
        self._h_end: list[int] = []
        self._h_stack: list[tuple[Frame, ...]] = []
        self._h_cat: list[str | None] = []
        self._intern: dict[tuple[Frame, ...], tuple[Frame, ...]] = {}
        self._helper_tids: dict[ThreadKey, int] = {}
        self._marker: LoopMarker | None = None
        self._last_boundary: int | None = None

    # ---- input ----------------------------------------------------------------------------------
    def feed(self, intervals: list[StackInterval], final: bool) -> None:
        """One chunk of intervals (time order) from the recorder; `final` on the last one."""
        with self._lock:
            self._chunks += 1
            if intervals:
                lo = min(i.start_unix_ns for i in intervals)
                hi = max(i.end_unix_ns for i in intervals)
                old = self.sampled_unix_ns
                self.sampled_unix_ns = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
            if self.training is None:
                self._buffer.extend(intervals)
                self._decide(final)
                if self.training is None:
                    return
                intervals, self._buffer = self._buffer, []
            self._process(intervals)
            self._detect(final)
            if final:
                self._flush_pending()

    # ---- training thread ------------------------------------------------------------------------
    def _decide(self, final: bool) -> None:
        if self.override is not None:
            self.training = self._make_thread(self.override, "--thread")
            return
        compute: Counter[ThreadKey] = Counter()
        busy: Counter[ThreadKey] = Counter()
        for iv in self._buffer:
            key = (iv.pid, iv.thread_id)
            cat, _ = self.classifier.classify(iv.frames)
            if self.classifier.classify_worker(iv.frames) is not None:
                continue  # a worker's dataset code is never the training loop
            if cat == Category.COMPUTE.value:
                compute[key] += iv.end_unix_ns - iv.start_unix_ns
            if cat is not None and cat != Category.UNATTRIBUTED.value:  # waiting is not being busy
                busy[key] += iv.end_unix_ns - iv.start_unix_ns
        if compute:
            self.training = self._make_thread(
                compute.most_common(1)[0][0], "most forward/backward/optimizer time"
            )
        elif final or self._chunks >= DECIDE_AFTER_CHUNKS:
            fallback = self._main_thread_key()
            if fallback is None and busy:
                fallback = busy.most_common(1)[0][0]
            if fallback is not None:
                self.training = self._make_thread(
                    fallback, "main thread (no forward/backward/optimizer seen)"
                )

    def _main_thread_key(self) -> ThreadKey | None:
        keys = {(iv.pid, iv.thread_id) for iv in self._buffer if iv.pid == self.target_pid}
        for key in sorted(keys):
            found = self.resolve_thread(*key)
            if found is not None and found[0] == self.target_pid:
                return key
        return min(keys) if keys else None

    def _make_thread(self, key: ThreadKey, how: str) -> TrainingThread:
        found = self.resolve_thread(*key)
        if found is not None:
            tid, name = found
        else:  # a thread py-spy's dump did not list: kernel tid unknown, keep a stable stand-in
            tid, name = key[1] & 0x7FFFFFFF, ""
            self.sink.note(
                "attach_tid_unknown",
                f"kernel tid of the training thread unknown; spans use {tid}",
                pid=key[0],
            )
        return TrainingThread(key[0], key[1], tid, name, how)

    # ---- spans ------------------------------------------------------------------------------------
    def _process(self, intervals: list[StackInterval]) -> None:
        tr = self.training
        assert tr is not None
        emitted: list[Span] = []
        for iv in intervals:
            if iv.pid == tr.pid and iv.thread_id == tr.thread_id:
                cat, label = self.classifier.classify(iv.frames)
                self.training_ns_by_category[cat or "unclassified"] += iv.end_unix_ns - iv.start_unix_ns
                frames = self._intern.setdefault(iv.frames, iv.frames)
                self._h_start.append(iv.start_unix_ns)
                self._h_end.append(iv.end_unix_ns)
                self._h_stack.append(frames)
                self._h_cat.append(cat)
                self._extend(tr.tid, tr.pid, iv, cat, label, None, emitted)
                continue
            if iv.pid == tr.pid:  # another thread of the training process: only its collectives matter
                cat, label = self.classifier.classify(iv.frames)
                if cat == Category.SYNC.value:
                    attrs: dict[str, Any] = {"role": "helper_thread"}
                    self._extend(self._helper_tid(iv.pid, iv.thread_id), tr.pid, iv, cat, label, attrs, None)
                continue
            worker = self.classifier.classify_worker(iv.frames)
            if worker is None:
                continue
            cat, label = worker
            if iv.pid not in self.workers.pids:
                self.workers.pids.append(iv.pid)
            dur = iv.end_unix_ns - iv.start_unix_ns
            self.workers.ns_by_label[label] = self.workers.ns_by_label.get(label, 0) + dur
            self.workers.category_by_label[label] = cat
            attrs = {"role": "dataloader_worker", "category": cat}
            self._extend(iv.pid, iv.pid, iv, None, label, attrs, None)
        if emitted and self.on_training_spans is not None:
            self.on_training_spans(emitted)

    def _extend(
        self,
        tid: int,
        pid: int,
        iv: StackInterval,
        cat: str | None,
        name: str,
        attrs: dict[str, Any] | None,
        emitted: list[Span] | None,
    ) -> None:
        """Merge with the thread's pending span when contiguous and alike, else emit the pending one."""
        pend = self._pending.get(tid)
        if pend is not None and pend[1] == iv.start_unix_ns and pend[2] == cat and pend[3] == name:
            self._pending[tid] = (pend[0], iv.end_unix_ns, cat, name, attrs)
            return
        if pend is not None:
            self._emit(tid, pid, pend, emitted)
        self._pending[tid] = (iv.start_unix_ns, iv.end_unix_ns, cat, name, attrs)

    def _emit(
        self, tid: int, pid: int, pend: tuple[int, int, str | None, str, Any], emitted: list[Span] | None
    ) -> None:
        start, end, cat, name, attrs = pend
        span = Span(
            rank=self.rank,
            kind=SpanKind.STACK_SAMPLE.value,
            name=name,
            start_ns=start - self.anchor,
            end_ns=end - self.anchor,
            category=cat,
            pid=pid,
            tid=tid,
            attrs=attrs,
        )
        self.sink.emit_span(span)
        if emitted is not None:
            emitted.append(span)

    def _helper_tid(self, pid: int, thread_id: int) -> int:
        tid = self._helper_tids.get((pid, thread_id))
        if tid is None:
            found = self.resolve_thread(pid, thread_id)
            tid = found[0] if found is not None else thread_id & 0x7FFFFFFF
            self._helper_tids[(pid, thread_id)] = tid
        return tid

    def _flush_pending(self) -> None:
        tr = self.training
        emitted: list[Span] = []
        helpers = set(self._helper_tids.values())
        for tid, pend in list(self._pending.items()):
            is_training = tr is not None and tid == tr.tid
            pid = tr.pid if (is_training or tid in helpers) and tr is not None else tid
            self._emit(tid, pid, pend, emitted if is_training else None)
        self._pending.clear()
        if emitted and self.on_training_spans is not None:
            self.on_training_spans(emitted)

    # ---- steps ------------------------------------------------------------------------------------
    def _detect(self, final: bool) -> None:
        n = len(self._h_start)
        if n == 0:
            return
        lo = 0
        if self._marker is not None and not final:
            lo = max(0, n - LOCKED_WINDOW)
        det = detect_steps(
            np.asarray(self._h_start[lo:], dtype=np.int64),
            np.asarray(self._h_end[lo:], dtype=np.int64),
            self._h_stack[lo:],
            self._h_cat[lo:],
            self.rate_hz,
            marker=self._marker,
            min_confidence=self.min_conf,
        )
        if self._marker is None and det.marker is not None and det.confidence >= self.min_conf and det.steps:
            self._marker = det.marker
        if self._marker is not None and det.marker == self._marker:
            self._emit_steps(det.boundaries_ns, det.confidence, final)
        self.steps = det  # live: the confidence of the recent window; the final call sees everything

    def _emit_steps(self, boundaries: np.ndarray, confidence: float, final: bool) -> None:
        tr = self.training
        assert tr is not None
        b = boundaries.tolist()
        if self._last_boundary is not None:  # continue exactly where the emitted steps end
            b = [self._last_boundary] + [x for x in b if x > self._last_boundary]
        for start, end in zip(b[:-1], b[1:]):
            self.sink.emit_span(
                Span(
                    rank=self.rank,
                    kind=SpanKind.STEP.value,
                    name=f"step {self.steps_emitted}",
                    start_ns=start - self.anchor,
                    end_ns=end - self.anchor,
                    pid=tr.pid,
                    tid=tr.tid,
                    step=self.steps_emitted,
                    attrs={"source": "attach step detection", "confidence": confidence},
                )
            )
            self.steps_emitted += 1
        if len(b) >= 1:
            self._last_boundary = b[-1]

    # ---- report -----------------------------------------------------------------------------------
    def category_runs(self) -> tuple[dict[str, int], float]:
        """How many contiguous stretches of each category the training thread showed, and the seconds its
        samples cover: the inputs of each share's sampling error."""
        with self._lock:
            runs: Counter[str] = Counter()
            prev: tuple[str | None, int] | None = None
            for cat, start, end in zip(self._h_cat, self._h_start, self._h_end):
                key = cat or "unclassified"
                if prev is None or prev[0] != key or prev[1] != start:
                    runs[key] += 1
                prev = (key, end)
            window = (self._h_end[-1] - self._h_start[0]) / 1e9 if self._h_start else 0.0
            return dict(runs), window

    def training_shares_pct(self) -> dict[str, float]:
        """Share of the training thread's sampled time per category (as classified from its stacks), percent."""
        with self._lock:
            total = sum(self.training_ns_by_category.values())
            if not total:
                return {}
            return {k: round(100.0 * v / total, 2) for k, v in self.training_ns_by_category.most_common()}

    def report(self) -> dict[str, Any]:
        """Facts for the writer meta and the attach report (JSON-ready)."""
        with self._lock:
            tr = self.training
            det = self.steps
            total = sum(self.training_ns_by_category.values()) or 1
            return {
                "training_thread": None
                if tr is None
                else {"pid": tr.pid, "tid": tr.tid, "name": tr.name, "how": tr.how},
                "training_thread_pct": {
                    k: round(100.0 * v / total, 1) for k, v in self.training_ns_by_category.most_common()
                },
                "step_detection": None
                if det is None
                else {
                    "confidence": det.confidence,
                    "used": self.steps_emitted > 0,
                    "steps": self.steps_emitted,
                    "min_confidence": self.min_conf,
                    "marker": det.describe_marker(),
                    "median_step_ms": None if det.period_ms is None else round(det.period_ms, 2),
                    "samples_per_step": None
                    if det.samples_per_step is None
                    else round(det.samples_per_step, 1),
                    "reason": det.reason,
                },
                "dataloader_workers": None
                if not self.workers.pids
                else {
                    "pids": sorted(self.workers.pids),
                    "pct_by_label": self.workers.pct_by_label(),
                    "category_by_label": dict(self.workers.category_by_label),
                    "sampled_s": round(self.workers.total_ns / 1e9, 2),
                    "summary": self.workers.sentence(),
                },
            }
