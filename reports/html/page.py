"""The HTML of a report: one file, plotly.js inline, nothing fetched from anywhere.

Safety, since names come from traces (DESIGN.md "Bad input"): every string from a run is `html.escape`d;
figure JSON sits in `<script type="application/json">` blocks with `<`, `>` and `&` written as `\\u003c`...
so no name can close the block; and a Content-Security-Policy allows only this page's own scripts (by
nonce), no network, so even a name that slipped through could neither run nor load anything.
"""

from __future__ import annotations

import html
import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

from gpuwatch.attribution.overview import ROLES
from gpuwatch.attribution.summary import CATEGORY_NAMES, Summary
from reports.html import figures as F
from reports.html.report_data import RunReport

PLOTLY_CONFIG = {
    "displaylogo": False,
    "displayModeBar": "hover",
    "responsive": True,
    "modeBarButtonsToRemove": ["lasso2d", "select2d"],
}

SECTIONS = (
    ("headline", "Where the time goes"),
    ("whatif", "What if: which fix first"),
    ("budget", "Time budget per step and per rank"),
    ("timeline", "Timeline of representative steps"),
    ("series", "Device and host time series"),
    ("advice", "What to change"),
    ("compat", "Compatibility views: HTA and TensorBoard"),
)

OVERVIEW_NOTE = (
    "Computed the way the removed PyTorch TensorBoard profiler plugin (torch-tb-profiler 0.4.3) computed "
    "its Overview, with one deliberate difference: that plugin reads runtime calls only under the old trace "
    "category <code>Runtime</code>; on newer traces (<code>cuda_runtime</code>) it shows Runtime 0% and counts "
    "that time as CPU Exec. Here runtime calls count as Runtime, so Runtime + CPU Exec matches the plugin's "
    "Runtime + CPU Exec. When device work covers every instant of every step, the plugin also counted CPU Exec "
    "and Other on top (its shares then add up past 100%); here the roles always partition the step."
)
WHATIF_NOTE = (
    "Upper bounds: each bar assumes the category's time simply vanishes and nothing else moves into its "
    "place. The critical path is not analysed: a rank that waits for another still waits, and work that "
    "overlapped the category may now be exposed."
)

CSS = """
:root { --ink:#1f2933; --muted:#52606d; --line:#e4e7eb; --bg:#f5f7fa; --card:#fff; --accent:#2e9d57; --warn:#c94c4c; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font: 14px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif; }
header.top { background:#1f2933; color:#f5f7fa; padding:18px 32px; }
header.top h1 { margin:0; font-size:20px; font-weight:600; letter-spacing:.2px; }
header.top h1 .brand { color:#7bd389; margin-right:8px; }
header.top .meta { margin-top:6px; color:#cbd2d9; font-size:12.5px; }
header.top .meta span { margin-right:18px; white-space:nowrap; }
nav.toc { background:#fff; border-bottom:1px solid var(--line); padding:8px 32px; position:sticky; top:0; z-index:5; }
nav.toc a { color:var(--muted); text-decoration:none; margin-right:18px; font-size:13px; }
nav.toc a:hover { color:var(--ink); }
main { max-width:1280px; margin:0 auto; padding:20px 32px 60px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:18px 22px; margin:18px 0; }
section h2 { margin:0 0 4px; font-size:17px; }
section h2 .n { color:var(--muted); font-weight:500; margin-right:6px; }
section h3 { font-size:14px; margin:18px 0 6px; color:var(--ink); }
p.lead { color:var(--muted); margin:2px 0 12px; }
.cards { display:grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap:12px; margin:12px 0; }
.card { border:1px solid var(--line); border-radius:8px; padding:12px 14px; background:#fbfcfd; }
.card .k { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.4px; }
.card .v { font-size:26px; font-weight:650; margin-top:2px; }
.card .s { font-size:12.5px; color:var(--muted); }
.card.good .v { color:var(--accent); } .card.bad .v { color:var(--warn); }
table { border-collapse:collapse; width:100%; margin:8px 0; font-size:13px; font-variant-numeric: tabular-nums; }
th, td { text-align:right; padding:5px 8px; border-bottom:1px solid var(--line); }
th { color:var(--muted); font-weight:600; background:#fafbfc; }
span.s { color:var(--muted); font-size:11.5px; }
span.nm { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12px; word-break:break-all; }
td.l, th.l { text-align:left; }
tr.hl td { background:#fdf1f0; }
.swatch { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:6px; vertical-align:middle; }
.note { color:var(--muted); font-size:12.5px; background:#f8f9fb; border-left:3px solid #cbd2d9; padding:6px 10px; margin:8px 0; }
.note.warn { border-left-color:#e0823d; }
.rec { border:1px solid var(--line); border-left:4px solid var(--warn); border-radius:6px; padding:10px 14px; margin:10px 0; }
.rec .t { font-weight:600; } .rec .e { color:var(--muted); margin:4px 0; } .rec .c { color:#1d5f3a; }
.tag { display:inline-block; font-size:11.5px; padding:1px 7px; border-radius:10px; background:#eef1f4; color:var(--muted); margin-right:6px; }
.pair, .grid2 { display:grid; grid-template-columns: 1fr 1fr; gap:18px; }
.pair > div, .grid2 > div { min-width:0; }
.pos { color:var(--warn); } .neg { color:var(--accent); }
code { font-size:12px; background:#eef1f4; padding:1px 4px; border-radius:3px; }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:30px; }
"""

# Draws every figure; `data-figures-drawn` on <html> says when all are done (what tests wait for).
LOADER = """
(function () {
  var cfg = %s;
  var drawn = [];
  document.querySelectorAll('script[type="application/json"][data-fig]').forEach(function (node) {
    var fig = JSON.parse(node.textContent);
    var div = document.getElementById(node.getAttribute('data-fig'));
    drawn.push(Plotly.newPlot(div, fig.data, fig.layout, cfg));
  });
  Promise.all(drawn).then(function () {
    document.documentElement.setAttribute('data-figures-drawn', String(drawn.length));
  });
})();
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def figure_json(fig: dict[str, Any]) -> str:
    """Figure JSON safe inside a `<script>` element: no `<`, `>` or `&` in it at all."""
    text = json.dumps(fig, separators=(",", ":"), allow_nan=False, default=float)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


class Page:
    """Builds one HTML document; `figure()` hands out ids and keeps each figure's JSON."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.figures: list[tuple[str, str]] = []
        self.nonce = secrets.token_urlsafe(16)

    def add(self, *chunks: str) -> None:
        self.parts.extend(chunks)

    def figure(self, fig: dict[str, Any] | None, *, empty: str = "") -> str:
        if fig is None:
            return f'<p class="note">{esc(empty)}</p>' if empty else ""
        fid = f"fig{len(self.figures) + 1}"
        self.figures.append((fid, figure_json(fig)))
        return f'<div class="fig" id="{fid}"></div>'

    def render(self, plotly_js: str) -> str:
        csp = (
            f"default-src 'none'; script-src 'nonce-{self.nonce}'; style-src 'unsafe-inline'; "
            "img-src data: blob:; font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'"
        )
        blocks = "".join(
            f'<script type="application/json" data-fig="{fid}">{text}</script>\n'
            for fid, text in self.figures
        )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>\n"
            + "".join(self.parts)
            + blocks
            + f'<script nonce="{self.nonce}">{plotly_js}</script>\n'
            + f'<script nonce="{self.nonce}">{LOADER % json.dumps(PLOTLY_CONFIG)}</script>\n'
            + "</body></html>\n"
        )


def plotly_js() -> str:
    """plotly.js itself, to inline (plotly is imported only here, when a report is written)."""
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    if "</script" in js.lower():  # never seen; it would end the element early
        js = js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    return str(js)


# ---- building blocks ------------------------------------------------------------------------------


def section(key: str, body: str, lead: str = "") -> str:
    n = [k for k, _ in SECTIONS].index(key) + 1
    title = dict(SECTIONS)[key]
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return (
        f'<section id="{key}"><h2><span class="n">{n}.</span>{esc(title)}</h2>{lead_html}{body}</section>\n'
    )


def toc() -> str:
    links = "".join(f'<a href="#{k}">{i}. {esc(t)}</a>' for i, (k, t) in enumerate(SECTIONS, 1))
    return f'<nav class="toc">{links}</nav>\n'


def table(
    head: Iterable[str], rows: Iterable[Iterable[str]], *, left: int = 1, hl: Iterable[bool] = ()
) -> str:
    """`head` and cells are HTML already (escape what came from a run before passing it)."""
    head = list(head)
    hls = list(hl)
    th = "".join(f'<th class="{"l" if i < left else ""}">{h}</th>' for i, h in enumerate(head))
    body = []
    for j, row in enumerate(rows):
        cells = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
        cls = ' class="hl"' if j < len(hls) and hls[j] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{color}"></span>'


def cat_cell(category: str) -> str:
    return swatch(F.CATEGORY_COLORS.get(category, "#999")) + esc(F.CATEGORY_LABELS.get(category, category))


def pct(v: float) -> str:
    return f"{v:.1f}%"


def ms(v: float) -> str:
    return f"{v:,.1f} ms" if v < 10_000 else f"{v / 1000:,.2f} s"


def usd(v: float) -> str:
    return f"${v:,.0f}" if v >= 100 else f"${v:,.2f}"


def header(report: RunReport, title: str) -> str:
    s = report.summary
    steps = sum(r.steps for r in s.ranks)
    bits = [
        f"run <b>{esc(s.run_id)}</b>",
        esc(report.run_dir),
        f"{len(s.ranks)} rank{'s' if len(s.ranks) != 1 else ''}, {steps:,} steps",
        "source: " + esc(", ".join(report.sources) or "-"),
    ]
    if report.devices:
        bits.append(esc(", ".join(report.devices)))
    return (
        f'<header class="top"><h1><span class="brand">gpuwatch</span>{esc(title)}</h1>'
        f'<div class="meta">{"".join(f"<span>{b}</span>" for b in bits)}</div></header>\n'
    )


def headline_cards(h: F.Headline) -> str:
    unit = "GPU-hours" if h.device_mode else "process-hours"
    top = (
        f"{esc(F.CATEGORY_LABELS[h.top_category])}: {pct(h.top_pct)} of step time"
        if h.top_category
        else "no idle time found"
    )
    cards = [
        ("good", "Compute", pct(h.compute_pct), "of step time, all ranks"),
        ("", "Median step", ms(h.median_step_ms), f"{h.steps:,} steps on {h.ranks} rank(s)"),
        ("bad", "Idle", pct(h.idle_pct), f"largest cause: {top}"),
        (
            "bad",
            f"{unit} lost",
            f"{h.gpu_hours_lost_per_1000:,.0f}",
            f"per 1,000 {unit}: {usd(h.usd_lost_per_1000)} at ${h.gpu_hour_price_usd:.2f}/hour",
        ),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card {c}"><div class="k">{k}</div><div class="v">{v}</div><div class="s">{sub}</div></div>'
            for c, k, v, sub in cards
        )
        + "</div>"
    )


def price_note(h: F.Headline, default_price: float) -> str:
    which = "the default" if abs(h.gpu_hour_price_usd - default_price) < 1e-9 else "set with --gpu-hour-price"
    text = (
        f"Cost at ${h.gpu_hour_price_usd:.2f} per GPU-hour ({which}; "
        "<code>gpuwatch report RUN --gpu-hour-price USD</code> changes it). "
        "Idle time is every category but compute."
    )
    if not h.device_mode:
        text += (
            " This run has no device events: compute is the training thread's own math, and the hours are "
            "hours of the training processes."
        )
    return f'<p class="note">{text}</p>'


def whatif_table(s: Summary, price: float) -> str:
    unit = "GPU-hours" if any(r.mode == "device" for r in s.ranks) else "process-hours"
    rows = [
        [
            cat_cell(v.category),
            "all" if v.rank is None else str(v.rank),
            ms(v.step_time_ms_after),
            f"{v.speedup:.2f}x",
            f"{v.gpu_hours_saved_per_1000:,.1f}",
            usd(v.gpu_hours_saved_per_1000 * price),
        ]
        for v in s.savings
    ]
    head = [
        "idle category",
        "rank",
        "step time after",
        "speed-up",
        f"{unit} saved / 1,000",
        f"saved / 1,000 {unit}",
    ]
    return table(head, rows, left=2)


def budget_table(s: Summary) -> str:
    straggler = s.straggler.rank if s.straggler else None
    cats = [c for c in CATEGORY_NAMES if any(r.budget_pct.get(c) > 0 for r in s.ranks)]
    head = ["rank", "steps", "median step"] + [
        swatch(F.CATEGORY_COLORS[c]) + esc(F.CATEGORY_LABELS[c]) for c in cats
    ]
    rows = [
        [str(r.rank), f"{r.steps:,}", ms(r.step_time_ms.median)]
        + [
            f"{r.budget_pct.get(c):.1f}% <span class='s'>({r.budget_ms_per_step.get(c):.1f} ms)</span>"
            for c in cats
        ]
        for r in s.ranks
    ]
    return table(head, rows, hl=[r.rank == straggler for r in s.ranks])


def straggler_text(s: Summary) -> str:
    st = s.straggler
    if st is None:
        return '<p class="note">No rank made the others wait: no cross-rank waiting was found (or the run has one rank, or its collectives carry no sequence numbers to match them by).</p>'
    doing = ", ".join(f"{esc(F.CATEGORY_LABELS.get(k, k))} {v:,.0f} ms" for k, v in st.doing_ms[:4])
    return (
        f'<p class="note warn"><b>The other ranks wait for rank {st.rank}</b>: {st.caused_wait_ms:,.0f} ms of '
        f"waiting ({st.share_pct:.0f}% of all cross-rank waiting) over {st.matched_collectives:,} matched "
        f"collectives. Meanwhile rank {st.rank} was doing: {doing or '-'}.</p>"
    )


def tag_cause_text(s: Summary) -> str:
    """Which tag value (`gw.step(tags=...)`) makes the rank others wait for slow, when tags say it."""
    cause = s.straggler.tag_cause if s.straggler else None
    return "" if cause is None else f'<p class="note warn">{esc(cause.text)}.</p>'


def stage_table(s: Summary) -> str:
    """Each stage's budget per rank (`gw.step(stage=...)`): percent of the stage's step time (ms per step)."""
    cats = [c for c in CATEGORY_NAMES if any(r.budget_pct.get(c) > 0 for g in s.stages for r in g.ranks)]
    head = ["stage", "rank", "steps", "median step"] + [
        swatch(F.CATEGORY_COLORS[c]) + esc(F.CATEGORY_LABELS[c]) for c in cats
    ]
    rows = [
        [esc(g.stage), str(r.rank), f"{r.steps:,}", ms(r.step_time_ms.median)]
        + [
            f"{r.budget_pct.get(c):.1f}% <span class='s'>({r.budget_ms_per_step.get(c):.1f} ms)</span>"
            for c in cats
        ]
        for g in s.stages
        for r in g.ranks
    ]
    return table(head, rows, left=1)


def evidence_table(s: Summary) -> str:
    rows = []
    for r in s.ranks:
        for e in r.evidence:
            if e.category == "compute":
                continue
            rows.append(
                [
                    str(r.rank),
                    cat_cell(e.category),
                    f'<span class="nm">{esc(e.name)}</span>',
                    ms(e.total_ms),
                    f"{e.count:,}",
                ]
            )
    if not rows:
        return ""
    return "<h3>Evidence: the named regions behind each idle category</h3>" + table(
        ["rank", "category", "region (span name)", "time", "spans"], rows, left=3
    )


def recommendations_html(s: Summary) -> str:
    if not s.recommendations:
        return '<p class="note">No category is above its threshold: nothing to change.</p>'
    out = []
    for rec in s.recommendations:
        where = "all ranks" if rec.rank is None else f"rank {rec.rank}"
        out.append(
            f'<div class="rec"><div class="t"><span class="tag">{esc(F.CATEGORY_LABELS.get(rec.category, rec.category))}'
            f" · {esc(where)} · {rec.pct:.1f}%</span>{esc(rec.title)}</div>"
            f'<div class="e">{esc(rec.evidence)}</div><div class="c">→ {esc(rec.change)}</div></div>'
        )
    return "".join(out)


def notes_html(s: Summary) -> str:
    if not s.notes:
        return ""
    return "<h3>Notes on the data</h3>" + "".join(f'<p class="note">{esc(n)}</p>' for n in s.notes)


def temporal_table(s: Summary) -> str:
    rows = [
        [
            str(r.rank),
            esc(r.temporal_basis or "-"),
            pct(r.temporal_pct.idle),
            pct(r.temporal_pct.compute),
            pct(r.temporal_pct.non_compute),
        ]
        for r in s.ranks
    ]
    return table(["rank", "basis", "idle", "compute", "non-compute"], rows, left=2)


def overview_table(s: Summary) -> str:
    ranks = [r for r in s.ranks if r.overview_pct is not None]
    if not ranks:
        return '<p class="note">Not in this summary: it was stored by an older gpuwatch (<code>gpuwatch summary RUN --no-cache</code> refreshes it).</p>'
    head = ["rank", "avg step"] + [swatch(F.ROLE_COLORS[k]) + F.ROLE_LABELS[k] for k in ROLES]
    rows = [
        [str(r.rank), ms(r.overview_pct.avg_step_us / 1e3)]  # type: ignore[union-attr]
        + [f"{getattr(r.overview_pct, k):.2f}%" for k in ROLES]
        for r in ranks
    ]
    return table(head, rows)


def timeline_note(report: RunReport) -> str:
    tl = report.timeline
    if tl is None:
        return ""
    markers = all(report.summary.rank(r).steps_from_markers for r in tl.ranks)
    which = (
        f"Steps {', '.join(str(s) for s in tl.steps)} (the median step of rank {tl.ranks[0]} and its neighbours)"
        if markers
        else "The whole run (it has no step markers, so it is one step)"
    )
    bits = [
        f"{which} on {len(tl.ranks)} of {tl.ranks_total} rank(s). The first row of each rank is what gpuwatch "
        "decided at each instant; the rows below are the raw spans of each thread and device stream, coloured "
        "by the category they stand for."
    ]
    warn = tl.merged or tl.bars_dropped > 0 or tl.ranks_total > len(tl.ranks)
    if tl.merged or tl.bars_dropped:
        how = []
        if tl.merged:
            how.append(
                "spans of one category closer than a pixel are merged into one bar (hover says how many), and "
                "the budget row shows what each pixel-wide slice of time mostly was"
            )
        if tl.bars_dropped:
            how.append(f"the {tl.bars_dropped:,} shortest bars are left out")
        bits.append(
            f"<b>Downsampled:</b> {tl.spans_in_window:,} spans in these steps are drawn as {tl.bars_shown:,} bars: "
            + "; ".join(how)
            + "."
        )
    return f'<p class="note{" warn" if warn else ""}">{" ".join(bits)}</p>'


def series_html(page: Page, report: RunReport, *, columns: int = 2) -> str:
    if not report.panels:
        return (
            '<p class="note">This run has no time series: profiler traces carry none. '
            "<code>gpuwatch.watch</code> and <code>gpuwatch attach</code> record NVML utilization, memory and "
            "power, and the training process's CPU, memory and I/O.</p>"
        )
    out = []
    for group, title in (("device", "Device (NVML)"), ("host", "Host (/proc)")):
        panels = [p for p in report.panels if p.group == group]
        if not panels:
            continue
        out.append(f"<h3>{title}</h3>" + ('<div class="grid2">' if columns == 2 else "<div>"))
        for p in panels:
            note = (
                f" <span class='s'>(averaged: {p.points_total:,} samples shown as {p.points_shown:,} points)</span>"
                if p.points_shown < p.points_total
                else ""
            )
            out.append(f"<div><b>{esc(p.title)}</b>{note}" + page.figure(F.series_figure(p)) + "</div>")
        out.append("</div>")
    return "".join(out)


def footer() -> str:
    from gpuwatch import __version__

    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return (
        f"<footer>gpuwatch {esc(__version__)} · written {esc(stamp)} · one file, no network needed</footer>\n"
    )


# ---- the report of one run -------------------------------------------------------------------------


def render_report(report: RunReport, *, gpu_hour_price_usd: float, default_price_usd: float) -> str:
    s = report.summary
    h = F.headline(s, gpu_hour_price_usd)
    page = Page(f"gpuwatch report · {s.run_id}")
    page.add(header(report, "report"), toc(), "<main>\n")
    page.add(section("headline", headline_cards(h) + price_note(h, default_price_usd)))
    page.add(
        section(
            "whatif",
            page.figure(F.whatif_figure(s), empty="No idle time to remove.")
            + f'<p class="note">{WHATIF_NOTE}</p>'
            + whatif_table(s, gpu_hour_price_usd),
            "For each cause of idle time: the mean step time if it took no time at all, largest saving first.",
        )
    )
    page.add(
        section(
            "budget",
            budget_section(page, s),
            "Every step of every rank adds up to 100%: compute plus each cause of idle time.",
        )
    )
    tl_body = (
        timeline_note(report) + page.figure(F.timeline_figure(report.timeline))
        if report.timeline is not None and report.timeline.lanes
        else '<p class="note">No spans to draw.</p>'
    )
    page.add(section("timeline", tl_body))
    page.add(section("series", series_html(page, report)))
    page.add(section("advice", recommendations_html(s) + evidence_table(s) + notes_html(s)))
    page.add(section("compat", compat_section(page, s)))
    page.add("</main>\n", footer())
    return page.render(plotly_js())


def budget_section(page: Page, s: Summary) -> str:
    out = [budget_table(s), straggler_text(s), tag_cause_text(s)]
    if s.stages:
        out += ["<h3>Per stage</h3>", stage_table(s)]
    out += ["<h3>Per rank</h3>", page.figure(F.rank_budget_figure(s))]
    split = F.sync_split_figure(s)
    if split is not None:
        out += ["<h3>Sync: moving data, or waiting for a slower rank</h3>", page.figure(split)]
    for r in step_ranks(s):
        fig, group = F.step_budget_figure(r)
        if fig is None:
            continue
        note = (
            f" <span class='s'>({r.steps:,} steps, averaged in groups of {group})</span>" if group > 1 else ""
        )
        out.append(f"<h3>Every step of rank {r.rank}{note}</h3>" + page.figure(fig))
    if len(s.ranks) > len(step_ranks(s)):
        out.append(
            f'<p class="note">Per-step bars are drawn for {len(step_ranks(s))} of {len(s.ranks)} ranks '
            "(the rank others wait for, rank 0, the slowest and the fastest); the table has every rank.</p>"
        )
    return "".join(out)


def step_ranks(s: Summary) -> list[Any]:
    from reports.html.report_data import timeline_ranks

    return [s.rank(r) for r in timeline_ranks(s)]


def compat_section(page: Page, s: Summary) -> str:
    return (
        "<h3>HolisticTraceAnalysis: temporal breakdown</h3>"
        '<p class="note">HTA\'s <code>get_temporal_breakdown()</code> computed as HTA computes it, so the numbers '
        "can be checked against it: idle, compute and non-compute (communication and memory kernels not under "
        "compute) as shares of the device window, all steps but the last.</p>"
        + page.figure(F.temporal_figure(s))
        + temporal_table(s)
        + "<h3>TensorBoard profiler plugin: Overview step-time breakdown</h3>"
        + f'<p class="note">{OVERVIEW_NOTE}</p>'
        + page.figure(F.overview_figure(s))
        + overview_table(s)
    )
