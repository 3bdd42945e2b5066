"""Across ranks: a planted job where one rank arrives late at every all-reduce. The late rank must be
named, and each rank's exposed sync must split into waiting and transfer exactly as planted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from synthetic_kineto import CATEGORIES, MS, LateRankJob, drop_first_steps, late_rank_job

from gpuwatch.attribution.analysis import analyze_run
from gpuwatch.attribution.summary import summarize
from gpuwatch.capture.trace_import import import_to_run

TOL_PP = 1.0


def write_job(job: LateRankJob, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for tr in job.ranks:
        tr.write(folder / f"worker{tr.rank}.pt.trace.json.gz")
    return folder


def summarise(job: LateRankJob, tmp_path: Path) -> dict[str, Any]:
    traces = write_job(job, tmp_path / "traces")
    import_to_run([str(traces)], tmp_path / "run")
    return summarize(analyze_run(tmp_path / "run")).to_json()


def check_job(doc: dict[str, Any], job: LateRankJob) -> None:
    s = doc["straggler"]
    assert s is not None and s["rank"] == job.late_rank, s
    # what the late rank did while the others waited: the extra CPU work that made it late
    assert max(s["doing_ms"], key=s["doing_ms"].get) == "cpu_preprocessing"
    for r in doc["ranks"]:
        tr = job.ranks[r["rank"]]
        truth = tr.truth_pct()
        for c in CATEGORIES:
            assert r["budget_pct"][c] == pytest.approx(truth[c], abs=TOL_PP), (r["rank"], c)
        wall = tr.wall_ns()
        split = r["sync_split_pct"]
        assert split["wait"] == pytest.approx(100 * job.wait_ns[tr.rank] / wall, abs=TOL_PP), r["rank"]
        assert split["transfer"] == pytest.approx(100 * job.transfer_ns(tr.rank) / wall, abs=TOL_PP)
    late = next(r for r in doc["ranks"] if r["rank"] == job.late_rank)
    assert late["sync_split_pct"]["wait"] == pytest.approx(0.0, abs=0.01)


def test_late_rank_is_named_through_the_cli(tmp_path: Path) -> None:
    job = late_rank_job()
    assert job.wait_ns[0] > 0 and job.wait_ns[1] == 0
    traces = write_job(job, tmp_path / "traces")
    assert run_cli("import", traces, "--out", tmp_path / "run").returncode == 0
    proc = run_cli("summary", tmp_path / "run", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    check_job(doc, job)
    assert doc["straggler"]["matched_collectives"] >= 5
    sync = next(r for r in doc["recommendations"] if r["category"] == "sync")
    assert "rank 1" in sync["evidence"]
    table = run_cli("summary", tmp_path / "run")
    assert table.returncode == 0 and "rank 1" in table.stdout


JOBS: dict[str, dict[str, Any]] = {
    "gpu_nccl_seq": {},
    "gpu_no_seq_in_trace": {"seq_in_args": False},
    "gpu_int_ts_distinct_pids": {"float_ts": False, "same_pid": False},
    "cpu_gloo": {"device": False},
    "cpu_gloo_no_seq": {"device": False, "seq_in_args": False},
    "four_ranks_manager_rank0_late": {"world_size": 4, "late_rank": 0},
}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_late_rank_variants(name: str, tmp_path: Path) -> None:
    job = late_rank_job(**JOBS[name])
    check_job(summarise(job, tmp_path), job)


@pytest.mark.parametrize("seq_in_args", [True, False])
def test_profiling_windows_that_start_at_different_steps(seq_in_args: bool, tmp_path: Path) -> None:
    """On-demand profiling often starts an iteration or two later on some ranks. Collectives must still be
    matched to the same all-reduce on every rank (by NCCL's sequence number, or by step and order)."""
    job = late_rank_job(steps=5, seq_in_args=seq_in_args)
    drop_first_steps(job.ranks[1], 2)  # the late rank's trace starts at step 3
    doc = summarise(job, tmp_path)
    assert doc["straggler"]["rank"] == 1
    rank0 = next(r for r in doc["ranks"] if r["rank"] == 0)
    # rank 0 provably waited in steps 3-5 (where both ranks were profiled)
    lateness = (3 * MS, 5 * MS, 2 * MS, 8 * MS, 4 * MS)
    want_wait_ns = sum(lateness[2:5])
    wall0 = job.ranks[0].wall_ns()
    assert rank0["sync_split_pct"]["wait"] == pytest.approx(100 * want_wait_ns / wall0, abs=TOL_PP)
