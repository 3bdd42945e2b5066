"""The reference trainer with its own gpuwatch calls off (`--no-gpuwatch`) under `gpuwatch run`: every budget
category within 0.5 pp of what its built-in watch gives, naive and fixed, 2 ranks.

Both budgets come from one execution, so the machine's run-to-run noise (several pp between two runs of one
configuration on these shared cores) stays out of it: the budget of the steps `gpuwatch run` found (optimizer
steps; on the manager-node rank that never steps an optimizer, the loop's structure) against the same spans
cut where the built-in watch's `gw.step()` cuts them (the trainer logs each step's wall-clock end,
`end_unix_ns`, right before its `gw.step()`). Everything else the built-in watch records is the same
collectors. Both are taken over the same stretch of the loop: `gpuwatch run`'s steps end at the last optimizer
step or, from the loop's structure, at the last wrap to the top of the loop, so the rest of the last iteration
(its checkpoint; on the manager node the whole last iteration, one of 16) is not in its budget, by design (see
`gpuwatch.capture.auto_steps`). The built-in watch's bounds are cut there too; what the run covers is checked
on its own. `benchmarks/run_vs_watch.py` compares separate runs, built-in watch against `gpuwatch run`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from reference_trainer_support import shared_data_root
from run_support import budget_at, gpuwatch_run, step_extent_unix_ns

pytestmark = pytest.mark.slow

STEPS = 16


def trainer_bounds(trainer_dir: Path, rank: int) -> list[int]:
    """Where the built-in watch's steps start and end: the loop's start, then each step's end (unix ns)."""
    path = trainer_dir / "trainer" / f"metrics-rank{rank}.jsonl"
    recs = [d for d in map(json.loads, path.read_text().splitlines()) if d.get("event") == "step"]
    return [recs[0]["end_unix_ns"] - int(recs[0]["step_s"] * 1e9)] + [r["end_unix_ns"] for r in recs]


@pytest.mark.parametrize("preset", ["naive", "fixed"])
def test_run_gives_the_budget_of_the_built_in_watch(tmp_path: Path, preset: str) -> None:
    out, trainer_dir = tmp_path / "run", tmp_path / "trainer-out"
    proc = gpuwatch_run(
        out, sys.executable, "-m", "reference_trainer", "--preset", preset, "--nproc", "2",
        "--steps", str(STEPS), "--batch-size", "8", "--no-gpuwatch", "--run-dir", trainer_dir,
        "--data-dir", shared_data_root(), timeout_s=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    # warm-up kept on both sides: each would otherwise leave out the leading steps it finds twice as long as
    # its median, and a first step near that line (a busy machine) can be left out of one side only
    summary = run_cli("summary", out, "--json", "--include-warmup")
    assert summary.returncode == 0, summary.stderr
    doc = json.loads(summary.stdout)
    assert [r["rank"] for r in doc["ranks"]] == [0, 1]
    notes = " | ".join(doc["notes"])
    assert "rank 0" in notes and "optimizer steps (AdamW.step()" in notes
    if preset == "naive":  # the manager node: only rank 0 has an optimizer
        assert "rank 1 (pid" in notes and "training loop's structure" in notes
    for r in doc["ranks"]:
        bounds = trainer_bounds(trainer_dir, r["rank"])
        steps, first_ns, last_ns = step_extent_unix_ns(out, r["rank"])
        # every iteration but the last is a step; the last one's end is the only part left out
        assert steps >= STEPS - 1 and abs(first_ns - bounds[0]) < 0.05 * (bounds[1] - bounds[0])
        near_ns = 0.05 * (bounds[-1] - bounds[-2])
        assert bounds[-2] - near_ns <= last_ns <= bounds[-1], (steps, last_ns, bounds)
        built_in = budget_at(
            out, r["rank"], [b for b in bounds if b < last_ns - near_ns] + [last_ns], include_warmup=True
        )
        diffs = {c: round(r["budget_pct"][c] - built_in[c], 2) for c in built_in}
        assert max(abs(d) for d in diffs.values()) <= 0.5, (r["rank"], diffs, r["budget_pct"])
