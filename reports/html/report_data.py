"""What an HTML report shows, gathered from a run directory: the typed Summary, the time series the run
recorded (NVML, /proc), and the spans of a few representative steps for the timeline.

Everything large is bounded here, before any figure is built: time series are averaged into at most
`SERIES_MAX_POINTS` buckets per line, the timeline reads only the spans of a few steps on a few ranks and
merges them into at most `TIMELINE_MAX_BARS` bars; each says what it left out, and the page says it too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpuwatch.attribution import intervals as iv
from gpuwatch.attribution.budget import compute_rank_budget
from gpuwatch.attribution.summary import CATEGORY_NAMES, Summary, load_summary
from gpuwatch.records import DEVICE_KINDS, SPAN_COLUMNS, Category, SpanColumns, SpanKind
from gpuwatch.store.run_reader import RunReader

DEFAULT_GPU_HOUR_PRICE_USD = 2.50
"""Stated in the page; `--gpu-hour-price` changes it."""
SERIES_MAX_POINTS = 1500
TIMELINE_STEPS = 3
TIMELINE_MAX_RANKS = 4
TIMELINE_MAX_BARS = 4000
TIMELINE_MAX_THREADS = 6
"""Host threads drawn per rank besides the training thread (the busiest in the window)."""

# metric -> (panel title, unit, scale to that unit, device or host)
PANELS: dict[str, tuple[str, str, float, str]] = {
    "gpu_util_pct": ("GPU utilization (NVML)", "%", 1.0, "device"),
    "mem_used_bytes": ("GPU memory used", "GiB", 1 / 2**30, "device"),
    "power_mw": ("GPU power", "W", 1e-3, "device"),
    "proc_cpu_pct": ("Training process CPU (100 = one core)", "%", 1.0, "host"),
    "children_cpu_pct": ("Child processes CPU (DataLoader workers)", "%", 1.0, "host"),
    "rss_bytes": ("Training process resident memory", "GiB", 1 / 2**30, "host"),
    "io_read_bytes_total": ("Storage read rate", "MB/s", 1e-6, "host"),
    "io_write_bytes_total": ("Storage write rate", "MB/s", 1e-6, "host"),
}
_RATE_METRICS = {"io_read_bytes_total", "io_write_bytes_total"}  # cumulative counters: shown as rates


@dataclass(frozen=True, slots=True)
class Series:
    """One line of a time series."""

    label: str
    t_s: tuple[float, ...]
    """Seconds since the run's first record."""
    value: tuple[float | None, ...]
    """In the panel's unit; None where the source could not measure (a gap, never 0)."""


@dataclass(frozen=True, slots=True)
class MetricPanel:
    metric: str
    title: str
    unit: str
    group: str
    """"device" or "host"."""
    series: tuple[Series, ...]
    points_total: int
    points_shown: int


@dataclass(frozen=True, slots=True)
class TimelineLane:
    """One row of the timeline: a rank's budget (what gpuwatch decided at each instant), a host thread
    or a device stream. Times in milliseconds from the window's start."""

    rank: int
    label: str
    start_ms: np.ndarray
    end_ms: np.ndarray
    category: np.ndarray
    """Budget category of each bar (object array of str)."""
    name: np.ndarray
    """What the bar is: a span name, or "N spans: top names" for merged bars (object array of str)."""


@dataclass(frozen=True, slots=True)
class Timeline:
    steps: tuple[int, ...]
    """Step ids shown."""
    ranks: tuple[int, ...]
    ranks_total: int
    origin_ns: int
    """Time 0 of the x axis, on the run's timeline."""
    step_bounds_ms: tuple[tuple[int, int, float, float], ...]
    """(rank, step, start_ms, end_ms) of the steps shown."""
    lanes: tuple[TimelineLane, ...]
    spans_in_window: int
    bars_shown: int
    bars_dropped: int
    """Bars left out (the shortest) to keep the figure drawable."""
    merged: bool
    """True when spans closer than a pixel were merged into one bar (the run is large)."""


@dataclass(frozen=True, slots=True)
class RunReport:
    summary: Summary
    run_dir: str
    sources: tuple[str, ...]
    """How the data was collected: import, watch, attach."""
    devices: tuple[str, ...]
    panels: tuple[MetricPanel, ...] = ()
    timeline: Timeline | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    """What could not be read (the report is still written)."""


def load_report(run_dir: str | os.PathLike[str]) -> RunReport:
    """Everything the report of one run shows. Raises RunDirError / RunDirUsageError like `summary`."""
    summary = load_summary(run_dir)
    reader = RunReader(Path(run_dir))
    try:
        sources = tuple(sorted({w.run.source for w in reader.writers}))
        devices = tuple(
            sorted({str(d) for w in reader.writers for d in (w.run.meta or {}).get("devices", []) or []})
        )
        return RunReport(
            summary=summary,
            run_dir=str(Path(run_dir)),
            sources=sources,
            devices=devices,
            panels=tuple(metric_panels(reader)),
            timeline=load_timeline(reader, summary),
        )
    finally:
        reader.close()


# ---- time series ----------------------------------------------------------------------------------


def metric_panels(reader: RunReader) -> list[MetricPanel]:
    """The panels of the metrics this run recorded, each line averaged into `SERIES_MAX_POINTS` buckets."""
    present = {row[0] for row in reader.query("SELECT DISTINCT metric FROM samples").fetchall()}
    if not present:
        return []
    t0 = reader.query("SELECT min(t_ns) FROM samples").fetchone()[0] or 0
    panels = []
    for metric, (title, unit, scale, group) in PANELS.items():
        if metric not in present:
            continue
        data = reader.samples(metric)
        keys = np.stack([data["rank"].astype(np.int64), data["device_index"].astype(np.int64)], axis=1)
        series = []
        total = shown = 0
        for rank, device in sorted({(int(r), int(d)) for r, d in keys.tolist()}):
            sel = (keys[:, 0] == rank) & (keys[:, 1] == device)
            t = (data["t_ns"][sel].astype(np.int64) - t0) / 1e9
            v = data["value"][sel].astype(np.float64) * scale
            if metric in _RATE_METRICS:
                t, v = _rate(t, v)
            total += t.size
            t, v = _buckets(t, v, SERIES_MAX_POINTS)
            shown += t.size
            label = f"rank {rank}" + (f" · GPU {device}" if group == "device" and device >= 0 else "")
            series.append(
                Series(
                    label=label,
                    t_s=tuple(round(float(x), 3) for x in t),
                    value=tuple(None if np.isnan(x) else round(float(x), 4) for x in v),
                )
            )
        if series:
            panels.append(MetricPanel(metric, title, unit, group, tuple(series), total, shown))
    return panels


def _rate(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A cumulative counter as a per-second rate between consecutive samples."""
    if t.size < 2:
        return t[:0], v[:0]
    dt = np.diff(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(dt > 0, np.diff(v) / dt, np.nan)
    return t[1:], np.where(rate < 0, np.nan, rate)  # a counter that went back (process restarted)


def _buckets(t: np.ndarray, v: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `limit` points: the mean time and the mean of the measured values of equal-count buckets
    (NaN when a bucket measured nothing)."""
    if t.size <= limit:
        return t, v
    edges = np.linspace(0, t.size, limit + 1).astype(np.int64)
    starts = edges[:-1]
    counts = np.diff(edges)
    t_mean = np.add.reduceat(t, starts) / counts
    ok = ~np.isnan(v)
    sums = np.add.reduceat(np.where(ok, v, 0.0), starts)
    n_ok = np.add.reduceat(ok.astype(np.int64), starts)
    with np.errstate(divide="ignore", invalid="ignore"):
        return t_mean, np.where(n_ok > 0, sums / n_ok, np.nan)


# ---- timeline --------------------------------------------------------------------------------------


def timeline_ranks(summary: Summary) -> list[int]:
    """The ranks the timeline shows: all when few, else the rank others wait for, rank 0, the slowest and
    the fastest."""
    ranks = [r.rank for r in summary.ranks]
    if len(ranks) <= TIMELINE_MAX_RANKS:
        return ranks
    by_time = sorted(summary.ranks, key=lambda r: r.step_time_ms.mean)
    picks = [
        summary.straggler.rank if summary.straggler else None,
        ranks[0],
        by_time[-1].rank,
        by_time[0].rank,
    ]
    out: list[int] = []
    for p in picks + ranks:
        if p is not None and p not in out:
            out.append(p)
    return out[:TIMELINE_MAX_RANKS]


def representative_steps(summary: Summary, rank: int) -> list[int]:
    """The step whose wall time is the median of the rank's, with its neighbours: `TIMELINE_STEPS` steps."""
    ps = summary.rank(rank).per_step
    if ps is None or not ps.step:
        return []
    walls = np.asarray(ps.wall_ms)
    mid = int(np.argsort(walls, kind="stable")[walls.size // 2])
    lo = max(0, min(mid - TIMELINE_STEPS // 2, len(ps.step) - TIMELINE_STEPS))
    return list(ps.step[lo : lo + TIMELINE_STEPS])


def load_timeline(reader: RunReader, summary: Summary) -> Timeline | None:
    """The spans of a few representative steps on a few ranks, as lanes of bars by budget category."""
    ranks = timeline_ranks(summary)
    if not ranks:
        return None
    steps = representative_steps(summary, ranks[0])
    bounds: list[tuple[int, int, int, int]] = []
    for rank in ranks:
        rs = summary.rank(rank)
        if rs.steps_from_markers and steps:
            rows = reader.query(
                "SELECT step, min(start_ns), max(end_ns) FROM spans WHERE rank = ? AND kind = ? AND tid = ? "
                f"AND step IN ({', '.join('?' * len(steps))}) GROUP BY step ORDER BY 2",
                [rank, SpanKind.STEP.value, rs.training_tid, *steps],
            ).fetchall()
            bounds.extend((rank, int(s), int(a), int(b)) for s, a, b in rows)
        else:  # one step: the whole rank
            a, b = reader.query(
                "SELECT min(start_ns), max(end_ns) FROM spans WHERE rank = ?", [rank]
            ).fetchone()
            if a is not None:
                bounds.append(
                    (rank, int(rs.per_step.step[0]) if rs.per_step and rs.per_step.step else 0, a, b)
                )
    if not bounds:
        return None
    lo = min(b[2] for b in bounds)
    hi = max(b[3] for b in bounds)
    shown_ranks = sorted({b[0] for b in bounds}, key=ranks.index)
    per_rank = {rank: window_columns(reader, rank, lo, hi) for rank in shown_ranks}
    in_window = sum(int((c.kind != SpanKind.STEP.value).sum()) for c in per_rank.values())
    merge_gap_ns = (hi - lo) // 2000 if in_window > TIMELINE_MAX_BARS else 0
    lanes: list[TimelineLane] = []
    for rank in shown_ranks:
        lanes.extend(_rank_lanes(rank, per_rank[rank], summary, lo, merge_gap_ns))
    before = sum(int(lane.start_ms.size) for lane in lanes)
    lanes = _cap_bars(lanes, TIMELINE_MAX_BARS)
    shown = sum(int(lane.start_ms.size) for lane in lanes)
    return Timeline(
        steps=tuple(sorted({b[1] for b in bounds})),
        ranks=tuple(shown_ranks),
        ranks_total=len(summary.ranks),
        origin_ns=lo,
        step_bounds_ms=tuple((r, s, (a - lo) / 1e6, (b - lo) / 1e6) for r, s, a, b in bounds),
        lanes=tuple(lanes),
        spans_in_window=in_window,
        bars_shown=shown,
        bars_dropped=before - shown,
        merged=merge_gap_ns > 0,
    )


def window_columns(reader: RunReader, rank: int, lo: int, hi: int) -> SpanColumns:
    """Every span of `rank` that overlaps [lo, hi), as columns (attrs left out)."""
    select = []
    for name, _ in SPAN_COLUMNS:
        if name in ("step", "bytes", "correlation", "seq"):
            select.append(f"coalesce({name}, -1) AS {name}")
        elif name != "attrs":
            select.append(f'"{name}"')
    data = reader.query(
        f"SELECT {', '.join(select)} FROM spans WHERE rank = ? AND end_ns > ? AND start_ns < ? "
        "ORDER BY start_ns, end_ns DESC",
        [rank, lo, hi],
    ).fetchnumpy()
    cols: dict[str, Any] = {}
    for name, _ in SPAN_COLUMNS:
        if name == "attrs":
            cols[name] = np.full(len(data["start_ns"]), None, dtype=object)
            continue
        arr = data[name]
        if isinstance(arr, np.ma.MaskedArray):
            if arr.dtype == object:
                out = np.array(arr.data, dtype=object)
                out[np.ma.getmaskarray(arr)] = None
                arr = out
            else:
                arr = np.asarray(arr.filled(-1))
        cols[name] = (
            np.asarray(arr) if name not in ("kind", "category", "name") else np.asarray(arr, dtype=object)
        )
    return SpanColumns(**cols)


def _display_category(cols: SpanColumns, device_mode: bool) -> np.ndarray:
    """The budget category each raw span stands for, as the engine would count it: device work by kind,
    host spans by their category; host math on a GPU rank is host overhead, uncategorized host work too."""
    cat = np.array(cols.category, dtype=object)
    is_device = np.isin(cols.kind, DEVICE_KINDS) & (cols.stream >= 0)
    for kind, device_cat in (
        (SpanKind.KERNEL.value, Category.COMPUTE.value),
        (SpanKind.COLLECTIVE.value, Category.SYNC.value),
        (SpanKind.MEMCPY.value, Category.MEMCPY.value),
        (SpanKind.MEMSET.value, Category.MEMCPY.value),
    ):
        cat[is_device & (cols.kind == kind)] = device_cat
    unknown = np.array([c not in CATEGORY_NAMES for c in cat.tolist()], dtype=bool)
    cat[unknown & ~is_device] = Category.HOST_OVERHEAD.value
    if device_mode:
        cat[~is_device & (cat == Category.COMPUTE.value)] = Category.HOST_OVERHEAD.value
    return cat


def _rank_lanes(rank: int, cols: SpanColumns, summary: Summary, lo: int, gap_ns: int) -> list[TimelineLane]:
    rs = summary.rank(rank)
    lanes = []
    budget = compute_rank_budget(rank, cols) if len(cols) else None
    if budget is not None and budget.timeline.points.size > 1:
        pts, seg = budget.timeline.points, budget.timeline.category
        keep = seg >= 0
        s, e, c = pts[:-1][keep], pts[1:][keep], seg[keep]
        if gap_ns > 0:  # a large window: what each pixel-wide slice of time mostly was
            s, e, c = _bin_categories(s, e, c, gap_ns)
        # consecutive segments of one category are one bar
        new = np.ones(c.size, dtype=bool)
        new[1:] = (c[1:] != c[:-1]) | (s[1:] != e[:-1])
        first = np.flatnonzero(new)
        last = np.append(first[1:] - 1, c.size - 1)
        cats = np.array(CATEGORY_NAMES, dtype=object)[c[first]]
        lanes.append(
            _lane(
                rank, f"rank {rank} · budget", s[first], e[last], cats, cats.copy(), lo, gap_ns, merge=False
            )
        )
    drawn = ~np.isin(
        cols.kind, [SpanKind.STEP.value, SpanKind.PYTHON_FRAME.value, SpanKind.GPU_ANNOTATION.value]
    )
    cat = _display_category(cols, rs.mode == "device")
    host = drawn & (cols.stream < 0)
    device = drawn & (cols.stream >= 0)
    tids, inverse = np.unique(cols.tid[host], return_inverse=True)
    busy = np.bincount(inverse, weights=(cols.end_ns[host] - cols.start_ns[host]).astype(np.float64))
    order = [t for _, t in sorted(zip(-busy, tids.tolist()))]
    others = [t for t in order if t != rs.training_tid][:TIMELINE_MAX_THREADS]
    for tid in ([rs.training_tid] if rs.training_tid in order else []) + others:
        m = host & (cols.tid == tid)
        label = f"rank {rank} · thread {tid}" + (" (training)" if tid == rs.training_tid else "")
        lanes.append(_lane(rank, label, cols.start_ns[m], cols.end_ns[m], cat[m], cols.name[m], lo, gap_ns))
    for dev, stream in sorted(
        {(int(d), int(s)) for d, s in zip(cols.device_index[device], cols.stream[device])}
    ):
        m = device & (cols.device_index == dev) & (cols.stream == stream)
        label = f"rank {rank} · GPU {dev} stream {stream}"
        lanes.append(_lane(rank, label, cols.start_ns[m], cols.end_ns[m], cat[m], cols.name[m], lo, gap_ns))
    return lanes


def _lane(
    rank: int,
    label: str,
    start: np.ndarray,
    end: np.ndarray,
    cat: np.ndarray,
    name: np.ndarray,
    lo: int,
    gap_ns: int,
    *,
    merge: bool = True,
) -> TimelineLane:
    start, end = start.astype(np.int64), end.astype(np.int64)
    names = np.array([str(n) for n in name.tolist()], dtype=object)
    if merge and gap_ns > 0 and start.size:
        start, end, cat, names = _merge_close(start, end, np.asarray(cat, dtype=object), names, gap_ns)
    return TimelineLane(
        rank=rank,
        label=label,
        start_ms=(start - lo) / 1e6,
        end_ms=(end - lo) / 1e6,
        category=np.asarray(cat, dtype=object),
        name=names,
    )


def _merge_close(
    start: np.ndarray, end: np.ndarray, cat: np.ndarray, name: np.ndarray, gap_ns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per category, spans closer than `gap_ns` (overlapping ones too) become one bar named after how many
    it holds and its longest span."""
    out: list[tuple[np.ndarray, ...]] = []
    for c in sorted(set(cat.tolist())):
        m = np.flatnonzero(cat == c)
        m = m[np.argsort(start[m], kind="stable")]
        s, e = start[m], end[m]
        run_end = np.maximum.accumulate(e)
        new = np.ones(s.size, dtype=bool)
        new[1:] = s[1:] > run_end[:-1] + gap_ns
        group = np.cumsum(new) - 1
        first = np.flatnonzero(new)
        g_end = np.maximum.reduceat(e, first)
        counts = np.bincount(group)
        longest = m[np.lexsort((-(e - s), group))][first]  # per group, the longest span first
        labels = np.array(
            [str(name[i]) if k == 1 else f"{k} spans, longest: {name[i]}" for i, k in zip(longest, counts)],
            dtype=object,
        )
        out.append((s[first], g_end, np.full(first.size, c, dtype=object), labels))
    return tuple(np.concatenate(parts) for parts in zip(*out))  # type: ignore[return-value]


def _bin_categories(
    s: np.ndarray, e: np.ndarray, c: np.ndarray, width_ns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A budget timeline (disjoint segments, category index each) resampled to slices of `width_ns`: each
    slice is the category that covers most of it (slices nothing covers are left out)."""
    edges = np.arange(int(s.min()), int(e.max()) + width_ns, width_ns, dtype=np.int64)
    b_s, b_e = edges[:-1], edges[1:]
    cover = np.zeros((len(CATEGORY_NAMES), b_s.size), dtype=np.int64)
    for k in np.unique(c).tolist():
        m = c == k
        cover[k] = iv.overlap((s[m], e[m]), b_s, b_e)
    covered = cover.sum(axis=0) > 0
    return b_s[covered], np.minimum(b_e[covered], int(e.max())), np.argmax(cover, axis=0)[covered]


def _cap_bars(lanes: list[TimelineLane], limit: int) -> list[TimelineLane]:
    """Keep the `limit` longest bars (budget rows always whole), the rest of the raw spans dropped."""
    is_budget = [lane.label.endswith("· budget") for lane in lanes]
    total = sum(int(lane.start_ms.size) for lane in lanes)
    if total <= limit:
        return lanes
    raw_limit = max(limit - sum(int(lane.start_ms.size) for lane, b in zip(lanes, is_budget) if b), 0)
    lengths = np.concatenate(
        [lane.end_ms - lane.start_ms for lane, b in zip(lanes, is_budget) if not b] or [[]]
    )
    if lengths.size <= raw_limit:
        return lanes
    cut = np.sort(lengths)[::-1][raw_limit - 1] if raw_limit else np.inf
    out = []
    budget = raw_limit
    for lane, whole in zip(lanes, is_budget):
        if whole:
            out.append(lane)
            continue
        keep = np.flatnonzero((lane.end_ms - lane.start_ms) >= cut)[:budget]
        budget -= keep.size
        out.append(
            TimelineLane(
                rank=lane.rank,
                label=lane.label,
                start_ms=lane.start_ms[keep],
                end_ms=lane.end_ms[keep],
                category=lane.category[keep],
                name=lane.name[keep],
            )
        )
    return out
