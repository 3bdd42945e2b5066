"""`compare(base, cand)`: two typed Summaries -> a Comparison with a noise-aware verdict.

The verdict is decided on the job: per step, each category on the rank where it was largest, except
`sync`, which counts only what every rank waited (see `_job`). That view is steady where a rank-by-rank one
is not: when the machine slows one rank down, the other ranks' waiting grows, but the job view only shows
the slow rank computing for longer. Rank 0's checkpoint or one rank's starving input pipeline still shows
in full, and every rank's own checks are shown to say where. A check fails only when its change is past the limit AND
the paired-bootstrap interval of the change excludes zero (noise.py); past the limit but inside the spread
is reported as within noise, never as a regression.
"""

from __future__ import annotations

import numpy as np

from gpuwatch.attribution.summary import CATEGORY_NAMES, RankSummary, Summary
from reports.compare.model import (
    COMPUTE_SHARE,
    DEFAULT_COMPUTE_DROP_PP,
    DEFAULT_STEP_TIME_INCREASE_PCT,
    IDLE_CATEGORIES,
    STEP_TIME,
    Check,
    Comparison,
    EvidenceGrowth,
    Outcome,
    RunSide,
    Thresholds,
    Verdict,
)
from reports.compare.noise import AlignedSteps, Estimate, UnitEstimates, estimate

MODE_WORDS = {"device": "device kernels (a GPU run)", "host": "the host only (a CPU-only run)"}


def compare(
    base: Summary,
    cand: Summary,
    thresholds: Thresholds | None = None,
    *,
    base_label: str = "base",
    cand_label: str = "candidate",
) -> Comparison:
    """Compare a candidate run against a base run; never raises for runs that cannot be compared (the
    Comparison says why, with verdict INCOMPARABLE or UNDECIDED)."""
    th = thresholds or Thresholds()
    sides = (_side(base, base_label), _side(cand, cand_label))

    def without_verdict(verdict: Verdict, reasons: list[str], steps: list[int] | None = None) -> Comparison:
        return Comparison(
            verdict=verdict,
            base=sides[0],
            cand=sides[1],
            thresholds=th,
            steps_compared=len(steps or []),
            step_range=(steps[0], steps[-1]) if steps else None,
            reasons=tuple(reasons),
            checks=(),
            evidence=(),
        )

    reasons = incomparable_reasons(base, cand)
    if reasons:
        return without_verdict(Verdict.INCOMPARABLE, reasons)
    steps = common_steps(base, cand, warmup=th.warmup_steps)
    if len(steps) < th.min_steps:
        return without_verdict(
            Verdict.UNDECIDED,
            [
                f"too few steps to tell a change from noise: {len(steps)} common step(s) after leaving out "
                f"{th.warmup_steps} warm-up step(s) of each run, at least {th.min_steps} needed "
                "(train more steps, or lower --min-steps / --warmup-steps)"
            ],
            steps,
        )

    checks: list[Check] = []
    device = all(r.mode == "device" for r in base.ranks)
    # one rank: the job is that rank, and its own checks would repeat the job's
    units: list[int | None] = [None, *(r.rank for r in base.ranks)] if len(base.ranks) > 1 else [None]
    for unit in units:
        aligned = _aligned(base, cand, steps, unit)
        est = estimate(aligned, resamples=th.resamples, confidence=th.confidence, seed=th.seed)
        checks.extend(_unit_checks(unit, est, th, device=device))
    regressed = any(c.outcome is Outcome.REGRESSED for c in checks if c.rank is None)
    return Comparison(
        verdict=Verdict.REGRESSION if regressed else Verdict.PASS,
        base=sides[0],
        cand=sides[1],
        thresholds=th,
        steps_compared=len(steps),
        step_range=(steps[0], steps[-1]),
        reasons=(),
        checks=tuple(checks),
        evidence=_grown_evidence(base, cand, checks),
    )


def incomparable_reasons(base: Summary, cand: Summary) -> list[str]:
    """Why two runs cannot be compared at all (empty: they can)."""
    reasons = []
    b_ranks, c_ranks = [r.rank for r in base.ranks], [r.rank for r in cand.ranks]
    if not b_ranks or not c_ranks:
        empty = "base" if not b_ranks else "candidate"
        return [f"the {empty} run has no ranks with data"]
    if len(b_ranks) != len(c_ranks) or set(b_ranks) != set(c_ranks):
        reasons.append(
            f"different world size: base has {len(b_ranks)} rank(s) {_ranks(b_ranks)}, candidate "
            f"{len(c_ranks)} {_ranks(c_ranks)}; compare runs of the same job shape"
        )
        return reasons
    for b in base.ranks:
        c = cand.rank(b.rank)
        if b.mode != c.mode:
            reasons.append(
                f"rank {b.rank} measured {MODE_WORDS.get(b.mode, b.mode)} in the base run but "
                f"{MODE_WORDS.get(c.mode, c.mode)} in the candidate: compute means different things"
            )
            break
    missing = [
        side for side, s in (("base", base), ("candidate", cand)) if any(r.per_step is None for r in s.ranks)
    ]
    if missing:
        reasons.append(
            f"the {' and '.join(missing)} summary has no per-step data (written by an older gpuwatch); "
            "make it again with `gpuwatch summary --json RUN_DIR`"
        )
    elif not reasons and not _step_ids(base) & _step_ids(cand):
        reasons.append(
            f"no common steps: base has steps {_span(_step_ids(base))}, candidate {_span(_step_ids(cand))}"
        )
    return reasons


def common_steps(base: Summary, cand: Summary, *, warmup: int) -> list[int]:
    """Step ids every rank of both runs has, less each run's first `warmup` steps, in order."""
    common = _step_ids(base) & _step_ids(cand)
    for s in (base, cand):
        for r in s.ranks:
            assert r.per_step is not None
            common -= set(sorted(r.per_step.step)[:warmup])
    return sorted(common)


def _step_ids(summary: Summary) -> set[int]:
    sets = [set(r.per_step.step) for r in summary.ranks if r.per_step is not None]
    return set.intersection(*sets) if sets else set()


def _aligned(base: Summary, cand: Summary, steps: list[int], unit: int | None) -> AlignedSteps:
    bw, bc = _job(base, steps) if unit is None else _rank_steps(base, unit, steps)
    cw, cc = _job(cand, steps) if unit is None else _rank_steps(cand, unit, steps)
    return AlignedSteps(
        base_wall_ms=bw, cand_wall_ms=cw, base_category_ms=bc, cand_category_ms=cc, categories=CATEGORY_NAMES
    )


def _rank_steps(summary: Summary, rank: int, steps: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One rank's wall ms (n,) and category ms (n, 8) over `steps`, in that order."""
    ps = summary.rank(rank).per_step
    assert ps is not None
    pos = {s: i for i, s in enumerate(ps.step)}
    rows = [pos[s] for s in steps]
    cats = np.zeros((len(steps), len(CATEGORY_NAMES)))
    for j, c in enumerate(CATEGORY_NAMES):
        values = ps.category(c)
        if values:
            cats[:, j] = np.asarray(values, dtype=float)[rows]
    return np.asarray(ps.wall_ms, dtype=float)[rows], cats


def _job(summary: Summary, steps: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The job's view of each step: its wall time and every category on the rank where it was largest,
    except `sync`, which counts only what every rank waited (the least over ranks): time a rank spends
    waiting for a straggler is counted where the straggler spent it (its compute, its checkpoint...)."""
    per_rank = [_rank_steps(summary, r.rank, steps) for r in summary.ranks]
    walls = np.stack([w for w, _ in per_rank])  # (ranks, n)
    cats = np.stack([c for _, c in per_rank])  # (ranks, n, 8)
    job = cats.max(axis=0)
    sync = CATEGORY_NAMES.index("sync")
    job[:, sync] = cats[:, :, sync].min(axis=0)
    return walls.max(axis=0), job


def _unit_checks(rank: int | None, est: UnitEstimates, th: Thresholds, *, device: bool) -> list[Check]:
    checks = [
        _check(
            STEP_TIME,
            rank,
            est.base_step_median_ms,
            est.cand_step_median_ms,
            est.step_time_pct,
            th.step_time_limit(device),
            reference=DEFAULT_STEP_TIME_INCREASE_PCT,
        ),
        _check(
            COMPUTE_SHARE,
            rank,
            est.base_compute_share_pct,
            est.cand_compute_share_pct,
            est.compute_share_pp,
            th.compute_drop_limit(device),
            reference=DEFAULT_COMPUTE_DROP_PP,
            lower_is_worse=True,
        ),
    ]
    for c in IDLE_CATEGORIES:
        limit = th.category_limit(c)
        checks.append(
            _check(
                c,
                rank,
                est.base_category_ms[c],
                est.cand_category_ms[c],
                est.category_pct[c],
                limit,
                reference=limit,
            )
        )
    return checks


def _check(
    metric: str,
    rank: int | None,
    base: float,
    cand: float,
    change: Estimate,
    limit: float | None,
    *,
    reference: float,
    lower_is_worse: bool = False,
) -> Check:
    """Judge one change. `limit` None: not gated; the outcome is then judged against `reference` (the
    device default) and a would-be regression is reported as NOT_GATED, improvements as IMPROVED."""
    sign = -1.0 if lower_is_worse else 1.0
    worse, low, high = sign * change.value, sign * change.low, sign * change.high
    bound = limit if limit is not None else reference
    if worse > bound:
        # past the limit at the near end of the interval too, not only on average: one slow step (a
        # first checkpoint, a scheduler hiccup) moves a mean past a limit, but not its whole interval
        outcome = Outcome.REGRESSED if min(low, high) > bound else Outcome.NOISE
        if limit is None and outcome is Outcome.REGRESSED:
            outcome = Outcome.NOT_GATED
    elif worse < -bound and max(low, high) < -bound:
        outcome = Outcome.IMPROVED
    else:
        outcome = Outcome.OK
    return Check(
        metric=metric,
        rank=rank,
        base=base,
        cand=cand,
        change=change.value,
        change_low=change.low,
        change_high=change.high,
        limit=None if limit is None else sign * limit,
        outcome=outcome,
    )


def _grown_evidence(base: Summary, cand: Summary, checks: list[Check]) -> tuple[EvidenceGrowth, ...]:
    """For every category that regressed in the job: the named regions of it, on any rank, that take
    longer per step in the candidate, largest growth first."""
    regressed = [
        c.metric
        for c in checks
        if c.rank is None and c.outcome is Outcome.REGRESSED and c.metric in IDLE_CATEGORIES
    ]
    out = []
    for category in regressed:
        for rank in (r.rank for r in base.ranks):
            b, c = base.rank(rank), cand.rank(rank)
            before = _per_step(b, category)
            for name, after in _per_step(c, category).items():
                prior = before.get(name)
                if after > (prior or 0.0):
                    out.append(
                        EvidenceGrowth(
                            rank=rank,
                            category=category,
                            name=name,
                            base_ms_per_step=prior,
                            cand_ms_per_step=after,
                        )
                    )
    out.sort(key=lambda e: -(e.cand_ms_per_step - (e.base_ms_per_step or 0.0)))
    return tuple(out)


def _per_step(r: RankSummary, category: str) -> dict[str, float]:
    steps = max(r.steps, 1)
    return {e.name: e.total_ms / steps for e in r.evidence if e.category == category}


def _side(s: Summary, label: str) -> RunSide:
    return RunSide(
        label=label,
        run_id=s.run_id,
        world_size=len(s.ranks),
        modes=tuple(r.mode for r in s.ranks),
        steps=min((r.steps for r in s.ranks), default=0),
    )


def _ranks(ranks: list[int]) -> str:
    return "(" + ", ".join(map(str, sorted(ranks))) + ")"


def _span(ids: set[int]) -> str:
    return f"{min(ids)}-{max(ids)}" if ids else "none"
