"""`gpuwatch compare`: a CI gate on training efficiency that names the regression and does not cry wolf.

- `engine.compare(base, cand, thresholds)`: two typed Summaries -> a `Comparison` (model.py).
- `noise.py`: the paired bootstrap over common steps that tells a change from step-to-step noise.
- `markdown.render_markdown`, `junit.render_junit`, `Comparison.to_json()`: the three outputs.
- `inputs.load_side`: a run directory or a `gpuwatch summary --json` file.

Like every report it reads `gpuwatch.attribution` and `gpuwatch.store`, never collectors or capture.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "compare": "reports.compare.engine",
    "load_side": "reports.compare.inputs",
    "render_junit": "reports.compare.junit",
    "render_markdown": "reports.compare.markdown",
    "Check": "reports.compare.model",
    "Comparison": "reports.compare.model",
    "Outcome": "reports.compare.model",
    "Thresholds": "reports.compare.model",
    "Verdict": "reports.compare.model",
}
"""Imported on first use (PEP 562): the CLI reads `model`'s defaults to build every parser, and the engine
(numpy, the analysis) costs 0.4 s of interpreter start that `gpuwatch import` and `summary` never need."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reports.compare' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
