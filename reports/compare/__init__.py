"""`gpuwatch compare`: a CI gate on training efficiency that names the regression and does not cry wolf.

- `engine.compare(base, cand, thresholds)`: two typed Summaries -> a `Comparison` (model.py).
- `noise.py`: the paired bootstrap over common steps that tells a change from step-to-step noise.
- `markdown.render_markdown`, `junit.render_junit`, `Comparison.to_json()`: the three outputs.
- `inputs.load_side`: a run directory or a `gpuwatch summary --json` file.

Like every report it reads `gpuwatch.attribution` and `gpuwatch.store`, never collectors or capture.
"""

from reports.compare.engine import compare
from reports.compare.inputs import load_side
from reports.compare.junit import render_junit
from reports.compare.markdown import render_markdown
from reports.compare.model import Check, Comparison, Outcome, Thresholds, Verdict

__all__ = [
    "Check",
    "Comparison",
    "Outcome",
    "Thresholds",
    "Verdict",
    "compare",
    "load_side",
    "render_junit",
    "render_markdown",
]
