"""The typed Summary: the same document `gpuwatch summary --json` always printed, read back without loss,
and per-step figures that add up to the budget they summarise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from gpuwatch.attribution.analysis import analyze_run
from gpuwatch.attribution.summary import CATEGORY_NAMES, Summary, load_summary, summarize
from gpuwatch.errors import RunDirError


@pytest.mark.parametrize("name", ["trace_filter", "cpu_only", "nccl_parser_config"])
def test_round_trip_is_lossless(shared_runs, name: str) -> None:
    summary = summarize(analyze_run(shared_runs(name)))
    doc = summary.to_json()
    again = Summary.from_json(json.loads(json.dumps(doc)))
    assert again == summary
    assert again.to_json() == doc


def test_per_step_adds_up_to_the_budget(shared_runs) -> None:
    summary = summarize(analyze_run(shared_runs("trace_filter")))
    for r in summary.ranks:
        ps = r.per_step
        assert ps is not None and len(ps.step) == r.steps == len(ps.wall_ms)
        for i, wall in enumerate(ps.wall_ms):
            assert sum(ps.category(c)[i] for c in CATEGORY_NAMES) == pytest.approx(wall, abs=0.01)
        total = sum(ps.wall_ms)
        for c in CATEGORY_NAMES:
            assert 100 * sum(ps.category(c)) / total == pytest.approx(r.budget_pct.get(c), abs=0.01)


def test_cli_json_is_the_summary(shared_runs) -> None:
    run = shared_runs("trace_filter")
    proc = run_cli("summary", run, "--json", "--no-cache")
    assert proc.returncode == 0, proc.stderr
    assert Summary.from_json(json.loads(proc.stdout)) == load_summary(run, use_cache=False)


def test_older_documents_without_per_step_still_read(shared_runs) -> None:
    doc = summarize(analyze_run(shared_runs("cpu_only"))).to_json()
    for r in doc["ranks"]:
        del r["per_step"]
    assert all(r.per_step is None for r in Summary.from_json(doc).ranks)


@pytest.mark.parametrize("doc", [{}, {"run_id": "x"}, {"run_id": "x", "ranks": [{"rank": "a"}]}, []])
def test_not_a_summary_is_one_clear_error(doc: object) -> None:
    with pytest.raises(RunDirError, match="not a gpuwatch summary"):
        Summary.from_json(doc)  # type: ignore[arg-type]


def test_category_values_know_only_categories(tmp_path: Path) -> None:
    summary = Summary.from_json(
        {
            "run_id": "r",
            "ranks": [{"rank": 0, "steps": 1, "step_time_ms": {}, "budget_pct": {"compute": 100}}],
        }
    )
    assert summary.rank(0).budget_pct.get("compute") == 100.0
    with pytest.raises(KeyError):
        summary.rank(0).budget_pct.get("nap_time")
    with pytest.raises(KeyError):
        summary.rank(3)
