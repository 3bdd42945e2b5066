"""Run directories damaged on disk: `summary`, `report` and `top` read what is intact and name what they
skipped (DESIGN.md "Bad input").

Each damage is done to a real run written by the real segment writer (tests/support/synthetic_run.py: two
ranks, JSON-lines segments) or by the real importer (Parquet segments): a segment truncated in the middle
of a line, overwritten with garbage, of another schema (rows without a column, or a writer of another
record schema), replaced by something unreadable; the run marker lost or corrupt; a writer record
unreadable. What is intact must read exactly as before the damage.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli
from synthetic_kineto import planted_rank
from synthetic_run import write_synthetic_run

from gpuwatch.attribution.summary import Summary, load_summary
from gpuwatch.errors import RunDirError
from gpuwatch.store.run_tail import RunTail

STEPS = 40  # 4 flushes of 10 steps per rank


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("pristine") / "run", steps=STEPS, ranks=2)


def _copy(pristine: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    (run / "summary-cache.json").unlink(missing_ok=True)
    return run


def _segments(run: Path, rank: int, table: str = "spans") -> list[Path]:
    return sorted(run.glob(f"rank{rank:04d}-*/{table}-*.jsonl"))


def truncated_segment(run: Path) -> None:
    seg = _segments(run, 1)[1]
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2 + 7])  # mid-line: the file ends inside a record


def garbage_segment(run: Path) -> None:
    _segments(run, 1)[0].write_bytes(os.urandom(3000).replace(b"\n", b" "))


def rows_of_another_schema(run: Path) -> None:
    seg = _segments(run, 1)[2]
    rows = [json.loads(line) for line in seg.read_text().splitlines()]
    for r in rows:  # a renamed column: what another record schema would write
        r["begin_ns"] = r.pop("start_ns")
    seg.write_text("".join(json.dumps(r) + "\n" for r in rows))


def writer_of_another_schema(run: Path) -> None:
    (record,) = run.glob("rank0001-*/writer.json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "schema_version": 99}))


def unreadable_segment(run: Path) -> None:
    seg = _segments(run, 1)[3]
    seg.unlink()
    seg.mkdir()  # unreadable as a file even for root (chmod 000 does not stop root)


def unreadable_samples(run: Path) -> None:
    seg = _segments(run, 1, "samples")[0]
    seg.write_bytes(seg.read_bytes()[:40])


def missing_marker(run: Path) -> None:
    (run / "gpuwatch-run.json").unlink()


def corrupt_marker(run: Path) -> None:
    (run / "gpuwatch-run.json").write_text('{"format": "gpuwatch-ru')


def unreadable_writer_record(run: Path) -> None:
    (record,) = run.glob("rank0001-*/writer.json")
    record.unlink()
    record.mkdir()


# damage -> (steps still read on rank 1 (None: rank 1 is left out), words the notes must have)
DAMAGES: dict[str, tuple[Callable[[Path], None], int | None, tuple[str, ...]]] = {
    "truncated segment": (truncated_segment, STEPS - 5, ("spans-000003-000003.jsonl", "intact lines")),
    "garbage segment": (garbage_segment, STEPS - 10, ("spans-000001-000001.jsonl", "damaged")),
    "rows of another schema": (rows_of_another_schema, STEPS - 10, ("spans-000005-000005.jsonl", "damaged")),
    "writer of another schema": (writer_of_another_schema, None, ("rank0001", "record schema 99")),
    "unreadable segment": (unreadable_segment, STEPS - 10, ("spans-000007-000007.jsonl", "skipped")),
    "missing marker": (missing_marker, STEPS, ("no gpuwatch-run.json",)),
    "corrupt marker": (corrupt_marker, STEPS, ("unreadable gpuwatch-run.json",)),
    "unreadable writer record": (unreadable_writer_record, None, ("rank0001", "writer.json")),
}


def _budget(s: Summary, rank: int) -> dict[str, float]:
    return s.to_json()["ranks"][rank]["budget_pct"]


def _steps(s: Summary) -> dict[int, int]:
    return {r["rank"]: r["steps"] for r in s.to_json()["ranks"]}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_summary_and_top_read_what_is_intact(pristine: Path, tmp_path: Path, damage: str) -> None:
    run = _copy(pristine, tmp_path)
    before = load_summary(pristine, use_cache=False)
    do, rank1_steps, words = DAMAGES[damage]
    do(run)

    after = load_summary(run, use_cache=False)
    want_steps = {0: STEPS} if rank1_steps is None else {0: STEPS, 1: rank1_steps}
    assert _steps(after) == want_steps
    assert _budget(after, 0) == _budget(before, 0)  # the intact rank reads exactly as before
    said = [n for n in after.notes if all(w in n for w in words)]
    assert len(said) == 1, after.notes

    # top follows the same run: the same rows, and the event log / window notes name the damage
    tail = RunTail(run)
    batch = tail.poll()
    tail.close()
    ranks = {r for chunk in batch.chunks for r in set(chunk.spans.rank.tolist())}
    told = list(batch.skipped) + [
        f"{key}: {note['message']}" for w in batch.writers for key, note in w.notes.items()
    ]
    assert any(words[0] in line for line in told), told
    assert ranks == set(want_steps)


def test_the_whole_run_damaged_is_one_line(pristine: Path, tmp_path: Path) -> None:
    run = _copy(pristine, tmp_path)
    for seg in run.glob("rank*/spans-*.jsonl"):
        seg.write_bytes(b"\x00garbage")
    with pytest.raises(RunDirError, match="every span segment is damaged"):
        load_summary(run, use_cache=False)


def test_a_broken_parquet_segment_of_an_import(tmp_path: Path) -> None:
    """Imported runs are Parquet: a broken one is skipped whole, the other rank is read as imported."""
    traces = tmp_path / "traces"
    traces.mkdir()
    for rank in (0, 1):
        planted_rank(3, rank=rank, world_size=2).write(traces / f"rank{rank}.pt.trace.json.gz")
    run = tmp_path / "run"
    assert run_cli("import", traces, "--out", run).returncode == 0
    before = load_summary(run, use_cache=False)
    (seg,) = run.glob("rank0001-*/spans-*.parquet")
    seg.write_bytes(seg.read_bytes()[:200])
    after = load_summary(run, use_cache=False)
    assert _steps(after) == {0: 3} and _budget(after, 0) == _budget(before, 0)
    assert any("damaged, skipped" in n and seg.name in n for n in after.notes), after.notes


def test_command_line_summary_report_and_top_on_a_damaged_run(pristine: Path, tmp_path: Path) -> None:
    """Several damages at once, through the real commands: exit 0, and each damage named."""
    run = _copy(pristine, tmp_path)
    for damage in (truncated_segment, unreadable_samples, missing_marker):
        damage(run)

    summary = run_cli("summary", run)
    assert summary.returncode == 0, summary.stderr
    text = " ".join(summary.stdout.split())
    assert "spans-000003-000003.jsonl" in text and "no gpuwatch-run.json" in text, summary.stdout

    html = tmp_path / "report.html"
    report = run_cli("report", run, "-o", html)
    assert report.returncode == 0, report.stderr
    page = html.read_text()
    assert "spans-000003-000003.jsonl" in page and "no gpuwatch-run.json" in page

    from gpuwatch.cli.top_cmd import check_run_dir
    from gpuwatch.tui.follower import RunFollower

    check_run_dir(run)  # a run without its marker is still a run for `top`
    follower = RunFollower(run)
    result = follower.poll()
    follower.close()
    log = [e.text for e in result.events]
    assert any("skipped: no gpuwatch-run.json" in line for line in log), log
    assert any("spans-000003-000003.jsonl" in line for line in log), log
    assert any("samples-000002-000002.jsonl" in line for line in log), log
