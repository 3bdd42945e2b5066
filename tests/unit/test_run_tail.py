"""RunTail: each poll returns exactly the rows written since the last one, through compaction, as RunReader
reads them (the live dashboard's incremental reading)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_run import ANCHOR_UNIX_NS, SyntheticRun

from gpuwatch.errors import RunDirUsageError
from gpuwatch.records import Run, Span
from gpuwatch.store.run_reader import RunReader
from gpuwatch.store.run_tail import RunTail
from gpuwatch.store.segment_writer import COMPACT_EVERY, SegmentWriter


def rows_of(cols: object) -> list[tuple]:
    return list(
        zip(
            cols.rank.tolist(),  # type: ignore[attr-defined]
            cols.start_ns.tolist(),  # type: ignore[attr-defined]
            cols.end_ns.tolist(),  # type: ignore[attr-defined]
            cols.name.tolist(),  # type: ignore[attr-defined]
            cols.category.tolist(),  # type: ignore[attr-defined]
            cols.seq.tolist(),  # type: ignore[attr-defined]
            cols.attrs.tolist(),  # type: ignore[attr-defined]
            strict=True,
        )
    )


def reader_rows(run_dir: Path) -> list[tuple]:
    reader = RunReader(run_dir)
    try:
        return sorted(r for rank in reader.ranks for r in rows_of(reader.span_columns(rank, with_attrs=True)))
    finally:
        reader.close()


def test_polls_return_each_row_once_through_compaction(tmp_path: Path) -> None:
    run = SyntheticRun(tmp_path / "run", ranks=2, steps_per_flush=1)
    tail = RunTail(tmp_path / "run", sample_metrics=("proc_cpu_pct",))
    got: list[tuple] = []
    samples = 0
    compacted_seen = False
    for _ in range(9):  # 9 x 17 steps, one flush per step: compaction happens between polls
        run.append(17)
        batch = tail.poll()
        got += [r for c in batch.chunks for r in rows_of(c.spans)]
        samples += len(batch.samples["t_ns"])
        assert set(batch.samples["metric"].tolist()) == {"proc_cpu_pct"}
        compacted_seen |= any(c.order_key[1] > 1 and len(c.spans) for c in batch.chunks)
        names = [p.name for p in (tmp_path / "run" / "rank0000-pid4000").iterdir()]
        compacted_seen |= any(
            n.startswith("spans-") and n.split("-")[1] != n.split("-")[2][:6] for n in names
        )
    run.close()
    batch = tail.poll()
    got += [r for c in batch.chunks for r in rows_of(c.spans)]
    assert compacted_seen and 9 * 17 * 2 > COMPACT_EVERY
    assert sorted(got) == reader_rows(tmp_path / "run")
    assert samples == 2 * 9 * 17  # one proc_cpu_pct sample per rank per flush
    assert tail.poll().new_rows == 0


def test_a_writer_with_an_earlier_anchor_moves_the_timeline(tmp_path: Path) -> None:
    def writer(rank: int, anchor: int) -> SegmentWriter:
        run = Run("r", rank, "h", 10 + rank, "cmd", 2, anchor, "t", "watch")
        return SegmentWriter(tmp_path / "run", run, background=False)

    late = writer(0, ANCHOR_UNIX_NS + 5_000)
    late.emit_span(Span(0, "phase", "forward", 100, 200, "compute", tid=1))
    late.flush()
    tail = RunTail(tmp_path / "run")
    first = tail.poll()
    assert first.chunks[0].spans.start_ns.tolist() == [100]
    early = writer(1, ANCHOR_UNIX_NS)
    early.emit_span(Span(1, "phase", "forward", 100, 200, "compute", tid=2))
    early.flush()
    second = tail.poll()
    assert second.anchor_moved_ns == 5_000
    assert [c.spans.start_ns.tolist() for c in second.chunks] == [[100]]
    # what the batch says to add to old rows puts both on the reader's timeline
    assert reader_rows(tmp_path / "run") == sorted(
        [
            (0, 100 + 5_000, 200 + 5_000, "forward", "compute", -1, None),
            (1, 100, 200, "forward", "compute", -1, None),
        ]
    )


def test_a_missing_directory_is_a_usage_error_until_it_appears(tmp_path: Path) -> None:
    tail = RunTail(tmp_path / "later")
    with pytest.raises(RunDirUsageError):
        tail.poll()
    run = SyntheticRun(tmp_path / "later", ranks=1)
    assert tail.poll().new_rows == 0  # the writer exists, nothing flushed yet
    run.append(3)
    batch = tail.poll()
    assert sum(len(c.spans) for c in batch.chunks) == 3 * 7  # 6 phases and the step marker
    assert np.all(np.diff([c.order_key[1] for c in batch.chunks]) >= 0)


def test_a_segment_compacted_away_between_listing_and_reading_is_read_from_the_compacted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = SyntheticRun(tmp_path / "run", ranks=1, steps_per_flush=1, notes=False)
    tail = RunTail(tmp_path / "run")
    run.append(3)
    got = [r for c in tail.poll().chunks for r in rows_of(c.spans)]
    run.append(3)  # three more small segments, listed by the next poll...
    writer = run.writers[0]
    real = RunTail._new_segments
    compacted = []

    def list_then_compact(self: RunTail, folder: Path, table: str, read_to: int) -> list:
        found = real(self, folder, table, read_to)
        if table == "spans" and not compacted:  # ...and compacted by the writer right after the listing
            monkeypatch.setattr("gpuwatch.store.segment_writer.COMPACT_EVERY", 2)
            writer.retire_after_s = 0  # the replaced small segments go at once (a long reader's worst case)
            writer._maybe_compact("spans")
            compacted.append(True)
        return found

    monkeypatch.setattr(RunTail, "_new_segments", list_then_compact)
    got += [r for c in tail.poll().chunks for r in rows_of(c.spans)]
    assert compacted
    names = sorted(p.name for p in writer.folder.glob("spans-*"))
    assert len(names) == 1 and names[0].startswith("spans-000001-"), names  # the listed ones are gone
    run.close()
    got += [r for c in tail.poll().chunks for r in rows_of(c.spans)]
    assert sorted(got) == reader_rows(tmp_path / "run")
