"""`gpuwatch top`: the real Textual app driven with its pilot (`App.run_test()`) over real runs.

Runs: a synthetic 2-rank run written with the real segment writer (finished, and growing while the app
follows it), the real 2-rank HTA trace imported, a real 2-rank gloo job under `gpuwatch.watch`, and a real
program attached with py-spy that exits while it is followed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import run_cli, summary_json
from synthetic_run import StepPlan, SyntheticRun, write_synthetic_run
from textual.pilot import Pilot
from top_support import finished_synthetic, screen_text, wait_for, watch_run  # noqa: F401 (fixtures)

from gpuwatch.tui import render
from gpuwatch.tui.app import TopApp
from gpuwatch.tui.widgets import EventLog, RankBars

BUDGET_ROW = re.compile(r"■ (\w+)\s+(?:█*\s+)?([\d.]+)\s+([\d.]+)")  # the share bar is optional


def drive(
    app: TopApp, scenario: Callable[[Pilot], Awaitable[None]], size: tuple[int, int] = (120, 40)
) -> None:
    """Run the app headless at `size` and play `scenario` against it."""

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await scenario(pilot)

    asyncio.run(main())


async def shown(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, TopApp)
    await wait_for(pilot, lambda: app.view is not None and app.view.summary is not None)
    await pilot.pause(0.1)


def budget_rows(app: TopApp) -> dict[str, tuple[str, str]]:
    """The budget panel's rows as shown: category -> (percent text, ms/step text)."""
    return {m[1]: (m[2], m[3]) for m in BUDGET_ROW.finditer(screen_text(app))}


async def pick_rank(pilot: Pilot, rank: int) -> None:
    """Choose a rank with the keys a user presses: r, arrows, enter."""
    app = pilot.app
    assert isinstance(app, TopApp) and app.view is not None and app.view.summary is not None
    ranks = [rs.rank for rs in app.view.summary.ranks]
    await pilot.press("r")
    await pilot.pause(0.1)
    moves = ranks.index(rank) - ranks.index(app.rank)
    for _ in range(abs(moves)):
        await pilot.press("down" if moves > 0 else "up")
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.rank == rank and f"rank {rank}," in screen_text(app))


def event_texts(app: TopApp) -> list[str]:
    """Every line the event log holds (the screen shows its newest lines)."""
    return [e.text for e in app.query_one(EventLog).events]


def check_whole_run_equals_summary(run_dir: Path) -> None:
    doc = summary_json(run_dir)
    app = TopApp(run_dir)

    async def scenario(pilot: Pilot) -> None:
        await shown(pilot)
        await pilot.press("w")
        await wait_for(pilot, lambda: app.view is not None and app.view.window_steps is None)
        assert app.view is not None and app.view.summary is not None
        # the same Summary code: every number of every rank is the summary's
        shown_ranks = app.view.summary.to_json()["ranks"]
        assert [r["rank"] for r in shown_ranks] == [r["rank"] for r in doc["ranks"]]
        for mine, theirs in zip(shown_ranks, doc["ranks"], strict=True):
            for key in theirs:
                assert mine[key] == theirs[key], (mine["rank"], key, app.run_dir)
        assert app.view.summary.to_json()["straggler"] == doc["straggler"]
        assert "whole run" in screen_text(app)
        for rank_doc in doc["ranks"]:
            await pick_rank(pilot, rank_doc["rank"])
            rows = budget_rows(app)
            for category, value in rank_doc["budget_pct"].items():
                per_step = rank_doc["budget_ms_per_step"][category]
                assert rows[category] == (f"{value:.1f}", f"{per_step:.1f}"), category
            text = screen_text(app)
            assert f"median {render.ms(rank_doc['step_time_ms']['median'])}" in text
            assert f"compute{render.pct(rank_doc['budget_pct']['compute'])}" in text  # its bar's line

    drive(app, scenario)


def test_finished_synthetic_run_shows_exactly_the_summary(finished_synthetic: Path) -> None:  # noqa: F811
    check_whole_run_equals_summary(finished_synthetic)


def test_imported_real_trace_shows_exactly_the_summary(shared_runs: Callable[[str], Path]) -> None:
    check_whole_run_equals_summary(shared_runs("trace_filter"))


@pytest.mark.slow
def test_two_rank_watch_run_shows_exactly_the_summary(watch_run: Path) -> None:  # noqa: F811
    check_whole_run_equals_summary(watch_run)


def test_window_is_the_last_steps_of_every_rank(finished_synthetic: Path) -> None:  # noqa: F811
    app = TopApp(finished_synthetic, window_steps=20)

    async def scenario(pilot: Pilot) -> None:
        await shown(pilot)
        assert app.view is not None and app.view.summary is not None
        assert "last 20 steps (100-119)" in screen_text(app)
        for rs in app.view.summary.ranks:
            assert rs.steps == 20 and rs.per_step is not None and rs.per_step.step == tuple(range(100, 120))
        # rank 1 loads 30 ms of every ~123 ms step: the window says so, and names it as the rank waited for
        assert app.view.summary.rank(1).budget_pct.data_loading == pytest.approx(100 * 30 / 123.5, abs=1.5)
        assert app.view.summary.straggler is not None and app.view.summary.straggler.rank == 1
        assert "rank 1 keeps the others waiting" in screen_text(app)

    drive(app, scenario)


def test_a_growing_run_moves_the_numbers_on_screen(tmp_path: Path) -> None:
    """Each flush of a growing run reaches the screen: the window moves to its steps and rank 1's data loading
    share grows with them. The writer waits for the screen after each flush (a trainer flushes every second or
    so; how soon the app catches up on a loaded machine is not what this checks)."""
    run = SyntheticRun(tmp_path / "run", ranks=2, steps_per_flush=5, checkpoint_every=0)
    run.append(30)
    app = TopApp(tmp_path / "run", window_steps=20, refresh_s=0.1)
    seen: list[float] = []

    async def scenario(pilot: Pilot) -> None:
        await shown(pilot)
        await pick_rank(pilot, 1)
        seen.append(float(budget_rows(app)["data_loading"][0]))
        for slow_ms in range(40, 140, 10):  # rank 1's data loading gets slower, flush by flush
            run.plan = StepPlan(slow_data_ms=float(slow_ms))
            run.append(5)
            label = f"last 20 steps ({run.steps - 20}-{run.steps - 1})"
            await wait_for(
                pilot, lambda label=label: label in screen_text(app) and "data_loading" in budget_rows(app)
            )
            seen.append(float(budget_rows(app)["data_loading"][0]))
        run.close()
        await wait_for(pilot, lambda: app.state == "ended")
        assert "last 20 steps (60-79)" in screen_text(app)
        assert seen[0] == pytest.approx(100 * 30 / 120, abs=0.1)  # 30 ms of a 120 ms step
        assert seen[-1] == pytest.approx(100 * 115 / 205, abs=0.1)  # 100-130 ms of 175-205 ms steps
        assert app.view is not None and app.view.summary is not None
        assert app.view.summary.rank(1).per_step is not None
        assert app.view.summary.rank(1).per_step.step[-1] == 79

    drive(app, scenario)
    assert all(a < b for a, b in zip(seen, seen[1:])), seen  # every flush moved it, and up


def test_an_analysis_put_off_while_the_run_grows_is_made_once_due(tmp_path: Path) -> None:
    """The window's analysis is paced while a run grows (`max_analysis_cpu`); one put off must still be made
    when it falls due, although no more data comes (a run that pauses, a writer waiting for the screen)."""
    from gpuwatch.tui.follower import RunFollower

    run = SyntheticRun(tmp_path / "run", ranks=2, steps_per_flush=5, checkpoint_every=0)
    run.append(30)
    follower = RunFollower(tmp_path / "run")
    follower.poll()
    first = follower.view(20)
    assert first is not None and first.window_label == "last 20 steps (10-29)"
    follower.max_analysis_cpu = 1e-12  # the next analysis is not due for ages
    run.append(10)
    follower.poll()
    held = follower.view(20)
    assert held is not None and held.window_label == "last 20 steps (10-29)" and held.version > first.version
    assert follower.view(20) is held  # nothing new: the same view, not one to draw again
    follower.max_analysis_cpu = 1e12  # now it is due; no poll, no new data
    moved = follower.view(20)
    assert moved is not None and moved.window_label == "last 20 steps (20-39)"
    assert follower.view(20) is moved
    follower.close()


def test_every_key(tmp_path: Path) -> None:
    run = SyntheticRun(tmp_path / "run", ranks=2, steps_per_flush=5)
    run.append(30)
    app = TopApp(tmp_path / "run", window_steps=10, refresh_s=0.1, report_dir=tmp_path)

    async def scenario(pilot: Pilot) -> None:
        await shown(pilot)
        # p: paused, the screen stays as it was while the run grows; p again catches up
        await pilot.press("p")
        await wait_for(pilot, lambda: "■ paused" in screen_text(app))
        version = app.view.version if app.view else -1
        run.append(20)
        await pilot.pause(0.6)
        assert app.view is not None and app.view.version == version
        assert "last 10 steps (20-29)" in screen_text(app)
        await pilot.press("p")
        await wait_for(pilot, lambda: "last 10 steps (40-49)" in screen_text(app))
        # w: the whole run, and back
        await pilot.press("w")
        await wait_for(pilot, lambda: "whole run (50 steps)" in screen_text(app))
        await pilot.press("w")
        await wait_for(pilot, lambda: "last 10 steps (40-49)" in screen_text(app))
        # r: the chooser lists the ranks; enter picks one
        await pilot.press("r")
        await wait_for(pilot, lambda: "choose a rank" in screen_text(app))
        assert "rank 1: compute" in screen_text(app)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.rank == 1 and "time budget: rank 1" in screen_text(app))
        # the mouse: a click on rank 0's bar
        await pilot.click(RankBars, offset=(3, 0))
        await wait_for(pilot, lambda: app.rank == 0 and "time budget: rank 0" in screen_text(app))
        # ?: help, escape closes it
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: "this help" in screen_text(app))
        await pilot.press("escape")
        await wait_for(pilot, lambda: "this help" not in screen_text(app))
        # e: the HTML report of the window on screen, or a clear word that this build has none
        await pilot.press("e")
        if importlib.util.find_spec("reports.html") is None:
            await wait_for(pilot, lambda: any("HTML export is unavailable" in n for n in app.notices))
        else:
            report = tmp_path / "gpuwatch-top-synthetic0001-last10.html"  # the window on screen
            await wait_for(pilot, lambda: any(n.startswith("HTML report written") for n in app.notices), 60)
            assert report.exists() and "synthetic0001" in report.read_text()
        # q: quits
        await pilot.press("q")
        await pilot.pause(0.2)
        assert not app.is_running

    drive(app, scenario)


def test_too_small_a_terminal_says_so_until_it_grows(finished_synthetic: Path) -> None:  # noqa: F811
    app = TopApp(finished_synthetic)

    async def scenario(pilot: Pilot) -> None:
        await pilot.pause(0.3)
        assert "terminal too small: 60x20; gpuwatch top needs at least 80x24" in screen_text(app)
        assert "time budget" not in screen_text(app)
        await pilot.resize_terminal(100, 30)
        await shown(pilot)
        await wait_for(pilot, lambda: "time budget: rank 0" in screen_text(app))
        assert "terminal too small" not in screen_text(app)

    drive(app, scenario, size=(60, 20))


def test_waits_for_a_run_directory_that_does_not_exist_yet(tmp_path: Path) -> None:
    later = tmp_path / "later"
    app = TopApp(later, refresh_s=0.1)

    async def scenario(pilot: Pilot) -> None:
        await wait_for(
            pilot, lambda: f"waiting for {later} to appear (nothing there yet)" in screen_text(app)
        )
        assert "■ waiting" in screen_text(app)
        run = SyntheticRun(later, ranks=2)
        await wait_for(pilot, lambda: "waiting for the first spans" in screen_text(app))
        run.append(10)
        await shown(pilot)
        await wait_for(pilot, lambda: "● following" in screen_text(app) and "compute" in screen_text(app))
        run.close()
        await wait_for(pilot, lambda: "■ ended" in screen_text(app) and "run ended" in screen_text(app))

    drive(app, scenario)


def test_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    proc = run_cli("top", foreign)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == f"gpuwatch top: not a gpuwatch run directory (no gpuwatch-run.json): {foreign}"
    )
    other = write_synthetic_run(tmp_path / "old", steps=2)
    marker = other / "gpuwatch-run.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "schema_version": 999}))
    proc = run_cli("top", other)
    assert proc.returncode == 1 and "run schema 999" in proc.stderr and len(proc.stderr.splitlines()) == 1
    # on screen too (a folder that turns foreign while followed, or the app opened on one directly)
    app = TopApp(foreign, refresh_s=0.1)

    async def scenario(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: "not a gpuwatch run directory" in screen_text(app))

    drive(app, scenario)


def test_device_panel_shows_nvml_gauges_when_the_run_has_them(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=20, gpu=True)
    app = TopApp(run_dir)

    async def scenario(pilot: Pilot) -> None:
        await shown(pilot)
        text = screen_text(app)
        assert "devices (NVML)" in text
        assert re.search(r"0\s+0\s+60\.0%.*30\.0G / 80\.0G\s+350 W", text), text
        assert re.search(r"1\s+1\s+65\.0%.*31\.0G / 80\.0G\s+351 W", text), text

    drive(app, scenario)


def test_process_panel_and_event_log_without_a_gpu(finished_synthetic: Path) -> None:  # noqa: F811
    app = TopApp(finished_synthetic)

    async def scenario(pilot: Pilot) -> None:
        await shown(pilot)
        await wait_for(pilot, lambda: "run ended" in screen_text(app))
        text = screen_text(app)
        assert "processes (/proc; no GPU samples)" in text
        # 64 MiB read per flush of 10 steps (1.2 s of run time)
        assert re.search(r"0\s+4000\s+95%\s+1\.5G\s+2\s+140%\s+800M\s+53\.3M/s", text), text
        texts = event_texts(app)
        assert texts.count("checkpoint torch.save: 0.20 s in step 49") == 1
        assert any(t.startswith("note dataloader: DataLoader num_workers=0") for t in texts)
        assert texts[-1] == "run ended: all 2 writers closed"

    drive(app, scenario)


def test_top_pid_follows_an_attached_program_until_it_exits(tmp_path: Path) -> None:
    from attach_support import Target

    from gpuwatch.cli.top_cmd import AttachFeed

    pytest.importorskip("collectors.pyspy.pyspy_sampler")
    from collectors.pyspy.pyspy_sampler import find_pyspy

    try:
        find_pyspy(None)
    except Exception as exc:
        pytest.skip(f"py-spy is not available: {exc}")
    with Target("exit-after", "--seconds", "8") as target:
        feed = AttachFeed(target.pid, tmp_path / "run", chunk_s=1.0)
        feed.start()
        app = TopApp(tmp_path / "run", refresh_s=0.2, progress=feed.lines)

        async def scenario(pilot: Pilot) -> None:
            await wait_for(
                pilot, lambda: any(f"sampling process {target.pid}" in t for t in event_texts(app)), 60
            )
            await wait_for(pilot, lambda: "the traced process exited" in event_texts(app), 90)
            await wait_for(pilot, lambda: "■ ended" in screen_text(app))
            assert app.view is not None and [r.status for r in app.view.ranks] == ["target_exited"]

        try:
            drive(app, scenario)
        finally:
            feed.stop()
    assert feed.result is not None and feed.result.status == "target_exited"


def test_top_pid_of_no_process_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("top", "--pid", "999999999", "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpuwatch top: no such process: 999999999"
    assert run_cli("top").returncode == 2
