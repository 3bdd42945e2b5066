"""The compare verdict as GitHub-flavoured Markdown: what CI shows in a job summary or a PR comment.

Tables are GFM pipe tables (checked as such in tests with markdown-it-py's table rule). Names that come
from traces (evidence regions) are data: pipes, backticks, angle brackets and newlines are escaped so they
can never break a table or inject HTML.
"""

from __future__ import annotations

from reports.compare.model import (
    COMPUTE_SHARE,
    STEP_TIME,
    Check,
    Comparison,
    Outcome,
    Verdict,
)
from reports.compare.text import check_label, format_change, format_limit, format_value

TITLE = {
    Verdict.PASS: "PASS: no regression",
    Verdict.REGRESSION: "REGRESSION",
    Verdict.UNDECIDED: "UNDECIDED: too few steps",
    Verdict.INCOMPARABLE: "CANNOT COMPARE",
}
RESULT = {
    Outcome.REGRESSED: "**regressed**",
    Outcome.NOISE: "within noise",
    Outcome.OK: "ok",
    Outcome.IMPROVED: "improved",
    Outcome.NOT_GATED: "worse, not gated",
}
MODE = {"device": "device", "host": "CPU-only"}


def render_markdown(cmp: Comparison) -> str:
    """The whole verdict: headline, what regressed and improved, the checks table, grown evidence, ranks."""
    out = [f"## gpuwatch compare: {TITLE[cmp.verdict]}", "", _sides(cmp), ""]
    if cmp.reasons:
        out += [f"- {_esc(r)}" for r in cmp.reasons] + [""]
        return "\n".join(out)
    regressed = [c for c in cmp.job_checks() if c.outcome is Outcome.REGRESSED]
    improved = [c for c in cmp.job_checks() if c.outcome is Outcome.IMPROVED]
    compute = cmp.job_check(COMPUTE_SHARE)
    if regressed:
        out.append("**Regressed:** " + "; ".join(_sentence(c) for c in regressed) + ".")
    if improved:
        out.append("**Improved:** " + "; ".join(_sentence(c) for c in improved) + ".")
    if compute is not None and compute.outcome not in (Outcome.REGRESSED, Outcome.IMPROVED):
        out.append(
            f"**Compute share:** {compute.base:.1f}% -> {compute.cand:.1f}% of step time "
            f"({compute.change:+.1f} pp)."
        )
    out += ["", *_checks_table(cmp), ""]
    if cmp.evidence:
        out += ["### Where the regressed time went (regions that grew)", ""]
        out += [
            "| category | rank | region | base ms/step | candidate ms/step |",
            "| --- | ---: | --- | ---: | ---: |",
        ]
        for e in cmp.evidence[:12]:
            before = "-" if e.base_ms_per_step is None else f"{e.base_ms_per_step:.1f}"
            out.append(f"| {e.category} | {e.rank} | {_esc(e.name)} | {before} | {e.cand_ms_per_step:.1f} |")
        out.append("")
    ranks = sorted({c.rank for c in cmp.checks if c.rank is not None})
    if ranks:
        out += _ranks_table(cmp, ranks) + [""]
    out.append(_method(cmp))
    return "\n".join(out) + "\n"


def _sides(cmp: Comparison) -> str:
    b, c = cmp.base, cmp.cand
    modes = "/".join(sorted({MODE.get(m, m) for m in b.modes + c.modes}))
    steps = (
        f"{cmp.steps_compared} common steps ({cmp.step_range[0]}-{cmp.step_range[1]})"
        if cmp.step_range
        else "no steps compared"
    )
    return (
        f"Base `{_code(b.label)}` (run {_esc(b.run_id)}, {b.world_size} rank(s)) -> candidate "
        f"`{_code(c.label)}` (run {_esc(c.run_id)}, {c.world_size} rank(s)); {modes}; {steps}."
    )


def _checks_table(cmp: Comparison) -> list[str]:
    conf = f"{100 * cmp.thresholds.confidence:.0f}% interval"
    lines = [
        f"| check (job) | base | candidate | change | {conf} | limit | result |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in cmp.job_checks():
        lines.append(
            f"| {check_label(c)} | {format_value(c, c.base)} | {format_value(c, c.cand)} | {format_change(c, c.change)} | "
            f"{format_change(c, c.change_low)} to {format_change(c, c.change_high)} | {format_limit(c)} | {RESULT[c.outcome]} |"
        )
    return lines


def _ranks_table(cmp: Comparison, ranks: list[int]) -> list[str]:
    lines = [
        "### Per rank (where it happened; the job's checks above decide)",
        "",
        "| rank | step time | compute share | past the limit beyond noise |",
        "| ---: | ---: | ---: | --- |",
    ]
    for rank in ranks:
        own = {c.metric: c for c in cmp.checks if c.rank == rank}
        step, compute = own[STEP_TIME], own[COMPUTE_SHARE]
        grew = [
            f"{c.metric} {format_change(c, c.change)}"
            for c in own.values()
            if c.outcome is Outcome.REGRESSED and c.metric not in (STEP_TIME, COMPUTE_SHARE)
        ]
        if compute.outcome is Outcome.REGRESSED:
            grew.insert(0, f"compute share {compute.change:+.1f} pp")
        lines.append(
            f"| {rank} | {step.base:.1f} -> {step.cand:.1f} ms ({step.change:+.1f}%) | "
            f"{compute.base:.1f}% -> {compute.cand:.1f}% | {', '.join(grew) or '-'} |"
        )
    return lines


def _method(cmp: Comparison) -> str:
    th = cmp.thresholds
    return (
        f"<sub>A check fails when its change is past the limit across its whole {100 * th.confidence:.0f}% "
        f"interval ({th.resamples} paired bootstrap resamples of the common steps, seed {th.seed}; "
        f"{th.warmup_steps} warm-up step(s) left out). Category changes are in percent of the base run's mean "
        "step time. The job view takes each category on the rank where it was largest, and of `sync` only what "
        "every rank waited.</sub>"
    )


def _sentence(c: Check) -> str:
    if c.metric == STEP_TIME:
        return f"step time {c.base:.1f} -> {c.cand:.1f} ms ({c.change:+.1f}%)"
    if c.metric == COMPUTE_SHARE:
        return f"compute share {c.base:.1f}% -> {c.cand:.1f}% ({c.change:+.1f} pp)"
    return f"{c.metric} {c.base:.1f} -> {c.cand:.1f} ms/step ({c.change:+.1f}% of base step time)"


def _esc(text: str) -> str:
    """Plain text safe inside a GFM table cell: no pipes, HTML, code spans or line breaks."""
    for a, b in (
        ("\\", "\\\\"),
        ("|", "\\|"),
        ("`", "\\`"),
        ("<", "&lt;"),
        (">", "&gt;"),
        ("*", "\\*"),
        ("_", "\\_"),
    ):
        text = text.replace(a, b)
    return " ".join(text.split())


def _code(text: str) -> str:
    """Text for inside a code span: backticks and pipes cannot end it or the table."""
    return " ".join(text.replace("`", "'").replace("|", "/").split())
