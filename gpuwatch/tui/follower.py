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
from gpuwatch.tui.gauges import DEVICE_METRICS, PROC_METRICS, Gauges, GpuRow, ProcRow
from gpuwatch.tui.rank_spans import RankSpans

_TEXT = ("kind", "category", "name")


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One line of the event log."""

    t_s: float | None
    """Seconds since the run's start (its earliest anchor); None when unknown."""
    rank: int | None
    text: str


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
        self._ranks: dict[int, RankSpans] = {}
        self._codes: dict[str | None, int] = {}
        self._canon: list[str | None] = []
        self.gauges = Gauges()
        self._known: dict[str, WriterInfo] = {}
        self._ckpt_end: dict[int, int] = {}
        self._said_ended = False
        self._said_skipped: set[str] = set()
        self._views: dict[int | None, LiveView] = {}
        self._deferred: set[int | None] = set()
        """Windows whose analysis is behind their data, waiting to be due: looked at again on every call, new
        data or not (a run that pauses must still get its last steps on screen)."""
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
            self.gauges.shift(batch.anchor_moved_ns)
        self.anchor_unix_ns = batch.anchor_unix_ns
        events: list[RunEvent] = []
        for chunk in batch.chunks:
            events.extend(self._add_chunk(chunk))
        self.gauges.add(batch.samples)
        events.extend(self._writer_events(batch))  # after the spans: a closed writer's end is their end
        for line in batch.skipped:  # a damaged run: what of it cannot be read, said once
            if line not in self._said_skipped:
                self._said_skipped.add(line)
                events.append(RunEvent(None, None, f"skipped: {line}"))
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
            data = self._ranks.setdefault(int(rank), RankSpans(int(rank)))
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
        recomputes now; an analysis put off is made once due, whether or not more data came."""
        if not self._ranks:
            return None
        cached = self._views.get(window_steps)
        fresh = cached is not None and cached.version == self.version and window_steps not in self._deferred
        if fresh and not force:
            assert cached is not None
            return cached
        key = self._analysis_key(window_steps)
        done = self._analyses.get(window_steps)
        if done is None or force or (done.key != key and (self.ended or self._due(done))):
            t0 = time.thread_time()  # this thread's CPU: the screen's own thread does not count here
            summary, label = self._analyse(window_steps)
            done = _Analysis(key, summary, label, time.thread_time() - t0, time.monotonic())
            self._analyses[window_steps] = done
            self.analyses += 1
        if done.key != key:
            self._deferred.add(window_steps)
        else:
            self._deferred.discard(window_steps)
        if cached is not None and cached.version == self.version and cached.summary is done.summary:
            return cached  # nothing moved since: the same view, so the screen is not drawn again
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
            gpus=self.gauges.gpu_rows(),
            procs=self.gauges.proc_rows(),
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
            rows = data.rows_overlapping(t0, t1)
            s, kind = data.spans.get("start_ns")[rows], data.spans.get("kind")[rows]
            # step markers of steps outside the window that touch its edges must not join it
            outside_step = (kind == SpanKind.STEP.value) & ((s < t0) | (s >= t1))
            out[rank] = data.columns(rows[~outside_step])
        if not shown:
            return out, "no steps yet", True
        from_start = all(t[0].size == 0 or int(t[0][0]) >= first for t in tables.values())
        label = f"last {len(shown)} step{'s' if len(shown) != 1 else ''} ({min(shown)}-{max(shown)})"
        return out, label, from_start

    def _rank_status(self, rank: int) -> str:
        states = [w.status for w in self.writers if w.run.rank == rank]
        return "running" if "running" in states else (states[-1] if states else "unknown")
