"""Warm-up steps: leading steps much slower than the rest are reported on their own and left out of the
budget (`gpuwatch/attribution/warmup.py`), `--include-warmup` keeps them, and HTA's view never changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli
from synthetic_kineto import CATEGORIES, MS, US, Plan, RankTrace

from gpuwatch.attribution.warmup import WARMUP_FACTOR, max_warmup_steps, warmup_steps

TOL_PP = 1.0


def ms(*values: float) -> np.ndarray:
    return (np.array(values) * 1e6).astype(np.int64)


def test_the_rule() -> None:
    assert warmup_steps(ms(900, 100, 100, 100, 100))[0] == 1
    assert warmup_steps(ms(900, 100, 100, 100))[0] == 0  # too few steps to tell
    assert warmup_steps(ms(900, 100, 100, 100, 100), from_markers=False)[0] == 0
    # a start only somewhat slower (allocator, first batch) is the run's own
    assert warmup_steps(ms(190, 100, 100, 100, 100, 100))[0] == 0
    # several slow leading steps, but never more than a quarter of the rest, nor MAX_WARMUP_STEPS
    assert warmup_steps(ms(900, 800, 700, 100, 100, 100, 100, 100, 100))[0] == 2
    assert warmup_steps(ms(900, 800, 700, 600, *[100] * 20))[0] == 3
    # the warm-up ends at the first ordinary step; a slow step later is not warm-up
    assert warmup_steps(ms(900, 100, 800, *[100] * 10))[0] == 1
    # a slow start that recurs later (a checkpoint every 4th step, also at step 0) is no warm-up
    assert warmup_steps(ms(900, 100, 100, 100, 950, 100, 100, 100, 900, 100, 100, 100, 900))[0] == 0
    assert warmup_steps(ms(2000, 100, 100, 100, 950, 100, 100, 100, 900, 100, 100, 100, 900))[0] == 1
    count, reference = warmup_steps(ms(900, 100, 120, 100, 110))
    assert count == 1 and reference == 105_000_000
    assert [max_warmup_steps(n) for n in (1, 4, 5, 8, 9, 13, 100)] == [0, 0, 1, 1, 2, 3, 3]
    assert WARMUP_FACTOR == 2.0


def warm_trace(steps: int = 8, *, device: bool = True, warm: int = 1) -> RankTrace:
    """A rank whose first `warm` steps are slow (lazy init / compile: host work, and more loading)."""
    tr = RankTrace(device=device)
    t = 100 * US
    for i in range(steps):
        plan = Plan(host_overhead_ns=150 * MS, data_loading_ns=30 * MS) if i < warm else Plan()
        t = tr.planted_step(i + 1, t, plan)
    return tr


def truth_pct(tr: RankTrace, first: int) -> dict[str, float]:
    ns = dict.fromkeys(CATEGORIES, 0)
    for s in tr.steps[first:]:
        for c, v in s.category_ns.items():
            ns[c] += v
    total = sum(ns.values())
    return {c: 100.0 * v / total for c, v in ns.items()}


def summary(tmp_path: Path, tr: RankTrace, *extra: str) -> dict[str, Any]:
    run = tmp_path / "run"
    if not run.exists():
        path = tr.write(tmp_path / "rank0.pt.trace.json.gz")
        assert run_cli("import", path, "--out", run).returncode == 0
    proc = run_cli("summary", run, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    off = {c: (round(got[c], 2), round(want[c], 2)) for c in CATEGORIES if abs(got[c] - want[c]) > TOL_PP}
    assert not off, off


@pytest.mark.parametrize("device", [True, False])
def test_warmup_is_reported_and_left_out(tmp_path: Path, device: bool) -> None:
    tr = warm_trace(device=device)
    doc = summary(tmp_path, tr)
    (rank,) = doc["ranks"]
    w = rank["warmup"]
    assert w["steps"] == 1 and w["step_ids"] == [1] and w["included"] is False
    first = tr.steps[0]
    assert w["step_ms"] == [pytest.approx((first.end_ns - first.start_ns) / 1e6, abs=0.01)]
    # what it did: its own categories, as planted
    for c in CATEGORIES:
        assert w["category_ms"][c] == pytest.approx(first.category_ns[c] / 1e6, abs=0.05), c
    assert any(e["category"] == "host_overhead" for e in w["evidence"])
    # the budget is the other steps'
    assert rank["steps"] == 7 and rank["per_step"]["step"] == list(range(2, 9))
    assert_close(rank["budget_pct"], truth_pct(tr, 1))
    assert any("warm-up step 1" in n and "--include-warmup" in n for n in doc["notes"]), doc["notes"]

    kept = summary(tmp_path, tr, "--include-warmup")
    (krank,) = kept["ranks"]
    assert krank["steps"] == 8 and krank["warmup"]["included"] is True and krank["warmup"]["steps"] == 1
    assert_close(krank["budget_pct"], truth_pct(tr, 0))
    # HTA's view knows nothing of warm-up: the same either way
    assert krank["temporal_pct"] == rank["temporal_pct"]
    # the stored summary stays the default one
    assert summary(tmp_path, tr)["ranks"][0]["steps"] == 7


def test_no_warmup_in_an_even_run(tmp_path: Path) -> None:
    doc = summary(tmp_path, warm_trace(warm=0))
    (rank,) = doc["ranks"]
    assert rank["steps"] == 8 and rank["warmup"]["steps"] == 0
    assert not any("warm-up" in n for n in doc["notes"])
