"""`gpuwatch import` writes its segments from a forked child while it analyses (gpuwatch/capture/
trace_import.py): the run is the same whichever writes it (the child, the fallback thread, or this process
after a child that failed), and no child is left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import shared_trace_path, trace_files

from gpuwatch.capture import trace_import
from gpuwatch.store.run_reader import RunReader
from gpuwatch.store.segment_writer import SegmentWriter


def imported(out: Path) -> tuple[dict[int, tuple[int, int, int]], dict]:
    """Per rank (spans, sum of starts, sum of ends) as read back from the store, and the kept summary."""
    import json

    reader = RunReader(out)
    try:
        per_rank = {}
        for rank in reader.ranks:
            cols = reader.span_columns(rank)
            per_rank[rank] = (len(cols), int(cols.start_ns.sum()), int(cols.end_ns.sum()))
    finally:
        reader.close()
    doc = json.loads((out / "summary-cache.json").read_text())["summary"]
    return per_rank, {k: v for k, v in doc.items() if k not in ("run_id", "run_dir")}


@pytest.fixture
def trace() -> list[str]:
    return [str(p) for p in trace_files(shared_trace_path("trace_filter"))]


def test_the_child_the_thread_and_a_failed_child_write_the_same_run(
    trace: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forks: list[int] = []
    real_fork = trace_import._fork_writer

    def counting_fork(*args):  # type: ignore[no-untyped-def]
        pid = real_fork(*args)
        forks.append(pid)
        return pid

    monkeypatch.setattr(trace_import, "_fork_writer", counting_fork)
    trace_import.import_to_run(trace, tmp_path / "child")
    assert forks and forks[0] is not None  # this test process runs no other thread: it forked
    with pytest.raises(ChildProcessError):
        os.waitpid(forks[0], os.WNOHANG)  # reaped

    monkeypatch.setattr(trace_import, "_fork_writer", lambda *a: None)
    trace_import.import_to_run(trace, tmp_path / "thread")

    parent = os.getpid()
    real_write = SegmentWriter.write_span_columns
    written_here: list[int] = []

    def fails_in_the_child(self, cols):  # type: ignore[no-untyped-def]
        if os.getpid() != parent:
            raise OSError(28, "No space left on device")
        written_here.append(self.run.rank)
        return real_write(self, cols)

    monkeypatch.setattr(trace_import, "_fork_writer", real_fork)
    monkeypatch.setattr(SegmentWriter, "write_span_columns", fails_in_the_child)
    trace_import.import_to_run(trace, tmp_path / "failed-child")
    assert sorted(written_here) == [0, 1]  # the child failed; this process wrote every rank itself

    child = imported(tmp_path / "child")
    assert child[0] and all(n > 0 for n, _, _ in child[0].values())
    assert imported(tmp_path / "thread") == child
    assert imported(tmp_path / "failed-child") == child
