"""The noise model: how much of a change between two runs their own step-to-step spread explains.

Both runs are resampled over the steps they share: a paired bootstrap (one draw of step ids serves both
runs, so a step of the base is always set against the same step of the candidate) of blocks of consecutive
steps (a circular block bootstrap, see `_counts`), and each statistic is recomputed on every resample. The percentile interval of the change is what the
step-to-step spread allows; a change counts only when that interval excludes zero. The random generator
is seeded, so a comparison of the same two runs gives the same intervals every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_CHUNK_CELLS = 4_000_000
"""Resamples are drawn in chunks of at most this many (resample, step) counts (32 MB of int64)."""


@dataclass(frozen=True, slots=True)
class AlignedSteps:
    """One unit (a rank, or all ranks) of both runs over the steps they share, in the same step order."""

    base_wall_ms: np.ndarray
    """Shape (n,): wall time of each step, milliseconds."""
    cand_wall_ms: np.ndarray
    base_category_ms: np.ndarray
    """Shape (n, k): time of each category in each step, milliseconds (columns in `categories` order)."""
    cand_category_ms: np.ndarray
    categories: tuple[str, ...]

    @property
    def n(self) -> int:
        return int(self.base_wall_ms.size)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A change with its interval: `value` on all steps, [`low`, `high`] over the resamples."""

    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class UnitEstimates:
    """Every statistic compare checks, for one unit."""

    base_step_median_ms: float
    cand_step_median_ms: float
    step_time_pct: Estimate
    """Change of the median step wall time, percent of the base median."""
    base_compute_share_pct: float
    cand_compute_share_pct: float
    compute_share_pp: Estimate
    """Change of compute's share of all step wall time, percentage points."""
    base_category_ms: dict[str, float]
    """Mean milliseconds per step of each category."""
    cand_category_ms: dict[str, float]
    category_pct: dict[str, Estimate]
    """Change of each category's mean time per step, percent of the base run's mean step time."""


def estimate(
    steps: AlignedSteps, *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> UnitEstimates:
    """Point values and paired-bootstrap intervals of every statistic for one unit (needs n >= 1)."""
    if steps.n < 1:
        raise ValueError("no steps to compare")
    compute = steps.categories.index("compute")
    ones = np.ones((1, steps.n), dtype=np.int64)
    point = _statistics(steps, ones, compute)
    draws = [_statistics(steps, c, compute) for c in _counts(steps.n, resamples, seed)]
    boot = {key: np.concatenate([d[key] for d in draws]) for key in point}
    tail = 100.0 * (1.0 - confidence) / 2.0

    def interval(key: str, col: int | None = None) -> Estimate:
        values = boot[key] if col is None else boot[key][:, col]
        low, high = np.percentile(values, [tail, 100.0 - tail])
        v = point[key][0] if col is None else point[key][0, col]
        return Estimate(value=float(v), low=float(low), high=float(high))

    base_mean = steps.base_category_ms.mean(axis=0)
    cand_mean = steps.cand_category_ms.mean(axis=0)
    base_share = 100.0 * base_mean[compute] / max(float(steps.base_wall_ms.mean()), 1e-12)
    cand_share = 100.0 * cand_mean[compute] / max(float(steps.cand_wall_ms.mean()), 1e-12)
    return UnitEstimates(
        base_step_median_ms=float(np.median(steps.base_wall_ms)),
        cand_step_median_ms=float(np.median(steps.cand_wall_ms)),
        step_time_pct=interval("step_time_pct"),
        base_compute_share_pct=float(base_share),
        cand_compute_share_pct=float(cand_share),
        compute_share_pp=interval("compute_share_pp"),
        base_category_ms={c: float(v) for c, v in zip(steps.categories, base_mean)},
        cand_category_ms={c: float(v) for c, v in zip(steps.categories, cand_mean)},
        category_pct={c: interval("category_pct", i) for i, c in enumerate(steps.categories)},
    )


def _statistics(steps: AlignedSteps, counts: np.ndarray, compute: int) -> dict[str, np.ndarray]:
    """Every statistic for each row of `counts` (how often each step is drawn; a row sums to n)."""
    base_med = _weighted_median(steps.base_wall_ms, counts)
    cand_med = _weighted_median(steps.cand_wall_ms, counts)
    base_wall = counts @ steps.base_wall_ms
    cand_wall = counts @ steps.cand_wall_ms
    base_cat = counts @ steps.base_category_ms
    cand_cat = counts @ steps.cand_category_ms
    safe_base_wall = np.maximum(base_wall, 1e-12)
    return {
        "step_time_pct": 100.0 * (cand_med - base_med) / np.maximum(base_med, 1e-12),
        "compute_share_pp": 100.0
        * (cand_cat[:, compute] / np.maximum(cand_wall, 1e-12) - base_cat[:, compute] / safe_base_wall),
        # sums over the same n draws: (mean cand - mean base) / mean base step, percent
        "category_pct": 100.0 * (cand_cat - base_cat) / safe_base_wall[:, None],
    }


def _weighted_median(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The median of each resample given as draw counts per value (rows of `counts`), without expanding."""
    n = int(counts[0].sum())
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    cumulative = np.cumsum(counts[:, order], axis=1)
    lo = np.argmax(cumulative > (n - 1) // 2, axis=1)
    hi = np.argmax(cumulative > n // 2, axis=1)
    return (ordered[lo] + ordered[hi]) / 2.0


def block_length(n: int) -> int:
    """Steps per block of the circular block bootstrap: about n^(1/3) (2 for 8 steps, 3 for 27, 5 for 125)."""
    return max(1, min(n, round(n ** (1.0 / 3.0))))


def _counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Draw counts of `resamples` circular block bootstrap resamples of n steps, in chunks (seeded).

    Blocks of consecutive steps, not single steps, are drawn: what happens in runs of steps stays together,
    a burst of load lasting a few steps (so the interval is not too narrow) as well as a schedule such as a
    checkpoint every other step (so the share of checkpoint steps barely changes between resamples, and
    the interval is not too wide).
    """
    rng = np.random.default_rng(seed)
    length = block_length(n)
    blocks = -(-n // length)
    chunk = max(1, min(resamples, _CHUNK_CELLS // max(n, 1)))
    done = 0
    while done < resamples:
        b = min(chunk, resamples - done)
        starts = rng.integers(0, n, size=(b, blocks))
        steps = (starts[:, :, None] + np.arange(length)).reshape(b, -1)[:, :n] % n
        flat = (steps + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n)
        done += b
