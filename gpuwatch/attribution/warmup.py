"""Warm-up steps: the leading steps of a run that are much slower than the rest, left out of the budget.

The first steps of a training run pay once for things the rest never do again: the allocator growing its
pools, lazy module and optimizer-state initialization, cuDNN autotuning, `torch.compile` tracing and code
generation, DataLoader workers starting. In a short run they skew every share of the budget, so the budget
leaves them out and reports them on their own (`RankBudget.warmup`); `gpuwatch summary --include-warmup`
keeps them.

The rule (documented in README.md, "The time budget"), on the steps of one rank, in order:
- only runs with step markers and at least `MIN_STEPS` steps have a warm-up;
- at most `max_warmup_steps(n)` leading steps: `MAX_WARMUP_STEPS`, and at most a quarter of the others;
- the reference is the median wall time of the steps after that window (never a candidate itself);
- leading steps are warm-up while each is longer than `WARMUP_FACTOR` x the reference and longer than every
  step after the window; the first step that is not ends the warm-up. A slow step later in the run is the
  run's own, never warm-up, and so is a slow first step that later steps match (a checkpoint or an
  evaluation every N steps that also runs at step 0 is a recurring cost, not a warm-up).
"""

from __future__ import annotations

import numpy as np

from gpuwatch.attribution.order_stats import median

WARMUP_FACTOR = 2.0
"""A leading step is warm-up when its wall time exceeds this many times the reference (median) step."""
MAX_WARMUP_STEPS = 3
"""Never more warm-up steps than this, however slow the start."""
MIN_STEPS = 5
"""Runs with fewer steps have no warm-up (too few steps to tell a slow start from the run itself)."""


def max_warmup_steps(n_steps: int) -> int:
    """How many leading steps may be warm-up in a run of `n_steps`: at most a quarter of the others."""
    if n_steps < MIN_STEPS:
        return 0
    return min(MAX_WARMUP_STEPS, (n_steps - 1) // 4)


def warmup_steps(step_ns: np.ndarray, *, from_markers: bool = True) -> tuple[int, int]:
    """The warm-up of one rank: `(count, reference_ns)`.

    Args:
        step_ns: wall time of each step, in order, nanoseconds.
        from_markers: False when the steps were not marked (the whole trace is one step): no warm-up.

    Returns:
        How many leading steps are warm-up (0 for none) and the reference step time they were compared
        with, the median of the steps after the longest possible warm-up (0 when there is no reference).
    """
    window = max_warmup_steps(int(step_ns.size)) if from_markers else 0
    if window == 0:
        return 0, 0
    rest = step_ns[window:]
    reference = int(median(rest))
    bar = max(WARMUP_FACTOR * reference, float(rest.max()))
    count = 0
    while count < window and step_ns[count] > bar:
        count += 1
    return count, reference
