"""Snapshots of the dashboard's main screen at the smallest size it supports and at a large one
(pytest-textual-snapshot; update with `pytest --snapshot-update` after checking the change on screen).

The run is synthetic with fixed times and a fixed run id, opened by a relative path, and the screen shows
no clock, so the same code draws the same screen on every machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_run import write_synthetic_run
from textual.pilot import Pilot
from top_support import wait_for

from gpuwatch.tui.app import TopApp
from gpuwatch.tui.widgets import EventLog


async def settled(pilot: Pilot) -> None:
    """Until every poll of the finished run is drawn: the view, and the event log up to the run's end."""
    app = pilot.app
    assert isinstance(app, TopApp)

    def done() -> bool:
        events = app.query_one(EventLog).events
        return app.view is not None and app.ended and bool(events) and events[-1].text.startswith("run ended")

    await wait_for(pilot, done)
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(80, 24), (132, 40)], ids=["80x24", "132x40"])
def test_main_screen(
    snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_synthetic_run(tmp_path / "run", steps=120)
    assert snap_compare(TopApp(Path("run"), window_steps=50), terminal_size=size, run_before=settled)
