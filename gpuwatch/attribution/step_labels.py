"""Stages and tags: the labels `gw.step(stage=..., tags=...)` put on steps, and the budget split by them.

A step span carries `attrs = {"stage": "video_256", "tags": {"source": "video_hr"}}` (capture/watch.py): the
stage persists from the step that names it until another is named, the tags describe that step alone.
Here each rank's budget rows get their labels (`StepLabels`), the budget is summed per stage and per tag
value (`group_rows`), and the cross-rank waits per step say which tag value makes the slow rank slow
(`tag_cause`): the value in whose steps a rank is waited for most and waits least itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from gpuwatch.attribution.budget import RankBudget
from gpuwatch.attribution.value_codes import kind_is
from gpuwatch.records import SpanColumns, SpanKind

NO_STAGE = "(none)"
"""The stage of steps before the first one a stage was named for (only when some step has a stage)."""
MIN_TAG_STEPS = 2
"""A tag value needs this many steps on a rank (and the rank this many without it) to be compared."""


@dataclass(frozen=True, slots=True)
class StepLabels:
    """The labels of one rank's budget rows (aligned with `RankBudget.step_ids`)."""

    stage: np.ndarray
    """Object array: the stage of each row, `NO_STAGE` where none was named yet; empty strings never occur."""
    tags: dict[str, np.ndarray]
    """Per tag key, an object array: the value of each row, None where that step had no such tag."""
    has_stages: bool
    """True when any step of the rank named a stage."""


def step_labels(cols: SpanColumns, budget: RankBudget) -> StepLabels:
    """Read the stage and tags of every budget row from the rank's step spans (one loop over steps only)."""
    n = budget.step_ids.size
    stage = np.full(n, NO_STAGE, dtype=object)
    tags: dict[str, np.ndarray] = {}
    mask = kind_is(cols, SpanKind.STEP.value) & (cols.tid == budget.training_tid)
    if cols.attrs is None or n == 0 or not mask.any():
        return StepLabels(stage, tags, False)
    idx = np.flatnonzero(mask)
    idx = idx[np.argsort(cols.start_ns[idx], kind="stable")]
    by_step: dict[int, tuple[str | None, dict[str, str]]] = {}
    current: str | None = None  # a stage persists until a later step names another
    for i in idx.tolist():
        raw = cols.attrs[i]
        attrs = _attrs(raw) if raw else {}
        s = attrs.get("stage")
        if s is not None:
            current = str(s) or NO_STAGE
        t = attrs.get("tags")
        by_step[int(cols.step[i])] = (
            current,
            {str(k): str(v) for k, v in t.items()} if isinstance(t, dict) else {},
        )
    has_stages = False
    for row, step_id in enumerate(budget.step_ids.tolist()):
        s_name, t_vals = by_step.get(int(step_id), (None, {}))
        if s_name is not None:
            stage[row] = s_name
            has_stages = True
        for key, value in t_vals.items():
            if key not in tags:
                tags[key] = np.full(n, None, dtype=object)
            tags[key][row] = value
    return StepLabels(stage, tags, has_stages)


def _attrs(raw: object) -> dict[str, object]:
    try:
        attrs = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return attrs if isinstance(attrs, dict) else {}


def groups(
    labels: StepLabels,
) -> tuple[list[tuple[str, np.ndarray]], dict[str, list[tuple[str, np.ndarray]]]]:
    """`(stages, tags)`: the row masks of each stage (in order of first appearance), and per tag key the row
    masks of each of its values (sorted by value). No stages when no step named one."""
    stages: list[tuple[str, np.ndarray]] = []
    if labels.has_stages:
        seen: list[str] = []
        for s in labels.stage.tolist():
            if s not in seen:
                seen.append(s)
        stages = [(s, labels.stage == s) for s in seen]
    tags = {
        key: [(v, values == v) for v in sorted({x for x in values.tolist() if x is not None})]
        for key, values in sorted(labels.tags.items())
    }
    return stages, tags


@dataclass(frozen=True, slots=True)
class TagCause:
    """Which tag value makes a rank slow: in the steps where it drew `key=value` it is waited for most."""

    rank: int
    key: str
    value: str
    steps_with: int
    """Steps of the rank with that value (the others: `steps_without`)."""
    steps_without: int
    caused_ms_with: float
    """Mean ms per step the other ranks waited for this rank, in steps where it drew the value."""
    caused_ms_without: float
    waited_ms_with: float
    """Mean ms per step this rank itself waited for others, in those steps."""
    waited_ms_without: float
    share_pct: float
    """Of all waiting this rank caused, the percent in steps where it drew the value."""
    job_share_pct: float
    """Of all waiting in the run, the percent caused by a rank in a step where it drew the value."""

    @property
    def text(self) -> str:
        """One sentence for the straggler line and the recommendation's evidence (in `summary --json`
        beside the fields)."""
        least = "waits least and " if self.waited_ms_with <= self.waited_ms_without else ""
        return (
            f"rank {self.rank} {least}is waited for most in steps where it drew {self.key}={self.value}: "
            f"others waited {self.caused_ms_with:.1f} ms/step for it then vs {self.caused_ms_without:.1f} "
            f"ms/step in its other steps, while it waited {self.waited_ms_with:.1f} vs "
            f"{self.waited_ms_without:.1f} ms/step itself ({self.share_pct:.0f}% of the waiting it caused, "
            f"{self.steps_with} of {self.steps_with + self.steps_without} steps; steps drawing "
            f"{self.key}={self.value} on any rank cause {self.job_share_pct:.0f}% of all waiting)"
        )


def tag_cause(
    rank: int,
    labels: dict[int, StepLabels],
    caused_ns: dict[int, np.ndarray],
    waited_ns: dict[int, np.ndarray],
) -> TagCause | None:
    """The tag value that best explains why `rank` is waited for, or None (no tags, or none explains it).

    Args:
        rank: the rank the others wait for most.
        labels: each rank's step labels.
        caused_ns: per rank, per budget row, the ns other ranks waited for it at collectives it issued then.
        waited_ns: per rank, per budget row, the ns it waited for a later rank.

    The value chosen is the one whose steps carry the largest excess of caused waiting over the rank's
    other steps (mean per step with the value minus without, times its steps); it must be positive.
    """
    own = labels.get(rank)
    caused = caused_ns.get(rank)
    waited = waited_ns.get(rank)
    if own is None or caused is None or waited is None or not own.tags or caused.sum() <= 0:
        return None
    best: tuple[float, str, str, np.ndarray] | None = None
    for key, values in sorted(own.tags.items()):
        for value in sorted({v for v in values.tolist() if v is not None}):
            with_v = values == value
            n_with, n_without = int(with_v.sum()), int((~with_v).sum())
            if n_with < MIN_TAG_STEPS or n_without < MIN_TAG_STEPS:
                continue
            excess = (float(caused[with_v].mean()) - float(caused[~with_v].mean())) * n_with
            if excess > 0 and (best is None or excess > best[0]):
                best = (excess, key, value, with_v)
    if best is None:
        return None
    _, key, value, with_v = best
    total_all = sum(float(c.sum()) for c in caused_ns.values())
    job_with = 0.0
    for r, c in caused_ns.items():
        vals = labels[r].tags.get(key) if r in labels else None
        if vals is not None and vals.size == c.size:
            job_with += float(c[vals == value].sum())
    return TagCause(
        rank=rank,
        key=key,
        value=value,
        steps_with=int(with_v.sum()),
        steps_without=int((~with_v).sum()),
        caused_ms_with=float(caused[with_v].mean()) / 1e6,
        caused_ms_without=float(caused[~with_v].mean()) / 1e6,
        waited_ms_with=float(waited[with_v].mean()) / 1e6,
        waited_ms_without=float(waited[~with_v].mean()) / 1e6,
        share_pct=100.0 * float(caused[with_v].sum()) / float(caused.sum()),
        job_share_pct=100.0 * job_with / total_all if total_all > 0 else 0.0,
    )
