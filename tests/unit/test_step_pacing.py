"""Which steps a watch observes (capture/step_pacing.py), and how the budget splits the steps it did not.

The pacer's choices are checked against their definition (share of blocks, nesting, no preference for any
phase of a periodic loop, the cost bound); the engine's split against a planted run whose every category
is known, in observed and unobserved steps alike.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpuwatch.attribution.budget import compute_rank_budget
from gpuwatch.capture import step_pacing as sp
from gpuwatch.records import CATEGORIES, SpanColumns

CAT = {c.value: i for i, c in enumerate(CATEGORIES)}


@pytest.mark.parametrize("shift", [1, 2, 3, 4, 6])
def test_one_block_in_two_to_the_k_is_observed(shift: int) -> None:
    n = 64_000
    picked = np.array([sp.observed(b, shift) for b in range(n)])
    assert abs(picked.sum() - n / 2**shift) <= 0.002 * n
    # every phase of a loop with a period (a checkpoint every 4 or 12 blocks) is observed as often
    for period in (4, 12):
        phase = np.arange(n) % period
        shares = [picked[phase == p].mean() for p in range(period)]
        assert max(shares) - min(shares) < 0.25 / 2**shift, (period, shares)
    # a rank that thins more observes a subset of what one that thins less does
    finer = np.array([sp.observed(b, shift - 1) for b in range(n)])
    assert not (picked & ~finer).any()


def test_shift_is_the_smallest_that_meets_the_target() -> None:
    for step_ms in (0.5, 1, 3, 10, 30, 100, 1000):
        for regions in (1, 5, 20):
            k = sp.shift_for(step_ms * 1e6, regions)
            cost = sp.COST_PER_STEP_NS + regions * sp.COST_PER_REGION_NS
            allowed = sp.OVERHEAD_TARGET * step_ms * 1e6
            if k < sp.MAX_SHIFT:
                assert cost <= allowed * 2**k
            if k > 0:
                assert cost > allowed * 2 ** (k - 1)
    assert sp.shift_for(100e6, 6) == 0  # a 100 ms step is observed whole


def drive(step_ms: float, regions: int, steps: int, enabled: bool = True) -> tuple[np.ndarray, sp.StepPacer]:
    """Feed a pacer constant steps; returns which of them it observed."""
    pacer = sp.StepPacer(enabled=enabled)
    seen = np.zeros(steps, dtype=bool)
    seen[0] = True
    for i in range(steps - 1):
        seen[i + 1] = pacer.next_observed(i, int(step_ms * 1e6), regions, bool(seen[i]))
    return seen, pacer


def test_short_steps_are_observed_in_blocks_of_at_least_100_ms() -> None:
    seen, pacer = drive(3.0, 5, 40_000)
    assert seen[: sp.FULL_STEPS].all()
    block = 2**pacer.block_shift
    assert block * 3.0e6 >= sp.BLOCK_MIN_NS > block * 3.0e6 / 2
    k = pacer.shift
    assert k == sp.shift_for(3.0e6, 5) > 0
    # after the first choice has taken effect, whole blocks are observed or not
    tail = seen[block * 2 :]
    tail = tail[: tail.size // block * block].reshape(-1, block)
    assert ((tail.sum(axis=1) == 0) | (tail.sum(axis=1) == block)).all()
    share = tail[:, 0].mean()
    assert abs(share - 2**-k) < 0.3 * 2**-k


def test_long_steps_and_a_disabled_pacer_observe_every_step() -> None:
    assert drive(150.0, 8, 2_000)[0].all()
    assert drive(1.0, 8, 2_000, enabled=False)[0].all()


# ---- the budget of unobserved steps -----------------------------------------------------------------------
STEP_NS = 1_000_000
TID = 7


def planted(observed: list[bool], ckpt_every: int, warm_ns: int = 0) -> tuple[SpanColumns, np.ndarray]:
    """Steps of 1 ms. Observed steps: compute 0-600 us, data_loading 600-900 us, nothing 900-1000 us; a
    checkpoint write takes the first 300 us of every `ckpt_every`-th step (before compute, which shifts).
    Unobserved steps carry only their step span and their checkpoint write, as a thinned watch writes them.
    `warm_ns`: a warm-up step of that long before them, observed, with nothing but its step span (all of it
    unattributed). Returns the columns and the expected (steps, 8) budget of the 1 ms steps."""
    rows: list[tuple[str, str | None, int, int, str | None]] = []  # kind, category, start, end, attrs
    expected = np.zeros((len(observed), len(CATEGORIES)), dtype=np.int64)
    if warm_ns:
        rows.append(("step", None, -warm_ns, 0, None))
    for i, seen in enumerate(observed):
        t0 = i * STEP_NS
        rows.append(("step", None, t0, t0 + STEP_NS, None if seen else json.dumps({"observed": False})))
        ckpt = 300_000 if i % ckpt_every == 0 else 0
        if ckpt:
            rows.append(("phase", "checkpoint_io", t0, t0 + ckpt, None))
        expected[i, CAT["checkpoint_io"]] = ckpt
        if seen:
            rest = STEP_NS - ckpt
            rows.append(("phase", "compute", t0 + ckpt, t0 + ckpt + rest * 6 // 10, None))
            rows.append(
                ("phase", "data_loading", t0 + ckpt + rest * 6 // 10, t0 + ckpt + rest * 9 // 10, None)
            )
            expected[i, CAT["compute"]] = rest * 6 // 10
            expected[i, CAT["data_loading"]] = rest * 9 // 10 - rest * 6 // 10
            expected[i, CAT["unattributed"]] = STEP_NS - ckpt - rest * 9 // 10
    n = len(rows)
    cols = SpanColumns(
        rank=np.zeros(n, dtype=np.int32),
        pid=np.ones(n, dtype=np.int64),
        tid=np.full(n, TID, dtype=np.int64),
        stream=np.full(n, -1, dtype=np.int64),
        device_index=np.full(n, -1, dtype=np.int32),
        kind=np.array([r[0] for r in rows], dtype=object),
        category=np.array([r[1] for r in rows], dtype=object),
        name=np.array([f"{r[0]} {r[1]}" for r in rows], dtype=object),
        start_ns=np.array([r[2] for r in rows], dtype=np.int64),
        end_ns=np.array([r[3] for r in rows], dtype=np.int64),
        step=np.array([r[2] // STEP_NS + 1 if r[0] == "step" else -1 for r in rows], dtype=np.int64),
        bytes=np.full(n, -1, dtype=np.int64),
        correlation=np.full(n, -1, dtype=np.int64),
        seq=np.full(n, -1, dtype=np.int64),
        attrs=np.array([r[4] for r in rows], dtype=object),
    )
    return cols, expected


def test_unobserved_steps_take_the_observed_split_and_keep_their_checkpoints() -> None:
    observed = [True] * 8 + [i % 4 == 0 for i in range(8, 200)]
    cols, expected = planted(observed, ckpt_every=5)
    budget = compute_rank_budget(0, cols, include_warmup=True)
    got = budget.step_category_ns
    seen = np.array(observed)
    assert (got.sum(axis=1) == STEP_NS).all()  # every step still sums to its wall time
    np.testing.assert_array_equal(got[seen], expected[seen])  # observed steps as measured
    np.testing.assert_array_equal(got[:, CAT["checkpoint_io"]], expected[:, CAT["checkpoint_io"]])
    # the rest of an unobserved step: 60 / 30 / 10 like the observed steps' time outside checkpoints
    rest = STEP_NS - expected[~seen, CAT["checkpoint_io"]]
    for name, share in (("compute", 0.6), ("data_loading", 0.3), ("unattributed", 0.1)):
        np.testing.assert_allclose(got[~seen, CAT[name]], rest * share, atol=2)
    # so the run's total is the planted truth of a run observed whole
    _, whole = planted([True] * len(observed), ckpt_every=5)
    totals, truth = got.sum(axis=0), whole.sum(axis=0)
    np.testing.assert_allclose(totals, truth, atol=len(observed) * 2)


def test_a_run_observed_whole_is_untouched_by_the_split() -> None:
    cols, expected = planted([True] * 40, ckpt_every=3)
    np.testing.assert_array_equal(
        compute_rank_budget(0, cols, include_warmup=True).step_category_ns, expected
    )


def test_a_warm_up_step_is_no_sample_of_the_steps_after_it() -> None:
    """A slow first step (all unattributed here) is left out of the budget as warm-up; the split given to
    unobserved steps comes from the observed steps after it, as if it were not there."""
    observed = [True] * 8 + [i % 4 == 0 for i in range(8, 200)]
    with_warm, expected = planted(observed, ckpt_every=5, warm_ns=40 * STEP_NS)
    budget = compute_rank_budget(0, with_warm)
    assert budget.warmup is not None and budget.warmup.step_ids.size == 1
    without, _ = planted(observed, ckpt_every=5)
    np.testing.assert_array_equal(
        budget.step_category_ns, compute_rank_budget(0, without, include_warmup=True).step_category_ns
    )
