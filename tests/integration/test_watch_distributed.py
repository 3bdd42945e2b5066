"""Collective, DDP and checkpoint hooks on a real two-rank gloo job under torchrun (tests/dist_api_program.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, run_dist_api_program, span_rows

from gpuwatch.store.run_reader import RunReader


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("dist_api")
    return run_dist_api_program(base)


def spans(run_dir: Path) -> dict[int, list[dict]]:
    reader = RunReader(run_dir)
    try:
        return {rank: span_rows(reader.span_columns(rank, with_attrs=True)) for rank in reader.ranks}
    finally:
        reader.close()


def training_tid(rows: list[dict]) -> int:
    return next(r["tid"] for r in rows if r["kind"] == "step")


def test_every_collective_is_recorded_once_with_bytes_group_and_matching_seq(
    dist_run: tuple[Path, Path],
) -> None:
    run_dir, out_dir = dist_run
    by_rank = spans(run_dir)
    keys = {}
    for rank, rows in by_rank.items():
        calls = json.loads((out_dir / f"calls.rank{rank}.json").read_text())
        tid = training_tid(rows)
        step0 = [r for r in rows if r["kind"] == "collective" and r["step"] == 0 and r["tid"] == tid]
        got = [
            (r["attrs"]["collective"], r["bytes"] if r["bytes"] >= 0 else None, r["attrs"]["process_group"])
            for r in step0
        ]
        want = [(c["collective"], c["bytes"], c["group"]) for c in calls]
        assert got == want  # inner collectives of the object ones are not recorded twice
        assert all(r["category"] == "sync" and r["seq"] > 0 for r in step0)
        # the object collectives' own torch.save/torch.load of tensors is not a checkpoint
        assert not [r for r in rows if r["step"] == 0 and r["category"] == "checkpoint_io"]
        assert any(r["attrs"].get("async_op") for r in step0)
        keys[rank] = [(r["attrs"]["process_group"], r["seq"]) for r in step0]
    assert keys[0] == keys[1]  # the same (group, seq) names the same operation on both ranks
    assert len(set(keys[0])) == len(keys[0])


def test_ddp_reducer_wait_is_sync_inside_backward_and_names_the_late_rank(
    dist_run: tuple[Path, Path],
) -> None:
    run_dir, _ = dist_run
    by_rank = spans(run_dir)
    waits = {r: [s for s in rows if s["name"] == "DDP reducer wait"] for r, rows in by_rank.items()}
    assert [s["step"] for s in waits[0]] == [1, 2, 3]
    # rank 1 sleeps 80 ms before each backward: rank 0 waits about that long in the reducer, rank 1 hardly
    assert all(s["end_ns"] - s["start_ns"] > 50e6 for s in waits[0])
    assert all(s["end_ns"] - s["start_ns"] < 30e6 for s in waits[1])
    for wait in waits[0]:
        backward = [
            s
            for s in by_rank[0]
            if s["name"] == "backward" and s["start_ns"] <= wait["start_ns"] <= s["end_ns"]
        ]
        assert backward and wait["end_ns"] <= backward[0]["end_ns"] + 1000
    summary = json.loads(run_cli("summary", run_dir, "--json").stdout)
    assert summary["straggler"]["rank"] == 1
    rank0 = next(r for r in summary["ranks"] if r["rank"] == 0)
    assert any(e["name"] == "DDP reducer wait" for e in rank0["evidence"] if e["category"] == "sync")


def test_checkpoint_calls_and_how_long_async_save_blocks(dist_run: tuple[Path, Path]) -> None:
    run_dir, out_dir = dist_run
    for rank, rows in spans(run_dir).items():
        tid = training_tid(rows)
        on_loop = {r["name"]: r for r in rows if r["tid"] == tid and r["category"] == "checkpoint_io"}
        assert {"dcp.save", "dcp.async_save (blocking)", "dcp.load", "torch.save", "torch.load"} <= set(
            on_loop
        )
        assert "dcp.async_save wait (upload)" in on_loop  # the loop's own wait for the upload
        assert on_loop["torch.save"]["bytes"] == (out_dir / f"plain-rank{rank}.pt").stat().st_size
        background = [r for r in rows if r["name"] == "dcp.async_save (background upload)"]
        assert len(background) == 1 and background[0]["tid"] != tid
        blocking = on_loop["dcp.async_save (blocking)"]
        assert background[0]["start_ns"] == blocking["end_ns"]  # the upload begins when the call returns
        # DCP's own collectives run inside the checkpoint spans: the budget counts them as checkpoint_io
        inside = [
            r for r in rows
            if r["kind"] == "collective" and r["tid"] == tid and on_loop["dcp.save"]["start_ns"] <= r["start_ns"] <= on_loop["dcp.save"]["end_ns"]
        ]  # fmt: skip
        assert inside


def test_no_hook_failed(dist_run: tuple[Path, Path]) -> None:
    run_dir, _ = dist_run
    reader = RunReader(run_dir)
    try:
        for writer in reader.writers:
            assert writer.status == "ended"
            assert writer.run.world_size == 2 and writer.run.source == "watch"
            assert not [k for k in writer.notes if k.startswith("hook_error")], writer.notes
    finally:
        reader.close()
