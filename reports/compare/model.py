"""What `gpuwatch compare` decides, as frozen records: the thresholds, every check with its interval, the
evidence that grew, and the verdict. `Comparison.to_json()` is the documented `compare --json` document."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gpuwatch.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from gpuwatch.records import CATEGORIES

CATEGORY_NAMES: tuple[str, ...] = tuple(c.value for c in CATEGORIES)
"""The budget categories in their fixed order (the same tuple as `gpuwatch.attribution.summary`'s; taken
from the records here so the CLI can read this module's defaults without importing numpy and the engine)."""

IDLE_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORY_NAMES if c != "compute")
"""The categories a regression can grow in (everything but compute)."""

STEP_TIME = "step_time"
COMPUTE_SHARE = "compute_share"


class Outcome(StrEnum):
    """The result of one check."""

    REGRESSED = "regressed"
    """Worse by more than its limit, and beyond what the runs' own step-to-step spread explains."""
    NOISE = "within_noise"
    """Worse by more than its limit, but the interval of the change includes no change at all."""
    OK = "ok"
    """Within its limit."""
    IMPROVED = "improved"
    """Better by more than the limit, beyond the spread."""
    NOT_GATED = "not_gated"
    """Worse by more than the default limit beyond the spread, but not gated: step time and compute share
    of CPU-only runs, unless a limit is given (see DEFAULT_STEP_TIME_INCREASE_PCT)."""


class Verdict(StrEnum):
    """The answer for the whole comparison, and the exit code that goes with it."""

    PASS = "pass"
    REGRESSION = "regression"
    UNDECIDED = "undecided"
    """Too few steps to tell a change from noise: said, not guessed."""
    INCOMPARABLE = "incomparable"
    """The runs measure different things (world size, steps, device vs CPU-only basis)."""

    @property
    def exit_code(self) -> int:
        return {"pass": EXIT_OK, "regression": EXIT_RUNTIME}.get(self.value, EXIT_USAGE)


DEFAULT_STEP_TIME_INCREASE_PCT = 10.0
"""On device runs. CPU-only runs share their cores with everything else on the machine: identical runs of
the reference trainer moved by up to 2x in step time on a busy 2-core machine, and a CPU program whose
steps wait on input moved its compute share by 20 points as its math ran faster or slower (the notes of
benchmarks/compare_noise.py). There step time and compute share are shown, and gated only when a limit is
given; the idle categories, which are what a regression grows, are gated everywhere."""
DEFAULT_COMPUTE_DROP_PP = 5.0
"""On device runs; CPU-only runs: see DEFAULT_STEP_TIME_INCREASE_PCT."""
DEFAULT_CATEGORY_INCREASE_PP = 5.0
DEFAULT_MIN_STEPS = 5
DEFAULT_WARMUP_STEPS = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """How much worse a run may get before compare calls it a regression, and how it measures noise."""

    step_time_increase_pct: float | None = None
    """Median step wall time may grow by this percent of the base median. None: 10% on device runs, not
    gated on CPU-only runs (DEFAULT_STEP_TIME_INCREASE_PCT says why)."""
    compute_drop_pp: float | None = None
    """Compute's share of step wall time may drop by this many percentage points. None: 5 on device runs,
    not gated on CPU-only runs."""
    category_increase_pp: Mapping[str, float] = field(
        default_factory=lambda: dict.fromkeys(IDLE_CATEGORIES, DEFAULT_CATEGORY_INCREASE_PP)
    )
    """Per idle category: its mean time per step may grow by this many percent of the base mean step time."""
    min_steps: int = DEFAULT_MIN_STEPS
    """Fewer common steps than this (after warm-up): undecided."""
    warmup_steps: int = DEFAULT_WARMUP_STEPS
    """The first steps of each run left out of every statistic (start-up: workers, caches, compilation)."""
    confidence: float = 0.95
    """Two-sided confidence of the bootstrap intervals."""
    resamples: int = 2000
    seed: int = 0
    """Seed of the bootstrap: the same two runs always give the same intervals."""

    def step_time_limit(self, device: bool) -> float | None:
        """The step time limit in force for a run of this kind (None: shown, not gated)."""
        if self.step_time_increase_pct is not None:
            return self.step_time_increase_pct
        return DEFAULT_STEP_TIME_INCREASE_PCT if device else None

    def compute_drop_limit(self, device: bool) -> float | None:
        """The compute share limit in force for a run of this kind (None: shown, not gated)."""
        if self.compute_drop_pp is not None:
            return self.compute_drop_pp
        return DEFAULT_COMPUTE_DROP_PP if device else None

    def category_limit(self, category: str) -> float:
        return float(self.category_increase_pp.get(category, DEFAULT_CATEGORY_INCREASE_PP))

    def to_json(self) -> dict[str, Any]:
        return {
            "step_time_increase_pct": self.step_time_increase_pct,
            "compute_drop_pp": self.compute_drop_pp,
            "category_increase_pp": {c: self.category_limit(c) for c in IDLE_CATEGORIES},
            "min_steps": self.min_steps,
            "warmup_steps": self.warmup_steps,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One statistic of one unit (a rank, or all ranks together) compared against its limit."""

    metric: str
    """"step_time", "compute_share", or an idle category name."""
    rank: int | None
    """None: the job (per step, each category on the rank where it was largest; `sync` only what every
    rank waited); decides the verdict.
    A rank's own checks say where a change happened and never fail the comparison on their own."""
    base: float
    """Base value: step_time -> median step ms; compute_share -> percent; a category -> mean ms per step."""
    cand: float
    """Candidate value, in the unit of `base`."""
    change: float
    """step_time -> percent of the base median; compute_share -> percentage points; a category ->
    percent of the base run's mean step time (so the category changes add up to the step time change)."""
    change_low: float
    """Lower end of the bootstrap interval of `change`."""
    change_high: float
    limit: float | None
    """The allowed change, signed in the bad direction (compute_share: negative); None: not gated."""
    outcome: Outcome

    @property
    def unit(self) -> str:
        return "job" if self.rank is None else f"rank {self.rank}"

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "rank": self.rank,
            "base": self.base,
            "cand": self.cand,
            "change": self.change,
            "change_interval": [self.change_low, self.change_high],
            "limit": self.limit,
            "outcome": self.outcome.value,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceGrowth:
    """A named region of a regressed category that takes longer per step in the candidate."""

    rank: int
    category: str
    name: str
    base_ms_per_step: float | None
    """None: not among the base run's top regions of this category (so at most its smallest one)."""
    cand_ms_per_step: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSide:
    """What compare read for one side."""

    label: str
    """The path as given on the command line."""
    run_id: str
    world_size: int
    modes: tuple[str, ...]
    """Per rank: "device" (device kernels measured) or "host" (CPU-only: compute is the thread's math)."""
    steps: int
    """Steps of the rank with the fewest."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """The whole answer of `gpuwatch compare BASE CAND`."""

    verdict: Verdict
    base: RunSide
    cand: RunSide
    thresholds: Thresholds
    steps_compared: int
    """Common steps both runs were compared over (after warm-up)."""
    step_range: tuple[int, int] | None
    """First and last step id compared; None when none were."""
    reasons: tuple[str, ...]
    """Why there is no pass/regression verdict (incomparable or undecided); empty otherwise."""
    checks: tuple[Check, ...]
    evidence: tuple[EvidenceGrowth, ...]

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    def with_outcome(self, *outcomes: Outcome) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.outcome in outcomes)

    def job_checks(self) -> tuple[Check, ...]:
        """The checks that decide the verdict (the job's critical path)."""
        return tuple(c for c in self.checks if c.rank is None)

    def job_check(self, metric: str) -> Check | None:
        return next((c for c in self.checks if c.rank is None and c.metric == metric), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "exit_code": self.exit_code,
            "reasons": list(self.reasons),
            "base": _side_json(self.base),
            "cand": _side_json(self.cand),
            "steps_compared": self.steps_compared,
            "step_range": None if self.step_range is None else list(self.step_range),
            "thresholds": self.thresholds.to_json(),
            "regressed": [c.metric for c in self.job_checks() if c.outcome is Outcome.REGRESSED],
            "improved": [c.metric for c in self.job_checks() if c.outcome is Outcome.IMPROVED],
            "checks": [c.to_json() for c in self.checks],
            "evidence": [
                {
                    "rank": e.rank,
                    "category": e.category,
                    "name": e.name,
                    "base_ms_per_step": e.base_ms_per_step,
                    "cand_ms_per_step": e.cand_ms_per_step,
                }
                for e in self.evidence
            ],
        }


def _side_json(side: RunSide) -> dict[str, Any]:
    return {
        "label": side.label,
        "run_id": side.run_id,
        "world_size": side.world_size,
        "modes": list(side.modes),
        "steps": side.steps,
    }
