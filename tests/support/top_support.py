"""Helpers for the dashboard tests (tests/functional): runs to follow, and reading what the real app shows.

Test modules import the fixtures by name (a second conftest.py would shadow tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, cli_env
from synthetic_run import write_synthetic_run
from textual.app import App
from textual.pilot import Pilot

DIST_PROGRAM = ROOT / "tests" / "support" / "dist_api_program.py"


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
    run_dir, out_dir = base / "run", base / "out"
    out_dir.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        str(DIST_PROGRAM), str(run_dir), str(out_dir),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=base, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir
