"""How a check's numbers read, in one place for the Markdown and the JUnit reports."""

from __future__ import annotations

from reports.compare.model import COMPUTE_SHARE, STEP_TIME, Check


def check_label(c: Check) -> str:
    return {STEP_TIME: "step time (median)", COMPUTE_SHARE: "compute share"}.get(c.metric, c.metric)


def format_value(c: Check, v: float) -> str:
    if c.metric == STEP_TIME:
        return f"{v:.1f} ms"
    if c.metric == COMPUTE_SHARE:
        return f"{v:.1f}%"
    return f"{v:.1f} ms/step"


def format_change(c: Check, v: float) -> str:
    return f"{v:+.1f} pp" if c.metric == COMPUTE_SHARE else f"{v:+.1f}%"


def format_limit(c: Check) -> str:
    if c.limit is None:
        return "not gated (CPU-only run)"
    return format_change(c, c.limit)
