"""What `gpuwatch top` knows about the run it follows, kept up to date incrementally (no textual here).

`RunFollower.poll()` reads only the segments written since the last poll (`gpuwatch.store.run_tail`) and
appends their spans to per-rank growing columns; `view(window_steps)` analyses the last N steps of every rank
(the same step ids on every rank) or the whole run with the engine every other view uses
(`analyze_columns` + `summarize`), so a finished run's whole-run numbers are exactly `gpuwatch summary`'s.
A window's cost does not grow with the run: its spans are picked out of the columns by time, so following
10,000 steps costs what following 100 does. The whole-run view is recomputed at most at a pace that keeps
it under a tenth of a core while the run grows.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpuwatch.attribution import intervals as iv
from gpuwatch.attribution.analysis import analyze_columns
from gpuwatch.attribution.summary import Summary, summarize
from gpuwatch.errors import RunDirError, RunDirUsageError
from gpuwatch.records import SPAN_COLUMNS, Category, SpanColumns, SpanKind
from gpuwatch.store.run_dir import RUN_FILE
from gpuwatch.store.run_reader import WriterInfo
from gpuwatch.store.run_tail import RunTail, SpanChunk, TailBatch

DEVICE_METRICS = ("gpu_util_pct", "mem_used_bytes", "mem_total_bytes", "power_mw")
PROC_METRICS = (
    "proc_cpu_pct",
    "rss_bytes",
    "child_count",
    "children_cpu_pct",
    "children_rss_bytes",
    "io_read_bytes_total",
    "io_write_bytes_total",
)
HISTORY = 60
"""Samples kept per series (the device panel's sparklines)."""
_TEXT = ("kind", "category", "name")


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One line of the event log."""

    t_s: float | None
    """Seconds since the run's start (its earliest anchor); None when unknown."""
    rank: int | None
    text: str


@dataclass(frozen=True, slots=True)
class GpuRow:
    rank: int
    device_index: int
    util_pct: float | None
    mem_used_bytes: float | None
    mem_total_bytes: float | None
    power_mw: float | None
    util_history: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class ProcRow:
    """The /proc view of one rank's process tree (the trainer and its DataLoader workers)."""

    rank: int
    pid: int
    cpu_pct: float | None
    rss_bytes: float | None
    children: float | None
    """Live descendant processes (DataLoader workers)."""
    children_cpu_pct: float | None
    children_rss_bytes: float | None
    read_bytes_per_s: float | None
    write_bytes_per_s: float | None
    cpu_history: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class RankLive:
    """What a rank is doing now, beyond the window's budget."""

    rank: int
    steps_seen: int
    doing: str | None
    """Its training thread's latest activity: "forward (compute)"."""
    status: str
    """Its writer's status: running, ended, target_exited."""


@dataclass(frozen=True, slots=True)
class LiveView:
    """Everything the screen shows, at one moment."""

    run_dir: str
    run_id: str
    window_steps: int | None
    """The window asked for: the last N steps, or None for the whole run."""
    window_label: str
    summary: Summary | None
    """The window's summary (None before the first step is in)."""
    ranks: tuple[RankLive, ...]
    gpus: tuple[GpuRow, ...]
    procs: tuple[ProcRow, ...]
    ended: bool
    """Every writer has closed: nothing more will come."""
    data_s: float
    """Seconds of the run the spans cover so far."""
    version: int
    """The data version this view was computed from (grows with every poll that brought rows)."""


@dataclass(frozen=True, slots=True)
class PollResult:
    changed: bool
    """New rows or writer changes arrived: views computed before are out of date."""
    waiting: str | None
    """Why there is nothing to show yet (the run directory is missing, no writer yet), else None."""
    events: tuple[RunEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class _Analysis:
    key: tuple[Any, ...]
    summary: Summary | None
    label: str
    cost_s: float
    """CPU seconds the analysis took (paces the next one)."""
    at_s: float
    """When it was made (time.monotonic)."""


class _Growing:
    """Columns that grow by appending, amortized (capacity doubles), with a view of the filled part."""

    def __init__(self, dtypes: dict[str, Any]) -> None:
        self.n = 0
        self.cols = {k: np.empty(64, dtype=t) for k, t in dtypes.items()}

    def append(self, new: dict[str, np.ndarray]) -> None:
        m = len(next(iter(new.values())))
        need = self.n + m
        cap = len(next(iter(self.cols.values())))
        if need > cap:
            cap = max(need, 2 * cap)
            for k, arr in self.cols.items():
                grown = np.empty(cap, dtype=arr.dtype)
                grown[: self.n] = arr[: self.n]
                self.cols[k] = grown
        for k, arr in self.cols.items():
            arr[self.n : need] = new[k]
        self.n = need

    def get(self, name: str) -> np.ndarray:
        return self.cols[name][: self.n]


_SPAN_DTYPES = {
    name: (object if name in ("kind", "category", "name", "attrs") else np.int64) for name, _ in SPAN_COLUMNS
}


class _RankData:
    """One rank's spans so far (arrival order, plus where each chunk sits in the reader's order) and steps."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.spans = _Growing({**_SPAN_DTYPES, "name_code": np.int64})
        self.chunks: list[tuple[tuple[str, int, int], int, int]] = []
        self.steps = _Growing({"tid": np.int64, "step": np.int64, "start_ns": np.int64, "end_ns": np.int64})
        self.step_tids: Counter[int] = Counter()
        self.doing: str | None = None

    def append(self, chunk: SpanChunk, cols: dict[str, np.ndarray]) -> None:
        lo = self.spans.n
        self.spans.append(cols)
        self.chunks.append(((chunk.writer, *chunk.order_key), lo, self.spans.n))
        is_step = cols["kind"] == SpanKind.STEP.value
        if is_step.any():
            self.steps.append({k: cols[k][is_step] for k in ("tid", "step", "start_ns", "end_ns")})
            self.step_tids.update(cols["tid"][is_step].tolist())
        tid = self.training_tid()
        mine = np.flatnonzero((cols["tid"] == tid) & ~is_step & (cols["stream"] < 0))
        if tid is not None and mine.size:
            last = mine[np.argmax(cols["end_ns"][mine])]
            category = cols["category"][last]
            self.doing = f"{cols['name'][last]}" + (f" ({category})" if category else "")

    def shift(self, delta_ns: int) -> None:
        for name in ("start_ns", "end_ns"):
            self.spans.get(name)[:] += delta_ns
            self.steps.get(name)[:] += delta_ns

    def training_tid(self) -> int | None:
        return self.step_tids.most_common(1)[0][0] if self.step_tids else None

    def step_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(step ids, starts, ends) of the training thread's steps by start; ids by order where unknown."""
        tid = self.training_tid()
        on = self.steps.get("tid") == tid
        starts = self.steps.get("start_ns")[on]
        order = np.argsort(starts, kind="stable")
        ids = self.steps.get("step")[on][order]
        if (ids < 0).any():
            ids = np.arange(ids.size)
        return ids, starts[order], self.steps.get("end_ns")[on][order]

    def columns(self, rows: np.ndarray | None = None) -> SpanColumns:
        """The spans (all, or `rows` of the arrival order) in the reader's order, sorted like the reader's:
        by start, longest first, ties in segment order."""
        perm = self._reader_perm()
        if rows is not None:
            keep = np.zeros(self.spans.n, dtype=bool)
            keep[rows] = True
            perm = perm[keep[perm]]
        start, end = self.spans.get("start_ns")[perm], self.spans.get("end_ns")[perm]
        perm = perm[np.lexsort((-end, start))]
        cols = {name: self.spans.get(name)[perm] for name in SpanColumns.__dataclass_fields__}
        return SpanColumns(**cols)

    def _reader_perm(self) -> np.ndarray:
        keys = [c[0] for c in self.chunks]
        if all(a <= b for a, b in zip(keys, keys[1:], strict=False)):
            return np.arange(self.spans.n)
        return np.concatenate([np.arange(lo, hi) for _, lo, hi in sorted(self.chunks, key=lambda c: c[0])])


class RunFollower:
    """Follows one run directory for the dashboard.

    Args:
        run_dir: the run directory (it may not exist yet: `poll()` then says it is waiting).
        max_analysis_cpu: the share of a core the window's analysis may take while the run grows.
    """

    def __init__(self, run_dir: str | Path, *, max_analysis_cpu: float = 0.05) -> None:
        self.run_dir = Path(run_dir)
        self.tail = RunTail(self.run_dir, sample_metrics=DEVICE_METRICS + PROC_METRICS)
        self.max_analysis_cpu = max_analysis_cpu
        self.run_id = ""
        self.writers: tuple[WriterInfo, ...] = ()
        self.anchor_unix_ns = 0
        self.version = 0
        self._ranks: dict[int, _RankData] = {}
        self._codes: dict[str | None, int] = {}
        self._canon: list[str | None] = []
        self._series: dict[tuple[int, str, int, int], deque[tuple[int, float]]] = {}
        self._known: dict[str, WriterInfo] = {}
        self._ckpt_end: dict[int, int] = {}
        self._said_ended = False
        self._views: dict[int | None, LiveView] = {}
        self._analyses: dict[int | None, _Analysis] = {}
        self.analyses = 0
        """How many window analyses were made (benchmarks/top_follow.py reports their pace)."""

    # ---- reading -------------------------------------------------------------------------------
    def poll(self) -> PollResult:
        """Read what is new. Raises RunDirError for a directory that is not (and will not become) a run
        of this gpuwatch: another schema version, or a folder with other things in it and no run marker."""
        try:
            batch = self.tail.poll()
        except RunDirUsageError:
            return PollResult(False, self._why_waiting())
        self.run_id = batch.run_id
        if not batch.writers:
            return PollResult(False, "waiting for the first writer to start")
        if batch.anchor_moved_ns:
            for data in self._ranks.values():
                data.shift(batch.anchor_moved_ns)
            for series in self._series.values():
                for i, (t, v) in enumerate(series):
                    series[i] = (t + batch.anchor_moved_ns, v)
        self.anchor_unix_ns = batch.anchor_unix_ns
        events: list[RunEvent] = []
        for chunk in batch.chunks:
            events.extend(self._add_chunk(chunk))
        self._add_samples(batch.samples)
        events.extend(self._writer_events(batch))  # after the spans: a closed writer's end is their end
        self.writers = batch.writers
        if self.ended and not self._said_ended:
            self._said_ended = True
            events.append(
                RunEvent(self._data_end_s(), None, f"run ended: all {len(self.writers)} writers closed")
            )
        changed = bool(batch.new_rows or events)
        if changed:
            self.version += 1
        waiting = None if self._ranks else "waiting for the first spans (the writers' first flush)"
        events.sort(key=lambda e: -1.0 if e.t_s is None else e.t_s)
        return PollResult(changed, waiting, tuple(events))

    @property
    def ended(self) -> bool:
        return bool(self.writers) and all(w.status != "running" for w in self.writers)

    def close(self) -> None:
        self.tail.close()

    def _why_waiting(self) -> str:
        if not self.run_dir.exists():
            return f"waiting for {self.run_dir} to appear (nothing there yet)"
        if not self.run_dir.is_dir():
            raise RunDirUsageError(f"not a run directory (it is a file): {self.run_dir}")
        if any(not p.name.startswith(".") for p in self.run_dir.iterdir()):
            raise RunDirUsageError(f"not a gpuwatch run directory (no {RUN_FILE}): {self.run_dir}")
        return f"waiting for a gpuwatch run to start in {self.run_dir} (the folder is empty)"

    def _add_chunk(self, chunk: SpanChunk) -> list[RunEvent]:
        spans = chunk.spans
        cols = {name: getattr(spans, name) for name, _ in SPAN_COLUMNS}
        for name in _TEXT:  # one shared str per distinct value: a million spans, a few hundred strings
            codes = self._encode(cols[name])
            cols[name] = np.array(self._canon, dtype=object)[codes] if len(codes) else cols[name]
            if name == "name":
                cols["name_code"] = codes
        for rank in np.unique(cols["rank"]).tolist():
            rows = cols["rank"] == rank
            data = self._ranks.setdefault(int(rank), _RankData(int(rank)))
            data.append(chunk, {k: v[rows] for k, v in cols.items()})
        return self._checkpoint_events(cols)

    def _encode(self, values: np.ndarray) -> np.ndarray:
        codes, canon = self._codes, self._canon

        def code(v: str | None) -> int:
            c = codes.get(v)
            if c is None:
                c = codes[v] = len(canon)
                canon.append(v)
            return c

        return np.fromiter((code(v) for v in values.tolist()), dtype=np.int64, count=len(values))

    def _add_samples(self, samples: dict[str, np.ndarray]) -> None:
        if not samples or not len(samples.get("t_ns", ())):
            return
        order = np.argsort(samples["t_ns"], kind="stable")
        rows = zip(
            samples["rank"][order].tolist(),
            samples["metric"][order].tolist(),
            samples["device_index"][order].tolist(),
            samples["pid"][order].tolist(),
            samples["t_ns"][order].tolist(),
            samples["value"][order].tolist(),
            strict=True,
        )
        for rank, metric, device, pid, t, value in rows:
            key = (rank, metric, device, pid)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = deque(maxlen=HISTORY)
            series.append((t, value))

    # ---- events --------------------------------------------------------------------------------
    def _writer_events(self, batch: TailBatch) -> list[RunEvent]:
        out: list[RunEvent] = []
        anchor = batch.anchor_unix_ns
        for w in batch.writers:
            rank, pid = w.run.rank, w.run.pid
            old = self._known.get(w.folder.name)
            if old is None:
                t = (w.run.started_at_unix_ns - anchor) / 1e9
                out.append(RunEvent(t, rank, f"writer started: pid {pid} on {w.run.host} ({w.run.source})"))
            for key, note in sorted(w.notes.items()):
                if old is None or key not in old.notes:
                    when = note.get("t_unix_ns")
                    t_s = (int(when) - anchor) / 1e9 if isinstance(when, int) else None
                    out.append(RunEvent(t_s, rank, f"note {key}: {note.get('message', '')}"))
            if (w.dropped_spans, w.dropped_samples) != (
                (old.dropped_spans, old.dropped_samples) if old else (0, 0)
            ):
                out.append(
                    RunEvent(
                        None,
                        rank,
                        f"writer queue full: dropped {w.dropped_spans} spans, {w.dropped_samples} samples so far",
                    )
                )
            if w.status != "running" and (old is None or old.status == "running"):
                what = "the traced process exited" if w.status == "target_exited" else "writer closed"
                out.append(RunEvent(self._rank_end_s(rank), rank, what))
            self._known[w.folder.name] = w
        return out

    def _checkpoint_events(self, cols: dict[str, np.ndarray]) -> list[RunEvent]:
        """One event per checkpoint (nested checkpoint spans of one save are one event)."""
        out: list[RunEvent] = []
        is_ckpt = (cols["category"] == Category.CHECKPOINT_IO.value) & (cols["stream"] < 0)
        if not is_ckpt.any():
            return out
        for rank in np.unique(cols["rank"][is_ckpt]).tolist():
            idx = np.flatnonzero(is_ckpt & (cols["rank"] == rank))
            starts, ends = iv.union(cols["start_ns"][idx], cols["end_ns"][idx])
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                if s < self._ckpt_end.get(rank, -1):
                    continue  # part of a save already reported (a nested span flushed later)
                inside = idx[(cols["start_ns"][idx] >= s) & (cols["end_ns"][idx] <= e)]
                longest = inside[np.argmax(cols["end_ns"][inside] - cols["start_ns"][inside])]
                step = int(cols["step"][longest])
                where = f" in step {step}" if step >= 0 else ""
                out.append(
                    RunEvent(
                        s / 1e9,
                        int(rank),
                        f"checkpoint {cols['name'][longest]}: {(e - s) / 1e9:.2f} s{where}",
                    )
                )
                self._ckpt_end[rank] = max(self._ckpt_end.get(rank, -1), e)
        return out

    def _rank_end_s(self, rank: int) -> float | None:
        data = self._ranks.get(rank)
        if data is None or data.spans.n == 0:
            return None
        return float(data.spans.get("end_ns").max()) / 1e9

    def _data_end_s(self) -> float | None:
        ends = [e for e in (self._rank_end_s(r) for r in self._ranks) if e is not None]
        return max(ends) if ends else None

    # ---- views ---------------------------------------------------------------------------------
    def view(self, window_steps: int | None, *, force: bool = False) -> LiveView | None:
        """The view for a window (last N steps of every rank, or None: the whole run); None before any
        span.

        The gauges, ranks' activity and run time are fresh on every call after new data. The window's
        Summary is recomputed only when the window moved (a step completed on every rank, a writer ended;
        any new data for the whole run), and while the run grows no faster than keeps that analysis under
        `max_analysis_cpu` of a core; a run that has ended gets its final numbers at once, and `force`
        recomputes now."""
        if not self._ranks:
            return None
        cached = self._views.get(window_steps)
        if cached is not None and cached.version == self.version and not force:
            return cached
        key = self._analysis_key(window_steps)
        done = self._analyses.get(window_steps)
        if done is None or force or (done.key != key and (self.ended or self._due(done))):
            t0 = time.thread_time()  # this thread's CPU: the screen's own thread does not count here
            summary, label = self._analyse(window_steps)
            done = _Analysis(key, summary, label, time.thread_time() - t0, time.monotonic())
            self._analyses[window_steps] = done
            self.analyses += 1
        view = LiveView(
            run_dir=str(self.run_dir),
            run_id=self.run_id,
            window_steps=window_steps,
            window_label=done.label,
            summary=done.summary,
            ranks=tuple(
                RankLive(rank=r, steps_seen=d.steps.n, doing=d.doing, status=self._rank_status(r))
                for r, d in sorted(self._ranks.items())
            ),
            gpus=self._gpu_rows(),
            procs=self._proc_rows(),
            ended=self.ended,
            data_s=self._data_end_s() or 0.0,
            version=self.version,
        )
        self._views[window_steps] = view
        return view

    def _due(self, done: _Analysis) -> bool:
        return time.monotonic() - done.at_s >= done.cost_s / self.max_analysis_cpu

    def _analysis_key(self, window_steps: int | None) -> tuple[Any, ...]:
        """What the window's Summary depends on: when it is unchanged, so is the Summary."""
        statuses = tuple(w.status for w in self.writers)
        if window_steps is None:
            return (self.version, statuses)
        lasts = [d.step_table()[0][-1:].tolist() for d in self._ranks.values()]
        no_steps = tuple(d.spans.n for d in self._ranks.values() if d.steps.n == 0)
        return (min((x[0] for x in lasts if x), default=-1), len(self._ranks), no_steps, statuses)

    def _analyse(self, window_steps: int | None) -> tuple[Summary | None, str]:
        rank_cols, label, from_start = self._window_columns(window_steps)
        # warm-up is the start of a run: a window that begins later keeps its slow first steps
        # (a checkpoint there is not warm-up); the whole run leaves warm-up out as `summary` does
        try:
            analysis = analyze_columns(
                self.run_dir, self.run_id, list(self.writers), rank_cols, include_warmup=not from_start
            )
            summary = summarize(analysis)
        except RunDirError:  # no rank has a span in the window yet
            return None, label
        # the label counts the steps the budget has (the engine may leave out a partial first step)
        steps = {s for rs in summary.ranks if rs.per_step is not None for s in rs.per_step.step}
        if steps and window_steps is None:
            label = f"whole run ({len(steps)} steps)"
        elif steps:
            label = f"last {len(steps)} step{'s' if len(steps) != 1 else ''} ({min(steps)}-{max(steps)})"
        return summary, label

    def _window_columns(self, window_steps: int | None) -> tuple[dict[int, SpanColumns], str, bool]:
        """Each rank's spans of the window, its label, and whether it starts where the run starts."""
        if window_steps is None:
            steps = max((d.step_table()[0].size for d in self._ranks.values()), default=0)
            return {r: d.columns() for r, d in self._ranks.items()}, f"whole run ({steps} steps)", True
        tables = {r: d.step_table() for r, d in self._ranks.items()}
        with_ids = [t[0] for t in tables.values() if t[0].size]
        # the same step ids on every rank (cross-rank matching needs both sides), up to the slowest rank's
        last = min(int(ids[-1]) for ids in with_ids) if with_ids else -1
        first = last - window_steps + 1
        out: dict[int, SpanColumns] = {}
        shown: set[int] = set()
        for rank, data in self._ranks.items():
            ids, starts, ends = tables[rank]
            if ids.size == 0:  # no step markers: the rank is one long step, shown whole
                out[rank] = data.columns()
                continue
            pick = (ids >= first) & (ids <= last)
            if not pick.any():
                continue
            shown.update(ids[pick].tolist())
            t0, t1 = int(starts[pick].min()), int(ends[pick].max())
            s, e = data.spans.get("start_ns"), data.spans.get("end_ns")
            kind = data.spans.get("kind")
            inside = (e > t0) & (s < t1)
            # step markers of steps outside the window that touch its edges must not join it
            outside_step = (kind == SpanKind.STEP.value) & ((s < t0) | (s >= t1))
            out[rank] = data.columns(np.flatnonzero(inside & ~outside_step))
        if not shown:
            return out, "no steps yet", True
        from_start = all(t[0].size == 0 or int(t[0][0]) >= first for t in tables.values())
        label = f"last {len(shown)} step{'s' if len(shown) != 1 else ''} ({min(shown)}-{max(shown)})"
        return out, label, from_start

    def _rank_status(self, rank: int) -> str:
        states = [w.status for w in self.writers if w.run.rank == rank]
        return "running" if "running" in states else (states[-1] if states else "unknown")

    def _last(self, rank: int, metric: str, device: int, pid: int) -> float | None:
        series = self._series.get((rank, metric, device, pid))
        if not series:
            return None
        value = series[-1][1]
        return None if value != value else value  # NaN: not available

    def _gpu_rows(self) -> tuple[GpuRow, ...]:
        rows = []
        for rank, metric, device, pid in sorted(self._series):
            if metric != "gpu_util_pct" or pid != 0:
                continue
            history = tuple(v for _, v in self._series[(rank, metric, device, pid)] if v == v)
            rows.append(
                GpuRow(
                    rank=rank,
                    device_index=device,
                    util_pct=self._last(rank, "gpu_util_pct", device, 0),
                    mem_used_bytes=self._last(rank, "mem_used_bytes", device, 0),
                    mem_total_bytes=self._last(rank, "mem_total_bytes", device, 0),
                    power_mw=self._last(rank, "power_mw", device, 0),
                    util_history=history,
                )
            )
        return tuple(rows)

    def _proc_rows(self) -> tuple[ProcRow, ...]:
        rows = []
        for rank, metric, device, pid in sorted(self._series):
            if metric != "proc_cpu_pct" and not (
                metric == "rss_bytes" and (rank, "proc_cpu_pct", -1, pid) not in self._series
            ):
                continue
            series = self._series.get((rank, "proc_cpu_pct", device, pid), ())
            rows.append(
                ProcRow(
                    rank=rank,
                    pid=pid,
                    cpu_pct=self._last(rank, "proc_cpu_pct", -1, pid),
                    rss_bytes=self._last(rank, "rss_bytes", -1, pid),
                    children=self._last(rank, "child_count", -1, pid),
                    children_cpu_pct=self._last(rank, "children_cpu_pct", -1, pid),
                    children_rss_bytes=self._last(rank, "children_rss_bytes", -1, pid),
                    read_bytes_per_s=self._rate(rank, "io_read_bytes_total", pid),
                    write_bytes_per_s=self._rate(rank, "io_write_bytes_total", pid),
                    cpu_history=tuple(v for _, v in series if v == v),
                )
            )
        return tuple(rows)

    def _rate(self, rank: int, metric: str, pid: int) -> float | None:
        series = self._series.get((rank, metric, -1, pid))
        if not series or len(series) < 2:
            return None
        (t1, v1), (t2, v2) = series[-2], series[-1]
        if t2 <= t1 or v1 != v1 or v2 != v2:
            return None
        return (v2 - v1) / ((t2 - t1) / 1e9)
