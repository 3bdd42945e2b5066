"""`gpuwatch summary --json` on the real traces, through the real CLI: HTA's reference figures (read from
../shared/traces/README.md, not copied here) and the JSON shape contract of issue 2."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_TRACES, TRACES, run_cli, shared_trace_path, summary_json
from synthetic_kineto import CATEGORIES  # the eight budget categories as the tests know them, not gpuwatch

TEMPORAL = ["idle", "compute", "non_compute"]


def hta_reference() -> dict[tuple[str, int], dict[str, float]]:
    """HTA's temporal breakdown per (trace, rank), parsed from the README table of the shared traces."""
    readme = TRACES / "README.md"
    if not readme.exists():
        pytest.skip(f"no {readme}: the shared traces folder is absent")
    rows = re.findall(
        r"^\|\s*(\w+)\s*\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*$",
        readme.read_text(),
        flags=re.MULTILINE,
    )
    ref = {
        (t, int(r)): {"idle": float(i), "compute": float(c), "non_compute": float(n)}
        for t, r, i, c, n in rows
    }
    assert len(ref) >= 3, "the README's HTA table changed shape"
    return ref


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """`gpuwatch import` + `gpuwatch summary --json` in subprocesses, once per trace referenced by HTA's table."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({t for t, _ in hta_reference()}):
        run = tmp_path_factory.mktemp(name) / "run"
        proc = run_cli("import", shared_trace_path(name), "--out", run)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == ""  # stdout carries only data
        out[name] = summary_json(run)
    return out


def test_temporal_breakdown_matches_hta_reference(cli_runs: dict[str, dict[str, Any]]) -> None:
    ref = hta_reference()
    for (trace, rank), want in sorted(ref.items()):
        ranks = {r["rank"]: r for r in cli_runs[trace]["ranks"]}
        got = ranks[rank]["temporal_pct"]
        for key in TEMPORAL:
            assert got[key] == pytest.approx(want[key], abs=1.0), (trace, rank, key, got, want)
        assert ranks[rank]["temporal_basis"] == "device"


def check_summary_shape(doc: dict[str, Any]) -> None:
    """Issue 2's `summary --json` contract: these keys with exactly these types (more keys are allowed)."""
    assert type(doc["run_id"]) is str and doc["run_id"]
    assert type(doc["ranks"]) is list and doc["ranks"]
    for r in doc["ranks"]:
        assert type(r["rank"]) is int
        assert type(r["steps"]) is int and r["steps"] >= 1
        assert type(r["step_time_ms"]) is dict and type(r["step_time_ms"]["median"]) is float
        assert r["step_time_ms"]["median"] > 0
        assert sorted(r["budget_pct"]) == sorted(CATEGORIES)
        assert all(type(v) is float and 0.0 <= v <= 100.0 for v in r["budget_pct"].values())
        assert sum(r["budget_pct"].values()) == pytest.approx(100.0, abs=1e-6)
        assert sorted(r["temporal_pct"]) == sorted(TEMPORAL)
        assert all(type(v) is float and 0.0 <= v <= 100.0 for v in r["temporal_pct"].values())
        assert sum(r["temporal_pct"].values()) == pytest.approx(100.0, abs=1e-6)
    assert type(doc["recommendations"]) is list
    for rec in doc["recommendations"]:
        assert rec["category"] in CATEGORIES
        assert rec["rank"] is None or type(rec["rank"]) is int
        assert type(rec["title"]) is str and rec["title"]
        assert type(rec["evidence"]) is str and rec["evidence"]


def test_summary_json_shape_contract(cli_runs: dict[str, dict[str, Any]]) -> None:
    for doc in cli_runs.values():
        check_summary_shape(doc)
    two = cli_runs["trace_filter"]
    assert sorted(r["rank"] for r in two["ranks"]) == [0, 1]
    assert two["recommendations"], "trace_filter spends >10% in exposed NCCL: the sync rule must fire"


@pytest.mark.parametrize("name", sorted(set(SHARED_TRACES) - {"trace_filter", "nccl_parser_config"}))
def test_every_shared_trace_summarises_through_the_cli(name: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_cli("import", shared_trace_path(name), "--out", run)
    assert proc.returncode == 0, proc.stderr
    doc = summary_json(run)
    check_summary_shape(doc)
    table = run_cli("summary", run)  # the rich table renders too
    assert table.returncode == 0 and "compute" in table.stdout, table.stderr


def test_trace_filter_names_who_waits_on_whom(cli_runs: dict[str, dict[str, Any]]) -> None:
    """Both sampled ranks of trace_filter sit in exposed NCCL kernels: sync splits into wait + transfer, and
    the wait is bounded by the exposed sync the budget found."""
    doc = cli_runs["trace_filter"]
    assert doc["straggler"] is not None and doc["straggler"]["rank"] in (0, 1)
    for r in doc["ranks"]:
        split = r["sync_split_pct"]
        assert split["wait"] + split["transfer"] == pytest.approx(r["budget_pct"]["sync"], abs=1e-6)
        assert split["wait"] >= 0 and split["transfer"] >= 0


def test_cpu_only_rank_waits_on_collectives_of_its_communication_threads(tmp_path: Path) -> None:
    """The CPU-only gloo rank: inside its step the training thread does nothing while `gloo:all_reduce` runs
    on two communication threads. The removed TensorBoard plugin's Overview puts 85.09% of the step in
    Communication (../shared/traces/README.md); the budget calls that time sync. HTA's view is the
    training thread's own (idle 100%), unchanged."""
    run = tmp_path / "run"
    proc = run_cli("import", shared_trace_path("cpu_only"), "--out", run)
    assert proc.returncode == 0, proc.stderr
    (rank,) = summary_json(run)["ranks"]
    budget = rank["budget_pct"]
    assert budget["sync"] >= 80.0 and budget["unattributed"] < 15.0, budget
    assert budget["sync"] == pytest.approx(rank["overview_pct"]["communication"], abs=0.01)
    assert rank["temporal_pct"] == {"idle": 100.0, "compute": 0.0, "non_compute": 0.0}
    (ev,) = [e for e in rank["evidence"] if e["category"] == "sync"]
    # two threads run it at once: its time counts once, within the 210 ms step
    assert ev["name"] == "gloo:all_reduce" and ev["total_ms"] == pytest.approx(
        budget["sync"] * 2.10109, rel=1e-3
    )
