"""`gpuwatch report BASE CAND -o diff.html`: the report's sections for two runs side by side, with deltas.

A delta is candidate minus base; for time, negative is better (shown green), for compute share positive is.
This page shows what changed; `gpuwatch compare` says whether the change is beyond the noise.
"""

from __future__ import annotations

from gpuwatch.attribution.overview import ROLES
from gpuwatch.attribution.summary import CATEGORY_NAMES, Summary
from reports.html import figures as F
from reports.html.page import (
    OVERVIEW_NOTE,
    WHATIF_NOTE,
    Page,
    budget_table,
    cat_cell,
    esc,
    footer,
    headline_cards,
    ms,
    plotly_js,
    price_note,
    recommendations_html,
    section,
    series_html,
    straggler_text,
    table,
    timeline_note,
    toc,
    usd,
)
from reports.html.report_data import RunReport


def delta(value: float, unit: str, *, lower_is_better: bool = True, digits: int = 1, prefix: str = "") -> str:
    """A signed difference, coloured by whether it is an improvement."""
    if abs(value) < 0.5 * 10**-digits:
        return f"<span>±{prefix}0{unit}</span>"
    better = (value < 0) == lower_is_better
    sign = "+" if value > 0 else "−"
    return f'<span class="{"neg" if better else "pos"}">{sign}{prefix}{abs(value):,.{digits}f}{unit}</span>'


def pair(left: str, right: str) -> str:
    return f'<div class="pair"><div><h3>base</h3>{left}</div><div><h3>candidate</h3>{right}</div></div>'


def diff_header(base: RunReport, cand: RunReport) -> str:
    def who(r: RunReport) -> str:
        s = r.summary
        return (
            f"<b>{esc(s.run_id)}</b> {esc(r.run_dir)} ({len(s.ranks)} ranks, "
            f"{sum(x.steps for x in s.ranks):,} steps, {esc(', '.join(r.sources))})"
        )

    return (
        '<header class="top"><h1><span class="brand">gpuwatch</span>diff report</h1>'
        f'<div class="meta"><span>base: {who(base)}</span></div>'
        f'<div class="meta"><span>candidate: {who(cand)}</span></div></header>\n'
    )


def headline_delta_table(hb: F.Headline, hc: F.Headline) -> str:
    rows = [
        [
            "compute share",
            f"{hb.compute_pct:.1f}%",
            f"{hc.compute_pct:.1f}%",
            delta(hc.compute_pct - hb.compute_pct, " pp", lower_is_better=False),
        ],
        ["idle share", f"{hb.idle_pct:.1f}%", f"{hc.idle_pct:.1f}%", delta(hc.idle_pct - hb.idle_pct, " pp")],
        [
            "median step",
            ms(hb.median_step_ms),
            ms(hc.median_step_ms),
            delta(hc.median_step_ms - hb.median_step_ms, " ms"),
        ],
        [
            "GPU-hours lost per 1,000",
            f"{hb.gpu_hours_lost_per_1000:,.0f}",
            f"{hc.gpu_hours_lost_per_1000:,.0f}",
            delta(hc.gpu_hours_lost_per_1000 - hb.gpu_hours_lost_per_1000, "", digits=0),
        ],
        [
            f"cost per 1,000 GPU-hours at ${hb.gpu_hour_price_usd:.2f}",
            usd(hb.usd_lost_per_1000),
            usd(hc.usd_lost_per_1000),
            delta(hc.usd_lost_per_1000 - hb.usd_lost_per_1000, "", digits=0, prefix="$"),
        ],
    ]
    return table(["", "base", "candidate", "candidate − base"], rows)


def budget_delta_table(base: Summary, cand: Summary) -> str:
    bm, cm = F.job_budget_ms(base), F.job_budget_ms(cand)
    bp, cp = F.job_budget_pct(base), F.job_budget_pct(cand)
    rows = [
        [
            cat_cell(c),
            f"{bm[c]:.1f} ms",
            f"{cm[c]:.1f} ms",
            delta(cm[c] - bm[c], " ms", lower_is_better=c != "compute"),
            f"{bp[c]:.1f}%",
            f"{cp[c]:.1f}%",
            delta(cp[c] - bp[c], " pp", lower_is_better=c != "compute"),
        ]
        for c in CATEGORY_NAMES
        if bm[c] > 0 or cm[c] > 0
    ]
    total_b, total_c = sum(bm.values()), sum(cm.values())
    rows.append(
        [
            "<b>step</b>",
            f"<b>{total_b:.1f} ms</b>",
            f"<b>{total_c:.1f} ms</b>",
            delta(total_c - total_b, " ms"),
            "100%",
            "100%",
            "",
        ]
    )
    head = ["category", "base ms/step", "candidate", "Δ", "base share", "candidate", "Δ"]
    return table(head, rows)


def whatif_delta_table(base: Summary, cand: Summary) -> str:
    b = {s.category: s for s in base.savings if s.rank is None}
    c = {s.category: s for s in cand.savings if s.rank is None}
    cats = sorted(
        set(b) | set(c), key=lambda k: -max(b[k].speedup if k in b else 1, c[k].speedup if k in c else 1)
    )
    rows = []
    for k in cats:
        sb = b[k].speedup if k in b else 1.0
        sc = c[k].speedup if k in c else 1.0
        rows.append([cat_cell(k), f"{sb:.2f}x", f"{sc:.2f}x", delta(sc - sb, "x", digits=2)])
    return table(["idle category (all ranks)", "base speed-up if removed", "candidate", "Δ"], rows)


def compat_delta_tables(base: Summary, cand: Summary) -> str:
    common = [r.rank for r in base.ranks if r.rank in {x.rank for x in cand.ranks}]
    rows = []
    for rank in common:
        tb, tc = base.rank(rank).temporal_pct, cand.rank(rank).temporal_pct
        rows.append(
            [str(rank)]
            + [
                f"{getattr(tb, k):.1f}% → {getattr(tc, k):.1f}% "
                f"({delta(getattr(tc, k) - getattr(tb, k), ' pp', lower_is_better=k != 'compute')})"
                for k in ("idle", "compute", "non_compute")
            ]
        )
    out = "<h3>HolisticTraceAnalysis: temporal breakdown (base → candidate)</h3>" + table(
        ["rank", "idle", "compute", "non-compute"], rows
    )
    rows = []
    for rank in common:
        ob, oc = base.rank(rank).overview_pct, cand.rank(rank).overview_pct
        if ob is None or oc is None:
            continue
        rows.append(
            [str(rank), f"{ob.avg_step_us / 1e3:.1f} → {oc.avg_step_us / 1e3:.1f} ms"]
            + [f"{getattr(ob, k):.1f} → {getattr(oc, k):.1f}" for k in ROLES]
        )
    out += "<h3>TensorBoard profiler plugin: Overview (% of the average step, base → candidate)</h3>"
    out += f'<p class="note">{OVERVIEW_NOTE}</p>'
    out += table(["rank", "avg step"] + [F.ROLE_LABELS[k] for k in ROLES], rows)
    if len(common) < max(len(base.ranks), len(cand.ranks)):
        out += '<p class="note">Only the ranks present in both runs are compared.</p>'
    return out


def render_diff(
    base: RunReport, cand: RunReport, *, gpu_hour_price_usd: float, default_price_usd: float
) -> str:
    sb, sc = base.summary, cand.summary
    hb, hc = F.headline(sb, gpu_hour_price_usd), F.headline(sc, gpu_hour_price_usd)
    page = Page(f"gpuwatch diff · {sb.run_id} → {sc.run_id}")
    page.add(diff_header(base, cand), toc(), "<main>\n")
    page.add(
        section(
            "headline",
            headline_delta_table(hb, hc)
            + pair(headline_cards(hb), headline_cards(hc))
            + price_note(hc, default_price_usd),
        )
    )
    page.add(
        section(
            "whatif",
            whatif_delta_table(sb, sc)
            + pair(
                page.figure(F.whatif_figure(sb), empty="No idle time to remove."),
                page.figure(F.whatif_figure(sc), empty="No idle time to remove."),
            )
            + f'<p class="note">{WHATIF_NOTE}</p>',
        )
    )
    page.add(
        section(
            "budget",
            page.figure(F.diff_budget_figure(sb, sc))
            + budget_delta_table(sb, sc)
            + pair(
                budget_table(sb) + straggler_text(sb) + page.figure(F.rank_budget_figure(sb)),
                budget_table(sc) + straggler_text(sc) + page.figure(F.rank_budget_figure(sc)),
            ),
            "Mean milliseconds per step over every rank; Δ is candidate minus base.",
        )
    )
    tl = []
    for r in (base, cand):
        if r.timeline is not None and r.timeline.lanes:
            tl.append(timeline_note(r) + page.figure(F.timeline_figure(r.timeline)))
        else:
            tl.append('<p class="note">No spans to draw.</p>')
    page.add(section("timeline", pair(*tl)))
    page.add(section("series", pair(series_html(page, base, columns=1), series_html(page, cand, columns=1))))
    page.add(section("advice", pair(recommendations_html(sb), recommendations_html(sc))))
    page.add(
        section(
            "compat",
            compat_delta_tables(sb, sc)
            + pair(page.figure(F.overview_figure(sb)), page.figure(F.overview_figure(sc))),
        )
    )
    page.add("</main>\n", footer())
    return page.render(plotly_js())
