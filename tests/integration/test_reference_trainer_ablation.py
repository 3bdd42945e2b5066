"""The ablation's arithmetic on planted summaries: budgets combined over ranks, the table, the promise checks."""

from __future__ import annotations

from pathlib import Path

from reference_trainer.ablation import (
    CATEGORIES,
    Config,
    check,
    fix_effect,
    fix_lines,
    markdown_table,
    read_result,
)


def _summary(
    per_rank_ms: dict[int, dict[str, float]], steps: int = 40, medians: dict[int, float] | None = None
) -> dict:
    ranks = []
    for rank, ms in per_rank_ms.items():
        full = {c: ms.get(c, 0.0) for c in CATEGORIES}
        wall = sum(full.values())
        ranks.append(
            {
                "rank": rank,
                "steps": steps,
                "step_time_ms": {"median": (medians or {}).get(rank, wall)},
                "budget_ms_per_step": full,
                "budget_pct": {c: 100 * v / wall for c, v in full.items()},
            }
        )
    return {"ranks": ranks, "straggler": {"rank": 0}, "recommendations": []}


NAIVE = {
    0: {"compute": 150, "data_loading": 240, "cpu_preprocessing": 300, "sync": 40, "checkpoint_io": 70},
    1: {"compute": 150, "data_loading": 240, "cpu_preprocessing": 300, "sync": 110},
}


def _result(name: str, per_rank: dict, fixes: tuple[str, ...] = ()) -> object:
    config = Config(name, "fixed" if name.startswith("fixed") else "naive", fixes)
    return read_result(config, Path("/nonexistent"), _summary(per_rank))


def test_budget_is_weighted_by_each_ranks_time() -> None:
    r = read_result(
        Config("x", "naive", ()), Path("."), _summary({0: {"compute": 100}, 1: {"compute": 100, "sync": 300}})
    )
    # 100 + 400 ms per step: compute 200 of 500 -> 40%, sync 300 of 500 -> 60% (not the mean of 100% and 25%)
    assert r.budget_pct["compute"] == 40.0 and r.budget_pct["sync"] == 60.0
    assert r.compute_pct_by_rank == {0: 100.0, 1: 25.0}
    assert r.median_step_ms == 250.0  # the median of the two ranks' medians (100 and 400 ms)


def test_promises_hold_and_fail_as_planted() -> None:
    naive = _result("naive", NAIVE)
    singles = [
        _result("+data", {k: {**v, "data_loading": 5} for k, v in NAIVE.items()}, ("data",)),
        _result(
            "+decode",
            {k: {**v, "cpu_preprocessing": 0, "data_loading": 260} for k, v in NAIVE.items()},
            ("decode",),
        ),
        _result("+sync", {0: {**NAIVE[0], "sync": 10}, 1: {**NAIVE[1], "sync": 50}}, ("sync",)),
        _result(
            "+checkpoint", {0: {**NAIVE[0], "checkpoint_io": 5}, 1: {**NAIVE[1], "sync": 50}}, ("checkpoint",)
        ),
    ]
    fixed = _result("fixed (all fixes)", {0: {"compute": 160, "sync": 10}, 1: {"compute": 160, "sync": 15}})
    results = [naive, *singles, fixed]
    assert check(results) == []
    # the checkpoint fix is judged on rank 0, where the checkpoint happens (rank 1 only waited for it)
    drop, rank = fix_effect(naive, singles[3], "checkpoint_io")
    assert rank == 0 and drop["checkpoint_io"] == 65 / 70
    assert fix_lines(results)[3].startswith("+checkpoint: checkpoint_io 70 -> 5 ms/step on rank 0 (-93%")
    table = markdown_table(results)
    assert table.splitlines()[2].startswith("| naive | 800 | 18.8 |")
    assert "| fixed (all fixes) | 172 |" in table and "4.64x" in table

    slow_fixed = _result(
        "fixed (all fixes)", {0: {"compute": 160, "sync": 300}, 1: {"compute": 160, "sync": 300}}
    )
    wrong_fix = _result("+data", {k: {**v, "sync": 0} for k, v in NAIVE.items()}, ("data",))
    weak_fix = _result("+decode", {k: {**v, "cpu_preprocessing": 250} for k, v in NAIVE.items()}, ("decode",))
    # load drift: every CPU-bound category 30% slower, yet the fix took its own category away
    drifted = _result(
        "+sync",
        {k: {**v, "cpu_preprocessing": 390, "sync": 10 if k else 52} for k, v in NAIVE.items()},
        ("sync",),
    )
    failures = check([naive, wrong_fix, weak_fix, drifted, slow_fixed])
    assert any("compute 34.8% < 80%" in f for f in failures)
    assert any("only 1.74x faster" in f for f in failures)
    assert any(f.startswith("+data on rank 0: data_loading shrank 0%, sync shrank 100%") for f in failures)
    assert any(f.startswith("+decode on rank 0: cpu_preprocessing shrank 17%") for f in failures)
    assert not any(f.startswith("+sync") for f in failures)
