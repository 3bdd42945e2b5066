"""`gpuwatch import` writes its segments from a child process while it analyses (gpuwatch/capture/
trace_import.py, import_writer.py): the run is the same whichever writes it (the split read's child, which
stays on after its half; a child forked once the columns exist; the fallback thread; or this process after
a child that failed), and no child is left behind, also when the import fails."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from conftest import shared_trace_path, trace_files

import collectors.kineto.kineto_import as ki
import collectors.kineto.split_import as si
from gpuwatch.capture import import_writer, trace_import
from gpuwatch.errors import TraceFormatError
from gpuwatch.store.run_dir import run_for_process
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


@pytest.fixture
def one_trace(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One trace file the import splits (made to split though small)."""
    monkeypatch.setattr(si, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(ki, "_CHUNK_BYTES", 100_000)
    return [str(shared_trace_path("nccl_parser_config"))]


@pytest.fixture
def writers_seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """The pids of the split children that stayed on to write, and of the children forked to write."""
    seen: dict[str, list[int]] = {"split": [], "late": []}
    real_forked, real_fork = import_writer.SplitWriter.forked, trace_import.fork_writer

    def forked(self, pid):  # type: ignore[no-untyped-def]
        seen["split"].append(pid)
        real_forked(self, pid)

    def fork(*args):  # type: ignore[no-untyped-def]
        pid = real_fork(*args)
        seen["late"].append(pid if pid is not None else -1)
        return pid

    monkeypatch.setattr(import_writer.SplitWriter, "forked", forked)
    monkeypatch.setattr(trace_import, "fork_writer", fork)
    return seen


def _reaped(pids: list[int]) -> None:
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_every_writer_writes_the_same_run(
    one_trace: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writers_seen: dict[str, list[int]]
) -> None:
    trace_import.import_to_run(one_trace, tmp_path / "split")
    assert len(writers_seen["split"]) == 1 and writers_seen["late"] == []  # the split's child wrote it
    _reaped(writers_seen["split"])

    monkeypatch.setattr(trace_import, "SPLIT_WRITER_MAX_SPANS", 0)  # too many spans to send: a late child
    trace_import.import_to_run(one_trace, tmp_path / "late")
    assert len(writers_seen["split"]) == 2 and len(writers_seen["late"]) == 1 and writers_seen["late"][0] > 0
    _reaped(writers_seen["split"] + writers_seen["late"])  # the unused split child was ended and reaped

    monkeypatch.setattr(si, "SPLIT_MIN_BYTES", 1 << 40)  # no split, no fork: the thread
    monkeypatch.setattr(trace_import, "fork_writer", lambda *a: None)
    trace_import.import_to_run(one_trace, tmp_path / "thread")

    split = imported(tmp_path / "split")
    assert split[0] and all(n > 0 for n, _, _ in split[0].values())
    assert imported(tmp_path / "late") == split
    assert imported(tmp_path / "thread") == split


def test_several_files_are_written_by_a_late_child(
    trace: list[str], tmp_path: Path, writers_seen: dict[str, list[int]]
) -> None:
    trace_import.import_to_run(trace, tmp_path / "run")
    assert writers_seen["split"] == [] and len(writers_seen["late"]) == 1 and writers_seen["late"][0] > 0
    _reaped(writers_seen["late"])
    assert len(imported(tmp_path / "run")[0]) == 2


@pytest.mark.parametrize("which", ["split", "late"])
def test_a_child_that_fails_leaves_the_writing_to_this_process(
    one_trace: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    trace_import.import_to_run(one_trace, tmp_path / "reference")
    if which == "late":
        monkeypatch.setattr(trace_import, "SPLIT_WRITER_MAX_SPANS", 0)
    parent = os.getpid()
    real_write = SegmentWriter.write_span_columns
    written_here: list[int] = []

    def fails_in_the_child(self, cols):  # type: ignore[no-untyped-def]
        if os.getpid() != parent:
            raise OSError(28, "No space left on device")
        written_here.append(self.run.rank)
        return real_write(self, cols)

    monkeypatch.setattr(SegmentWriter, "write_span_columns", fails_in_the_child)
    trace_import.import_to_run(one_trace, tmp_path / "failed")
    assert len(written_here) == 1  # the child failed; this process wrote the rank itself
    assert imported(tmp_path / "failed") == imported(tmp_path / "reference")


def test_a_failed_import_ends_the_split_child(
    one_trace: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writers_seen: dict[str, list[int]]
) -> None:
    """The split read succeeds, then the import fails (here: making the run's writers): the child that
    stayed on to write is ended and reaped, not left waiting."""

    def no_writers(*args):  # type: ignore[no-untyped-def]
        raise TraceFormatError("fails after the split")

    monkeypatch.setattr(trace_import, "_writers_for", no_writers)
    with pytest.raises(TraceFormatError):
        trace_import.import_to_run(one_trace, tmp_path / "run")
    assert len(writers_seen["split"]) == 1
    _reaped(writers_seen["split"])


def test_a_synchronous_writer_pickles_and_a_background_one_does_not(tmp_path: Path) -> None:
    run = run_for_process(run_id="", source="import", rank=0, pid=1, command="x", world_size=1,
                          started_at_unix_ns=1, meta={})  # fmt: skip
    sync = SegmentWriter(tmp_path / "a", run, background=False)
    copy = pickle.loads(pickle.dumps(sync))
    assert (copy.folder, copy.run) == (sync.folder, sync.run)
    copy.close()  # with its own lock and encoder: it writes
    assert '"status": "ended"' in (copy.folder / "writer.json").read_text()
    live = SegmentWriter(tmp_path / "b", run)
    try:
        with pytest.raises(TypeError):
            pickle.dumps(live)
    finally:
        live.close()


def test_of_several_split_files_the_first_split_child_writes_them_all(
    trace: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writers_seen: dict[str, list[int]]
) -> None:
    """Two large files read one after the other (no worker processes), each split: only the first split's
    child stays on to write; the second leaves after its half. Both ranks are written, as without a split."""
    import collectors.kineto.parallel_import as par

    monkeypatch.setattr(par, "PARALLEL_MIN_BYTES", 1 << 40)
    monkeypatch.setattr(si, "SPLIT_MIN_BYTES", 1 << 40)
    trace_import.import_to_run(trace, tmp_path / "plain")
    _reaped(writers_seen["late"])
    writers_seen["late"].clear()
    monkeypatch.setattr(si, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(ki, "_CHUNK_BYTES", 50_000)
    splits: list[bool] = []
    real_split = si.read_split
    monkeypatch.setattr(
        si, "read_split", lambda data, after=None: splits.append(1) or real_split(data, after)
    )
    trace_import.import_to_run(trace, tmp_path / "split")
    assert len(splits) == 2 and len(writers_seen["split"]) == 1 and writers_seen["late"] == []
    _reaped(writers_seen["split"])
    assert imported(tmp_path / "split") == imported(tmp_path / "plain")
