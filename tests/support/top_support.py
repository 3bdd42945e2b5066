"""Helpers for the dashboard tests (tests/functional): runs to follow, and reading what the real app shows.

Test modules import the fixtures by name (a second conftest.py would shadow tests/conftest.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_dist_api_program
from synthetic_run import write_synthetic_run
from textual.app import App
from textual.pilot import Pilot


def screen_text(app: App) -> str:
    """The screen as plain text, line by line, as a terminal would show it (the compositor's own strips)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def wait_for(pilot: Pilot, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Let the app run until `condition()` holds; fails with the screen text when it does not."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s; the screen:\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


@pytest.fixture(scope="session")
def finished_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-rank synthetic run of 120 steps (rank 1 loads data slowly, rank 0 checkpoints)."""
    return write_synthetic_run(tmp_path_factory.mktemp("synthetic") / "run", steps=120)


@pytest.fixture(scope="session")
def watch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-rank gloo job under torchrun inside `gpuwatch.watch` (tests/support/dist_api_program.py)."""
    base = tmp_path_factory.mktemp("watch2")
    run_dir, _ = run_dist_api_program(base)
    return run_dir
