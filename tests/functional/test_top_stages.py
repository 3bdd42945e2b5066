"""`gpuwatch top` on a run with stages and tags: each stage's budget for the rank in focus, and the tag value
that makes the rank others wait for slow (a synthetic labeled run, tests/support/labeled_run.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from labeled_run import LabeledPlan, write_labeled_run
from textual.pilot import Pilot
from top_support import screen_text, wait_for

from gpuwatch.tui.app import TopApp


def plan() -> LabeledPlan:
    """Rank 2 draws the costly source in every third step; the second half is a stage that loads more."""
    draws = [["image", "image", "video_hr" if i % 3 == 1 else "image"] for i in range(24)]
    stages: list[str | None] = [None] * 24
    stages[0], stages[12] = "images", "video_256"
    return LabeledPlan(draws=draws, stages=stages, stage_extra_ms={"video_256": 10.0})


def test_top_shows_per_stage_budgets_and_the_tag_cause(tmp_path: Path) -> None:
    run = write_labeled_run(tmp_path / "run", plan())
    app = TopApp(run)

    async def scenario(pilot: Pilot) -> None:
        await wait_for(pilot, lambda: app.view is not None and app.view.summary is not None)
        await pilot.press("w")  # the whole run: both stages
        await wait_for(pilot, lambda: "stage video_256:" in screen_text(app))
        text = screen_text(app)
        assert "stage images: 12 steps" in text
        assert "slow when it drew source=video_hr" in text

    async def main() -> None:
        async with app.run_test(size=(140, 48)) as pilot:
            await scenario(pilot)

    asyncio.run(main())
