"""The time budget on synthetic Kineto traces with planted stalls: every category within 1 pp of what the
generator planted (its truth is bookkeeping done while planting, never the engine's output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from synthetic_kineto import CATEGORIES, MS, US, Plan, RankTrace, planted_rank

from gpuwatch.attribution.analysis import analyze_run
from gpuwatch.attribution.summary import summarize
from gpuwatch.capture.trace_import import import_to_run
from gpuwatch.records import CATEGORIES as ENGINE_ORDER

TOL_PP = 1.0


def summarise(tmp_path: Path, *traces: RankTrace, name: str = "trace") -> dict[str, Any]:
    files = [tr.write(tmp_path / f"{name}_rank{tr.rank}.json.gz") for tr in traces]
    run = tmp_path / f"run_{name}"
    import_to_run([str(f) for f in files], run)
    return summarize(analyze_run(run)).to_json()


def assert_budget_matches(rank_doc: dict[str, Any], truth_pct: dict[str, float]) -> None:
    got = rank_doc["budget_pct"]
    off = {c: round(got[c] - truth_pct[c], 3) for c in CATEGORIES if abs(got[c] - truth_pct[c]) > TOL_PP}
    assert not off, f"categories off by more than {TOL_PP} pp: {off}\n got {got}\n want {truth_pct}"


def test_every_planted_stall_through_the_cli(tmp_path: Path) -> None:
    tr = planted_rank(4)
    truth = tr.truth_pct()
    assert all(truth[c] > 2.0 for c in CATEGORIES), truth  # one real stall per category
    path = tr.write(tmp_path / "rank0.pt.trace.json.gz")
    assert run_cli("import", path, "--out", tmp_path / "run").returncode == 0
    proc = run_cli("summary", tmp_path / "run", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (rank,) = doc["ranks"]
    assert rank["steps"] == 4 and rank["mode"] == "device"
    assert_budget_matches(rank, truth)
    step_ms = (tr.steps[0].end_ns - tr.steps[0].start_ns) / 1e6
    assert rank["step_time_ms"]["median"] == pytest.approx(step_ms, rel=1e-6)
    # each planted cause above its threshold is named, with the planted span as evidence
    recs = {r["category"]: r for r in doc["recommendations"]}
    for cat in ("data_loading", "cpu_preprocessing", "sync", "checkpoint_io"):
        assert cat in recs, sorted(recs)
    assert "enumerate(DataLoader)" in recs["data_loading"]["evidence"]
    assert "save_checkpoint" in recs["checkpoint_io"]["evidence"]
    assert "preprocess_batch" in recs["cpu_preprocessing"]["evidence"]


VARIANTS: dict[str, dict[str, Any]] = {
    "float_ts": {},
    "int_ts": {"float_ts": False, "origin_us": 1_661_203_462_598_738, "base_time_ns": None},
    "old_capitalized_categories": {"old_categories": True},
    "no_distributed_info": {"distributed_info": False},
    "step_markers_overlap": {"marker_overlap_ns": 7 * US},
    "gaps_between_steps": {"step_gap_ns": 750 * US},
    "realistic_args_and_flows": {"realistic": True},
    "no_hidden_collective": {"plan": Plan(hidden_collective=False)},
    "tiny_stalls": {"plan": Plan(data_loading_ns=50 * US, checkpoint_ns=20 * US, unattributed_ns=30 * US)},
    "cpu_only": {"device": False},
    "cpu_only_int_ts": {"device": False, "float_ts": False, "origin_us": 1_661_203_462_598_738},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_planted_budget_variants(variant: str, tmp_path: Path) -> None:
    kw = dict(VARIANTS[variant])
    tr = planted_rank(3, **kw)
    doc = summarise(tmp_path, tr)
    (rank,) = doc["ranks"]
    assert rank["steps"] == 3
    assert rank["mode"] == ("device" if tr.device else "host")
    assert_budget_matches(rank, tr.truth_pct())


def test_no_step_markers_make_one_step_over_the_whole_trace(tmp_path: Path) -> None:
    for device in (True, False):
        tr = planted_rank(3, step_markers=False, device=device)
        (rank,) = summarise(tmp_path, tr, name=f"nosteps_{device}")["ranks"]
        assert rank["steps"] == 1 and rank["steps_from_markers"] is False
        assert_budget_matches(rank, tr.truth_pct(whole_trace=True))


def test_cpu_only_planted_trace(tmp_path: Path) -> None:
    tr = planted_rank(4, device=False)
    truth = tr.truth_pct()
    assert truth["memcpy"] == 0.0 and all(truth[c] > 2.0 for c in CATEGORIES if c != "memcpy")
    doc = summarise(tmp_path, tr)
    (rank,) = doc["ranks"]
    assert rank["mode"] == "host" and rank["temporal_basis"] == "host"
    assert_budget_matches(rank, truth)
    # with no device, HTA's view is the training thread: compute = its math, non-compute = exposed comms
    t = rank["temporal_pct"]
    ns = tr.truth_ns()
    three = [s.category_ns for s in tr.steps[:-1]]  # HTA's window: all steps but the last
    wall = sum(sum(s.values()) for s in three)
    assert t["compute"] == pytest.approx(100 * sum(s["compute"] for s in three) / wall, abs=TOL_PP)
    assert t["non_compute"] == pytest.approx(100 * sum(s["sync"] for s in three) / wall, abs=TOL_PP)
    assert ns["compute"] > 0


def test_budget_of_each_step_sums_to_its_wall_time(tmp_path: Path) -> None:
    tr = planted_rank(3, plan=Plan(data_loading_ns=20 * MS))
    files = [tr.write(tmp_path / "t.json.gz")]
    import_to_run([str(f) for f in files], tmp_path / "run")
    analysis = analyze_run(tmp_path / "run")
    (ra,) = analysis.ranks
    b = ra.budget
    assert (b.step_category_ns.sum(axis=1) == b.step_ns).all()
    for row, step in zip(b.step_category_ns.tolist(), tr.steps, strict=True):
        want = [step.category_ns[c.value] for c in ENGINE_ORDER]
        assert row == pytest.approx(want, abs=2)  # nanoseconds; float-µs rounding at most 1 ns per edge
