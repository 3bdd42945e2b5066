"""The run store with real files and a real DuckDB: reading while a writer writes, compaction, a writer
killed with SIGKILL, several ranks on one timeline, schema versions, NULLs and hostile names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli_env, run_cli

from gpuwatch.errors import RunDirError
from gpuwatch.records import Run, Sample, Span
from gpuwatch.store.run_dir import RUN_FILE, list_segments
from gpuwatch.store.run_reader import RunReader
from gpuwatch.store.segment_writer import COMPACT_EVERY, SegmentWriter


def make_run(rank: int = 0, anchor_ns: int | None = None, pid: int | None = None) -> Run:
    return Run(
        run_id="",
        rank=rank,
        host="testhost",
        pid=os.getpid() if pid is None else pid,
        command="pytest",
        world_size=2,
        started_at_unix_ns=time.time_ns() if anchor_ns is None else anchor_ns,
        tool_version="test",
        source="watch",
    )


def span(i: int, rank: int = 0) -> Span:
    return Span(
        rank=rank,
        kind="cpu_op",
        name=f"op{i % 17}",
        start_ns=i * 1_000,
        end_ns=i * 1_000 + 500,
        category="compute",
        correlation=i,
    )


def counts(run_dir: Path) -> tuple[int, int]:
    reader = RunReader(run_dir)
    try:
        return reader.query("SELECT count(*), count(DISTINCT correlation) FROM spans").fetchone()
    finally:
        reader.close()


def test_read_while_a_writer_is_writing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    writer = SegmentWriter(run_dir, make_run(), flush_interval_s=0.01)
    total = 40 * 60
    done = threading.Event()

    def produce() -> None:
        for i in range(total):
            writer.emit_span(span(i))
            if i % 40 == 39:
                time.sleep(0.01)  # ~0.6 s of producing: readers get many looks at a growing run
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    seen: list[int] = []
    try:
        while not done.is_set() or len(seen) < 3:
            n, distinct = counts(run_dir)
            assert n == distinct, "a span was read twice"
            assert not seen or n >= seen[-1], "a span disappeared"
            seen.append(n)
    finally:
        producer.join()
        writer.close()
    assert any(0 < n < total for n in seen), f"never read mid-write: {seen[:5]}...{seen[-5:]}"
    assert counts(run_dir) == (total, total)
    flushes = writer._seq  # every flush is a numbered segment; more than COMPACT_EVERY ran compaction
    if flushes > COMPACT_EVERY:
        assert any(s.first != s.last for s in list_segments(writer.folder, "spans"))


def test_compaction_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    writer = SegmentWriter(run_dir, make_run(), background=False)
    flushes = 3 * COMPACT_EVERY + 5
    for k in range(flushes):
        for j in range(7):
            writer.emit_span(span(k * 7 + j))
        writer.emit_sample(Sample(rank=0, metric="gpu_util_pct", t_ns=k, value=float(k)))
        writer.flush()
    writer.close()
    spans = list_segments(writer.folder, "spans")
    compacted = [s for s in spans if s.first != s.last]
    assert len(compacted) >= 3 and len(spans) < flushes / 4
    assert not list(writer.folder.glob(".*.tmp"))
    reader = RunReader(run_dir)
    got = reader.query("SELECT correlation FROM spans ORDER BY correlation").fetchnumpy()["correlation"]
    assert got.tolist() == list(range(flushes * 7))
    values = reader.samples("gpu_util_pct")["value"]
    assert sorted(values.tolist()) == [float(k) for k in range(flushes)]
    reader.close()


def test_writer_file_is_rewritten_when_what_it_says_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush that only adds segments leaves writer.json alone; a note, a meta fact, a drop or the status
    rewrite it at the next flush, and so does the refresh interval passing."""
    from gpuwatch.store import segment_writer

    writer = SegmentWriter(tmp_path / "run", make_run(), background=False, max_queue=3)
    path = writer.folder / "writer.json"

    def version() -> tuple[int, int]:
        st = path.stat()
        return st.st_ino, st.st_mtime_ns  # each rewrite is a new file renamed over the old one

    before = version()
    for k in range(3):
        writer.emit_span(span(k))
        writer.flush()
    assert version() == before and len(list_segments(writer.folder, "spans")) == 3

    writer.note("hook_error", "a hook failed")
    writer.flush()
    assert version() != before and json.loads(path.read_text())["notes"]["hook_error"]["count"] == 1
    before = version()
    writer.note("hook_error", "a hook failed")  # counted again: the count in the file must move
    writer.flush()
    assert json.loads(path.read_text())["notes"]["hook_error"]["count"] == 2
    before = version()
    writer.set_meta(batch=64)
    writer.flush()
    assert version() != before and json.loads(path.read_text())["meta"]["batch"] == 64
    before = version()
    for k in range(4):  # one more than the queue holds: a drop
        writer.emit_span(span(k))
    writer.flush()
    assert version() != before and json.loads(path.read_text())["dropped_spans"] == 1
    before = version()
    monkeypatch.setattr(segment_writer, "WRITER_FILE_REFRESH_S", 0.0)
    writer.flush()
    assert version() != before
    writer.close()
    assert json.loads(path.read_text())["status"] == "ended"


def test_reader_survives_compaction_under_its_feet(tmp_path: Path) -> None:
    """Readers list segments, then read; compaction may delete small ones in between (one rebuild)."""
    run_dir = tmp_path / "run"
    writer = SegmentWriter(run_dir, make_run(), background=False)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []

    def read_loop() -> None:
        while not stop.is_set():
            try:
                n, distinct = counts(run_dir)
                assert n == distinct
                seen.append(n)
            except BaseException as exc:  # reported in the main thread
                errors.append(exc)
                return

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for k in range(2 * COMPACT_EVERY + 3):
            for j in range(5):
                writer.emit_span(span(k * 5 + j))
            writer.flush()
            time.sleep(0.003)  # let the reader interleave with compactions
    finally:
        stop.set()
        reader.join()
        writer.close()
    assert not errors, errors[0]
    assert seen == sorted(seen) and len(seen) >= 2
    total = (2 * COMPACT_EVERY + 3) * 5
    assert counts(run_dir) == (total, total)


CHILD = """
import os, sys, time
from gpuwatch.records import Run, Span
from gpuwatch.store.segment_writer import SegmentWriter
run = Run(run_id="", rank=0, host="h", pid=os.getpid(), command="child", world_size=1,
          started_at_unix_ns=time.time_ns(), tool_version="t", source="watch")
w = SegmentWriter(sys.argv[1], run, flush_interval_s=0.01)
i = 0
while True:
    for _ in range(50):
        w.emit_span(Span(rank=0, kind="cpu_op", name="step_math", category="compute",
                         start_ns=i * 1000, end_ns=i * 1000 + 900, correlation=i))
        i += 1
    w.flush()
    print(i, flush=True)
    time.sleep(0.002)
"""


def test_killed_writer_leaves_a_readable_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=ROOT,
    )
    flushed = 0
    try:
        assert child.stdout is not None
        for _ in range(30):
            line = child.stdout.readline()
            assert line, "child died early"
            flushed = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    reader = RunReader(run_dir)
    got = reader.query("SELECT correlation FROM spans ORDER BY correlation").fetchnumpy()["correlation"]
    (w,) = reader.writers
    assert w.status == "running"
    reader.close()
    # everything up to the last flush the child confirmed, in order, nothing twice, nothing invented
    assert len(got) >= flushed
    assert (got == np.arange(len(got))).all()
    proc = run_cli("summary", run_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    notes = json.loads(proc.stdout)["notes"]
    assert any("killed" in n for n in notes), notes


def test_ranks_with_their_own_anchors_share_one_timeline(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    anchor = 1_700_000_000_000_000_000
    for rank, shift_ns in ((0, 0), (1, 5_000_000)):
        w = SegmentWriter(run_dir, make_run(rank, anchor + shift_ns, pid=4242), background=False)
        w.emit_span(span(0, rank))  # at 0 ns on its own clock
        w.close()
    reader = RunReader(run_dir)
    rows = reader.query("SELECT rank, start_ns FROM spans ORDER BY rank").fetchall()
    assert rows == [(0, 0), (1, 5_000_000)]
    assert reader.ranks == [0, 1] and len({w.folder for w in reader.writers}) == 2  # same pid, two folders
    reader.close()


def test_schema_version_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    SegmentWriter(run_dir, make_run(), background=False).close()
    marker = run_dir / RUN_FILE
    data = json.loads(marker.read_text())
    data["schema_version"] = 0
    marker.write_text(json.dumps(data))
    with pytest.raises(RunDirError, match="schema 0"):
        RunReader(run_dir)
    with pytest.raises(RunDirError, match="schema 0"):  # a writer never joins a run of another version
        SegmentWriter(run_dir, make_run(), background=False)


def test_none_is_null_and_names_are_data(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    w = SegmentWriter(run_dir, make_run(), background=False)
    hostile = 'x\'); DROP TABLE spans; -- "quoted" \\ ünïcødé ✓\nnewline'
    w.emit_span(Span(rank=0, kind="user", name=hostile, start_ns=1, end_ns=2, attrs={"path": hostile}))
    w.emit_sample(Sample(rank=0, metric="gpu_util_pct", t_ns=1, value=None))
    w.emit_sample(Sample(rank=0, metric="gpu_util_pct", t_ns=2, value=0.0))
    w.close()
    reader = RunReader(run_dir)
    name, attrs, category, step = reader.query("SELECT name, attrs, category, step FROM spans").fetchone()
    assert name == hostile and json.loads(attrs)["path"] == hostile
    assert category is None and step is None
    assert reader.query("SELECT count(*) FROM samples WHERE value IS NULL").fetchone() == (1,)
    values = reader.samples("gpu_util_pct")["value"]
    assert np.isnan(values[0]) and values[1] == 0.0
    cols = reader.span_columns(0, with_attrs=True)
    assert cols.category[0] is None and cols.step[0] == -1 and cols.name[0] == hostile
    reader.close()


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    w = SegmentWriter(run_dir, make_run(), background=False, max_queue=10)
    for i in range(25):
        w.emit_span(span(i))
    w.close()
    assert counts(run_dir) == (10, 10)
    reader = RunReader(run_dir)
    assert reader.writers[0].dropped_spans == 15
    reader.close()
