"""Shared helpers of the reference-trainer tests: one generated data set per session, the CLI as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def trainer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("GPUWATCH_DEBUG", None)
    return env


def run_trainer(args: list[str], *, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    """`python -m reference_trainer ARGS` in a fresh process; fails the test with its stderr if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "reference_trainer", *args],
        cwd=ROOT,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, f"trainer failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def step_losses(run_dir: Path, rank: int) -> dict[int, float]:
    """The loss of every step a rank logged (from its trainer metrics file)."""
    out = {}
    for line in (run_dir / "trainer" / f"metrics-rank{rank}.jsonl").read_text().splitlines():
        doc = json.loads(line)
        if doc.get("event") == "step" and doc.get("loss") is not None:
            out[int(doc["step"])] = float(doc["loss"])
    return out


def shared_data_root() -> Path:
    """One generated data set for every reference-trainer test on this machine (kept between sessions)."""
    from reference_trainer.data import ensure_dataset

    root = Path(tempfile.gettempdir()) / "gpuwatch-reference-trainer-tests"
    ensure_dataset(root)
    return root


def trainer_records(run_dir: Path, rank: int, event: str = "step") -> list[dict]:
    """The trainer's own per-step records of one rank (its perf_counter timings)."""
    path = run_dir / "trainer" / f"metrics-rank{rank}.jsonl"
    return [d for d in map(json.loads, path.read_text().splitlines()) if d.get("event") == event]
