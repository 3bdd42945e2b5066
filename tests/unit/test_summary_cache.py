"""The stored summary of a finished run: always what a fresh analysis says, never stale."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import HTA_TRACES, run_cli

from gpuwatch.records import Run, Span
from gpuwatch.store import summary_cache
from gpuwatch.store.segment_writer import SegmentWriter

pytestmark = pytest.mark.skipif(not HTA_TRACES.exists(), reason="../shared/traces is not on this machine")


def summary(run: Path, *extra: str) -> dict:
    proc = run_cli("summary", run, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("trace", ["trace_filter", "nccl_parser_config", "cpu_only", "trace_file_list"])
def test_the_summary_import_stores_is_the_one_a_fresh_analysis_computes(tmp_path: Path, trace: str) -> None:
    run = tmp_path / "run"
    proc = run_cli("import", HTA_TRACES / trace, "--out", run)
    assert proc.returncode == 0, proc.stderr
    assert (run / summary_cache.CACHE_FILE).exists()
    cached, fresh = summary(run), summary(run, "--no-cache")
    assert cached == fresh


def _writer(run: Path, rank: int) -> SegmentWriter:
    anchor = time.time_ns()
    info = Run("", rank, "h", 1000 + rank, "t", 2, anchor, "0", "watch")
    return SegmentWriter(run, info, background=False)


def _steps(w: SegmentWriter, rank: int, category: str) -> None:
    for i in range(3):
        t = i * 10_000_000
        w.emit_span(Span(rank, "step", f"step {i}", t, t + 10_000_000, step=i, tid=7))
        w.emit_span(Span(rank, "phase", "work", t, t + 10_000_000, category=category, tid=7))


def test_a_run_that_changes_is_analysed_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    w0 = _writer(run, 0)
    _steps(w0, 0, "compute")
    w0.flush()
    # still running: nothing is stored, and every summary is computed
    first = summary(run)
    assert not (run / summary_cache.CACHE_FILE).exists()
    w0.close()
    ended = summary(run)
    assert (run / summary_cache.CACHE_FILE).exists()
    assert [r["rank"] for r in ended["ranks"]] == [0] == [r["rank"] for r in first["ranks"]]
    assert ended["ranks"][0]["budget_pct"]["compute"] == pytest.approx(100.0)
    # a second rank joins the finished run: the stored summary no longer describes it
    w1 = _writer(run, 1)
    _steps(w1, 1, "data_loading")
    w1.close()
    grown = summary(run)
    assert [r["rank"] for r in grown["ranks"]] == [0, 1]
    assert grown["ranks"][1]["budget_pct"]["data_loading"] == pytest.approx(100.0)
    assert grown == summary(run, "--no-cache")


def test_a_stored_summary_from_another_gpuwatch_is_not_used(tmp_path: Path) -> None:
    run = tmp_path / "run"
    w = _writer(run, 0)
    _steps(w, 0, "sync")
    w.close()
    summary(run)
    cache = run / summary_cache.CACHE_FILE
    data = json.loads(cache.read_text())
    data["summary"]["ranks"][0]["budget_pct"]["sync"] = 1.0  # planted lie with a wrong fingerprint
    data["fingerprint"] = "0" * 64
    cache.write_text(json.dumps(data))
    assert summary(run)["ranks"][0]["budget_pct"]["sync"] == pytest.approx(100.0)


def test_a_stored_summary_prints_without_the_record_types_or_numpy(tmp_path: Path) -> None:
    """The cached path of `summary --json` loads neither numpy nor the record types (msgspec, dataclasses):
    it prints in the time Python takes to start. What it prints is the stored document."""
    import subprocess
    import sys

    from conftest import ROOT, run_program

    run = tmp_path / "run"
    assert run_cli("import", HTA_TRACES / "trace_filter", "--out", run).returncode == 0
    code = (
        "import sys\n"
        "sys.argv = ['gpuwatch', 'summary', sys.argv[1], '--json']\n"
        "from gpuwatch.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "heavy = [m for m in ('numpy', 'msgspec', 'dataclasses', 'gpuwatch.records', 'hashlib') if m in sys.modules]\n"
        "print(heavy, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    proc: subprocess.CompletedProcess[str] = run_program([sys.executable, "-c", code, run], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "[]"
    assert json.loads(proc.stdout) == json.loads((run / summary_cache.CACHE_FILE).read_text())["summary"]


def test_a_stored_summary_is_not_used_under_a_marker_of_another_schema(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_cli("import", HTA_TRACES / "trace_filter", "--out", run).returncode == 0
    assert summary_cache.load(run) is not None
    marker = json.loads((run / "gpuwatch-run.json").read_text())
    (run / "gpuwatch-run.json").write_text(json.dumps({**marker, "schema_version": 999}))
    assert summary_cache.load(run) is None
    proc = run_cli("summary", run, "--json")
    assert proc.returncode != 0 and "schema" in proc.stderr  # the full path's one-line error, as before
