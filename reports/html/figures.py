"""The report's numbers and plotly figures, as plain dicts (`{"data": [...], "layout": {...}}`).

Pure functions of a `Summary` (and of the bounded time series and timeline `report_data` gathered): no I/O,
no plotly import, so the golden tests check exactly what the page draws. Names that come from a trace are
HTML-escaped where plotly would render them (hover text), so `<script>` in a kernel name is shown as text.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuwatch.attribution.overview import ROLES
from gpuwatch.attribution.summary import CATEGORY_NAMES, RankSummary, Summary
from reports.html.report_data import MetricPanel, Timeline

CATEGORY_COLORS: dict[str, str] = {
    "compute": "#2e9d57",
    "data_loading": "#3b7dd8",
    "cpu_preprocessing": "#8e6bd1",
    "sync": "#e0823d",
    "checkpoint_io": "#c94c4c",
    "memcpy": "#d6b23a",
    "host_overhead": "#7f8c99",
    "unattributed": "#c8cdd3",
}
CATEGORY_LABELS: dict[str, str] = {
    "compute": "compute",
    "data_loading": "data loading",
    "cpu_preprocessing": "CPU preprocessing",
    "sync": "sync",
    "checkpoint_io": "checkpoint I/O",
    "memcpy": "memcpy",
    "host_overhead": "host overhead",
    "unattributed": "unattributed",
}
ROLE_COLORS: dict[str, str] = {
    "kernel": "#2e9d57",
    "memcpy": "#d6b23a",
    "memset": "#a8862a",
    "communication": "#e0823d",
    "runtime": "#8e6bd1",
    "dataloader": "#3b7dd8",
    "cpu_exec": "#7f8c99",
    "other": "#c8cdd3",
}
ROLE_LABELS: dict[str, str] = {
    "kernel": "Kernel",
    "memcpy": "Memcpy",
    "memset": "Memset",
    "communication": "Communication",
    "runtime": "Runtime",
    "dataloader": "DataLoader",
    "cpu_exec": "CPU Exec",
    "other": "Other",
}
TEMPORAL_COLORS = {"compute": "#2e9d57", "non_compute": "#e0823d", "idle": "#c8cdd3"}
STEP_BARS_MAX = 300
"""Per-step bars drawn per rank; longer runs are averaged over groups of consecutive steps."""
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

Figure = dict[str, Any]


def layout(**kw: Any) -> dict[str, Any]:
    """The look every figure shares; `kw` adds to it (nested dicts replace)."""
    base: dict[str, Any] = {
        "font": {"family": FONT, "size": 12, "color": "#1f2933"},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "#ffffff",
        "margin": {"l": 60, "r": 20, "t": 30, "b": 40},
        "legend": {
            "orientation": "h",
            "y": 1.02,
            "yanchor": "bottom",
            "x": 0,
            "font": {"size": 11},
            "traceorder": "normal",
        },
        "hoverlabel": {"font": {"family": FONT, "size": 12}},
        "xaxis": {"gridcolor": "#e6e9ee", "zerolinecolor": "#c9ced6"},
        "yaxis": {"gridcolor": "#e6e9ee", "zerolinecolor": "#c9ced6"},
    }
    base.update(kw)
    return base


def escape(text: object) -> str:
    """A name from a trace as plotly text: HTML-escaped (plotly renders a few tags), shown literally."""
    return html.escape(str(text), quote=True)


# ---- headline and what-if -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Headline:
    """The numbers at the top of the page, over every rank of the run (step-weighted)."""

    compute_pct: float
    idle_pct: float
    median_step_ms: float
    gpu_hours_lost_per_1000: float
    usd_lost_per_1000: float
    gpu_hour_price_usd: float
    top_category: str | None
    top_pct: float
    ranks: int
    steps: int
    device_mode: bool
    """False when no rank has device events (compute is the training thread's math)."""


def job_budget_ms(summary: Summary) -> dict[str, float]:
    """Mean milliseconds per step per category over every rank (weighted by each rank's steps)."""
    steps = sum(r.steps for r in summary.ranks)
    if not steps:
        return dict.fromkeys(CATEGORY_NAMES, 0.0)
    return {
        c: sum(r.budget_ms_per_step.get(c) * r.steps for r in summary.ranks) / steps for c in CATEGORY_NAMES
    }


def job_budget_pct(summary: Summary) -> dict[str, float]:
    ms = job_budget_ms(summary)
    total = sum(ms.values()) or 1.0
    return {c: 100.0 * v / total for c, v in ms.items()}


def headline(summary: Summary, gpu_hour_price_usd: float) -> Headline:
    pct = job_budget_pct(summary)
    idle = 100.0 - pct["compute"] if any(pct.values()) else 0.0
    walls = [w for r in summary.ranks if r.per_step for w in r.per_step.wall_ms]
    median = (
        float(np.median(walls))
        if walls
        else float(np.median([r.step_time_ms.median for r in summary.ranks] or [0]))
    )
    idle_cats = sorted(((v, c) for c, v in pct.items() if c != "compute" and v > 0), reverse=True)
    lost = 10.0 * idle  # GPU-hours per 1,000: idle percent of 1,000 hours
    return Headline(
        compute_pct=pct["compute"],
        idle_pct=idle,
        median_step_ms=median,
        gpu_hours_lost_per_1000=lost,
        usd_lost_per_1000=lost * gpu_hour_price_usd,
        gpu_hour_price_usd=gpu_hour_price_usd,
        top_category=idle_cats[0][1] if idle_cats else None,
        top_pct=idle_cats[0][0] if idle_cats else 0.0,
        ranks=len(summary.ranks),
        steps=sum(r.steps for r in summary.ranks),
        device_mode=any(r.mode == "device" for r in summary.ranks),
    )


def saving_label(category: str, rank: int | None) -> str:
    return f"{CATEGORY_LABELS.get(category, category)} · " + ("all ranks" if rank is None else f"rank {rank}")


def whatif_figure(summary: Summary) -> Figure | None:
    """Speed-up if each idle category went to zero, largest first (upper bounds)."""
    savings = list(summary.savings)
    if not savings:
        return None
    savings.reverse()  # plotly draws the first category at the bottom
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "y": [saving_label(s.category, s.rank) for s in savings],
                "x": [round(s.speedup - 1.0, 4) for s in savings],
                "base": 1.0,
                "marker": {"color": [CATEGORY_COLORS.get(s.category, "#999") for s in savings]},
                "text": [f"{s.speedup:.2f}x · {s.step_time_ms_after:.1f} ms/step" for s in savings],
                "textposition": "outside",
                "cliponaxis": False,
                "hovertext": [
                    f"{saving_label(s.category, s.rank)}<br>step time after: {s.step_time_ms_after:.2f} ms"
                    f"<br>speed-up: {s.speedup:.3f}x<br>GPU-hours saved per 1,000: "
                    f"{s.gpu_hours_saved_per_1000:.1f}"
                    for s in savings
                ],
                "hoverinfo": "text",
                "showlegend": False,
            }
        ],
        "layout": layout(
            height=80 + 28 * len(savings),
            margin={"l": 200, "r": 150, "t": 30, "b": 40},
            xaxis={
                "title": {"text": "speed-up of the mean step if the category took no time"},
                "gridcolor": "#e6e9ee",
                "range": [1.0, 1.0 + 1.15 * max(s.speedup - 1.0 for s in savings)],
                "ticksuffix": "x",
            },
            yaxis={"automargin": True},
        ),
    }


# ---- budget ----------------------------------------------------------------------------------------


def step_budget_figure(rank: RankSummary) -> tuple[Figure | None, int]:
    """Stacked milliseconds per category for every step of a rank; returns the figure and how many
    consecutive steps each bar averages (1 unless the rank has more than `STEP_BARS_MAX` steps)."""
    ps = rank.per_step
    if ps is None or not ps.step:
        return None, 1
    n = len(ps.step)
    group = max(1, -(-n // STEP_BARS_MAX))
    starts = np.arange(0, n, group)
    counts = np.diff(np.append(starts, n))
    x = [int(ps.step[i]) for i in starts]
    data = []
    for c in CATEGORY_NAMES:
        per_step = np.asarray(ps.category(c), dtype=np.float64)
        if per_step.size != n:  # a category a stored summary does not carry
            continue
        values = np.add.reduceat(per_step, starts) / counts
        if not values.any():
            continue
        data.append(
            {
                "type": "bar",
                "name": CATEGORY_LABELS[c],
                "x": x,
                "y": [round(float(v), 3) for v in values],
                "marker": {"color": CATEGORY_COLORS[c], "line": {"width": 0}},
                "hovertemplate": f"{CATEGORY_LABELS[c]}: %{{y:.2f}} ms<extra>step %{{x}}</extra>",
            }
        )
    fig = {
        "data": data,
        "layout": layout(
            barmode="stack",
            bargap=0.1 if n < 60 else 0.0,
            height=300,
            xaxis={
                "title": {"text": "step" if group == 1 else f"step (mean of {group} consecutive steps)"},
                "type": "category" if n <= 40 else "linear",
                "gridcolor": "#e6e9ee",
            },
            yaxis={"title": {"text": "ms"}, "gridcolor": "#e6e9ee"},
        ),
    }
    return fig, group


def rank_budget_figure(summary: Summary) -> Figure:
    """Share of step time per category on every rank; the rank the others wait for is marked."""
    ranks = list(summary.ranks)
    straggler = summary.straggler.rank if summary.straggler else None
    labels = [f"rank {r.rank}" + ("  ◀ others wait for it" if r.rank == straggler else "") for r in ranks]
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "name": CATEGORY_LABELS[c],
            "y": labels,
            "x": [round(r.budget_pct.get(c), 3) for r in ranks],
            "marker": {"color": CATEGORY_COLORS[c], "line": {"width": 0}},
            "customdata": [round(r.budget_ms_per_step.get(c), 3) for r in ranks],
            "hovertemplate": f"{CATEGORY_LABELS[c]}: %{{x:.1f}}% (%{{customdata:.2f}} ms/step)<extra>%{{y}}</extra>",
        }
        for c in CATEGORY_NAMES
        if any(r.budget_pct.get(c) > 0 for r in ranks)
    ]
    shapes = []
    if straggler is not None:
        i = [r.rank for r in ranks].index(straggler)
        shapes.append(
            {
                "type": "rect",
                "xref": "paper",
                "yref": "y",
                "x0": 0,
                "x1": 1,
                "y0": i - 0.48,
                "y1": i + 0.48,
                "line": {"color": "#c94c4c", "width": 2},
                "fillcolor": "rgba(0,0,0,0)",
            }
        )
    return {
        "data": data,
        "layout": layout(
            barmode="stack",
            height=min(2400, 110 + 26 * len(ranks)),
            margin={"l": 220, "r": 20, "t": 30, "b": 40},
            xaxis={"title": {"text": "% of step time"}, "range": [0, 100], "gridcolor": "#e6e9ee"},
            yaxis={"autorange": "reversed", "automargin": True},
            shapes=shapes,
        ),
    }


def sync_split_figure(summary: Summary) -> Figure | None:
    """`sync` per rank split into moving data and waiting for a late rank."""
    ranks = [r for r in summary.ranks if r.budget_pct.get("sync") > 0]
    if not ranks:
        return None
    parts = (
        ("transfer", "transfer (moving data, device syncs)", "#f0b27a"),
        ("wait", "waiting for a slower rank", "#b9472f"),
    )
    hover = "{name}: %{{x:.1f}}% of step time<extra>%{{y}}</extra>"
    data = rank_part_bars(ranks, lambda r: r.sync_split_pct, parts, hover)
    return rank_shares_figure(data, len(ranks), {"title": {"text": "% of step time"}})


def rank_bar(name: str, y: list[str], x: list[float], color: str, hover: str, **more: Any) -> dict[str, Any]:
    """One part of a per-rank stacked bar: `x[i]` is rank `y[i]`'s value, `hover` its plotly hovertemplate."""
    return {
        "type": "bar",
        "orientation": "h",
        "name": name,
        "y": y,
        "x": x,
        "marker": {"color": color},
        **more,
        "hovertemplate": hover,
    }


def rank_part_bars(
    ranks: Sequence[RankSummary],
    record: Callable[[RankSummary], object],
    parts: Iterable[tuple[str, str, str]],
    hover: str,
) -> list[dict[str, Any]]:
    """A `rank_bar` per (field, name, color) of `parts`: that field of each rank's `record(rank)` (percent);
    `hover` is the hovertemplate with `{name}` for the part's name (plotly's own braces doubled)."""
    y = [f"rank {r.rank}" for r in ranks]
    return [
        rank_bar(name, y, [round(getattr(record(r), key), 3) for r in ranks], color, hover.format(name=name))
        for key, name, color in parts
    ]


def rank_shares_figure(data: list[dict[str, Any]], rows: int, xaxis: dict[str, Any]) -> Figure:
    """`rank_bar`s stacked, one row per rank (first on top), on a percentage x axis."""
    return {
        "data": data,
        "layout": layout(
            barmode="stack",
            height=min(1600, 100 + 24 * rows),
            margin={"l": 90, "r": 20, "t": 30, "b": 40},
            xaxis={**xaxis, "gridcolor": "#e6e9ee"},
            yaxis={"autorange": "reversed"},
        ),
    }


# ---- timeline --------------------------------------------------------------------------------------


def timeline_figure(tl: Timeline) -> Figure:
    """Bars per lane (rank budget, host threads, device streams), coloured by budget category."""
    lane_labels = [lane.label for lane in tl.lanes]
    data = []
    # drawn in reverse priority: the categories that win the budget end up on top
    for c in reversed(CATEGORY_NAMES):
        ys: list[str] = []
        base: list[float] = []
        width: list[float] = []
        hover: list[str] = []
        for lane in tl.lanes:
            m = np.flatnonzero(lane.category == c)
            if m.size == 0:
                continue
            ys.extend([lane.label] * m.size)
            base.extend(np.round(lane.start_ms[m], 4).tolist())
            width.extend(np.round(np.maximum(lane.end_ms[m] - lane.start_ms[m], 0.0), 4).tolist())
            hover.extend(
                f"{escape(lane.name[i])}<br>{CATEGORY_LABELS[c]} · {lane.end_ms[i] - lane.start_ms[i]:.3f} ms"
                f" at {lane.start_ms[i]:.3f} ms"
                for i in m.tolist()
            )
        if not ys:
            continue
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": CATEGORY_LABELS[c],
                "y": ys,
                "x": width,
                "base": base,
                "marker": {"color": CATEGORY_COLORS[c], "line": {"width": 0}},
                "hovertext": hover,
                "hoverinfo": "text",
                "width": 0.8,
                "legendrank": 1000 + CATEGORY_NAMES.index(c),  # legend in category order
            }
        )
    shapes, annotations = [], []
    for rank, step, start, _end in tl.step_bounds_ms:
        rows = [i for i, lane in enumerate(tl.lanes) if lane.rank == rank]
        if not rows:
            continue
        shapes.append(
            {
                "type": "line",
                "x0": start,
                "x1": start,
                "y0": min(rows) - 0.5,
                "y1": max(rows) + 0.5,
                "xref": "x",
                "yref": "y",
                "line": {"color": "#52606d", "width": 1, "dash": "dot"},
            }
        )
        annotations.append(
            {
                "x": start,
                "y": min(rows) - 0.5,
                "xref": "x",
                "yref": "y",
                "text": f"step {step}",
                "showarrow": False,
                "xanchor": "left",
                "yanchor": "bottom",
                "font": {"size": 10, "color": "#52606d"},
            }
        )
    return {
        "data": data,
        "layout": layout(
            barmode="overlay",
            height=140 + 26 * len(lane_labels),
            margin={"l": 250, "r": 20, "t": 20, "b": 40},
            xaxis={"title": {"text": "ms from the first step shown"}, "gridcolor": "#e6e9ee"},
            yaxis={
                "autorange": "reversed",
                "type": "category",
                "categoryorder": "array",
                "categoryarray": lane_labels,
                "automargin": True,
            },
            shapes=shapes,
            annotations=annotations,
            legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0, "traceorder": "normal"},
        ),
    }


# ---- time series -----------------------------------------------------------------------------------


def series_figure(panel: MetricPanel) -> Figure:
    return {
        "data": [
            {
                "type": "scatter",  # SVG: WebGL may be missing where the file is opened
                "mode": "lines",
                "name": s.label,
                "x": list(s.t_s),
                "y": list(s.value),
                "connectgaps": False,
                "line": {"width": 1.5},
                "hovertemplate": f"%{{y:.2f}} {panel.unit}<extra>{s.label} · %{{x:.1f}} s</extra>",
            }
            for s in panel.series
        ],
        "layout": layout(
            height=240,
            margin={"l": 60, "r": 20, "t": 30, "b": 40},
            xaxis={"title": {"text": "seconds since the run began"}, "gridcolor": "#e6e9ee"},
            yaxis={"title": {"text": panel.unit}, "gridcolor": "#e6e9ee", "rangemode": "tozero"},
            showlegend=len(panel.series) > 1,
        ),
    }


# ---- compatibility views ---------------------------------------------------------------------------


def temporal_figure(summary: Summary) -> Figure | None:
    """HTA's temporal breakdown per rank (idle / compute / non-compute, % of the device window)."""
    ranks = [r for r in summary.ranks if r.temporal_basis]
    if not ranks:
        return None
    labels = (("compute", "compute"), ("non_compute", "non-compute"), ("idle", "idle"))
    parts = [(key, label, TEMPORAL_COLORS[key]) for key, label in labels]
    data = rank_part_bars(ranks, lambda r: r.temporal_pct, parts, "{name}: %{{x:.2f}}%<extra>%{{y}}</extra>")
    return rank_shares_figure(
        data, len(ranks), {"title": {"text": "% of the device window"}, "range": [0, 100]}
    )


def overview_figure(summary: Summary) -> Figure | None:
    """The TensorBoard plugin's Overview step-time breakdown per rank."""
    ranks = [r for r in summary.ranks if r.overview_pct is not None]
    if not ranks:
        return None
    y = [f"rank {r.rank}" for r in ranks]
    data = []
    for role in ROLES:
        values = [round(getattr(r.overview_pct, role), 3) for r in ranks]
        if not any(values):
            continue
        data.append(
            rank_bar(
                ROLE_LABELS[role],
                y,
                values,
                ROLE_COLORS[role],
                f"{ROLE_LABELS[role]}: %{{x:.2f}}% of %{{customdata:.2f}} ms<extra>%{{y}}</extra>",
                customdata=[round(r.overview_pct.avg_step_us / 1e3, 3) for r in ranks],  # type: ignore[union-attr]
            )
        )
    return rank_shares_figure(
        data, len(ranks), {"title": {"text": "% of the average step"}, "range": [0, 100]}
    )


# ---- diff ------------------------------------------------------------------------------------------


def diff_budget_figure(base: Summary, cand: Summary) -> Figure:
    """Mean ms per step per category, base beside candidate (every rank, step-weighted)."""
    b, c = job_budget_ms(base), job_budget_ms(cand)
    cats = [k for k in CATEGORY_NAMES if b[k] > 0 or c[k] > 0]
    labels = [CATEGORY_LABELS[k] for k in cats]
    return {
        "data": [
            {
                "type": "bar",
                "name": name,
                "x": labels,
                "y": [round(values[k], 3) for k in cats],
                "marker": {"color": color},
                "hovertemplate": f"{name}: %{{y:.2f}} ms/step<extra>%{{x}}</extra>",
            }
            for name, values, color in (("base", b, "#9aa5b1"), ("candidate", c, "#3b7dd8"))
        ],
        "layout": layout(
            barmode="group",
            height=320,
            yaxis={"title": {"text": "ms per step (mean)"}, "gridcolor": "#e6e9ee"},
        ),
    }
