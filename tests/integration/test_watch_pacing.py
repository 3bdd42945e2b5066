"""A watch around a loop of millisecond steps observes some blocks of steps, not all (capture/step_pacing.py),
and its budget still matches what the loop measured of itself: checkpoint writes timed in every step, the
rest split as the observed steps split it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import gpuwatch
from collectors.hooks import hook_context as hc
from gpuwatch.attribution.analysis import analyze_run
from gpuwatch.attribution.summary import summarize

STEPS = 1600
CKPT_EVERY = 16


def loop(run_dir: Path, **options: object) -> tuple[dict[str, float], dict]:
    """The loop, timing its own phases; returns (truth %, the run's summary)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 32), torch.randint(0, 8, (16,))
    pad = torch.zeros(200_000)
    spent = {"compute": 0.0, "checkpoint_io": 0.0}
    with gpuwatch.watch(run_dir, system_samplers=False, **options) as gw:  # type: ignore[arg-type]
        t_start = time.perf_counter()
        for step in range(STEPS):
            t0 = time.perf_counter()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            t1 = time.perf_counter()
            spent["compute"] += t1 - t0
            if step % CKPT_EVERY == CKPT_EVERY - 1:
                state = {"model": model.state_dict(), "pad": pad}
                t2 = time.perf_counter()
                torch.save(state, run_dir.parent / "ck.pt")
                spent["checkpoint_io"] += time.perf_counter() - t2
            gw.step()
        wall = time.perf_counter() - t_start
        observing_at_end = gw.ctx.observing
    # whether or not the last step was observed, nothing of the watch is left published
    assert hc.ACTIVE is None and hc.WATCHING is None, observing_at_end
    truth = {k: 100 * v / wall for k, v in spent.items()}
    return truth, summarize(analyze_run(run_dir)).to_json()


def observed_steps(run_dir: Path) -> tuple[int, int]:
    meta = json.loads(next(run_dir.glob("rank*/writer.json")).read_text())
    meta = meta.get("meta", meta)
    return meta["observed_steps"], meta["steps"]


def test_short_steps_are_thinned_and_the_budget_still_matches_the_loop(tmp_path: Path) -> None:
    truth, summary = loop(tmp_path / "run")
    rank = summary["ranks"][0]
    seen, steps = observed_steps(tmp_path / "run")
    assert steps == STEPS
    assert seen < STEPS // 2, f"a loop of {rank['step_ms']} ms steps was observed in {seen} of {steps} steps"
    assert any(f"observed {seen} of {steps} steps" in note for note in summary["notes"]), summary["notes"]
    pct = rank["budget_pct"]
    assert sum(pct.values()) == pytest.approx(100, abs=0.2)
    # every checkpoint write was timed, observed step or not
    assert pct["checkpoint_io"] == pytest.approx(truth["checkpoint_io"], abs=2.0), (pct, truth)
    # compute comes from the observed steps' split of the rest
    assert pct["compute"] == pytest.approx(truth["compute"], abs=6.0), (pct, truth)


def test_observe_every_step_observes_every_step(tmp_path: Path) -> None:
    truth, summary = loop(tmp_path / "run", observe_every_step=True)
    seen, steps = observed_steps(tmp_path / "run")
    assert seen == steps == STEPS
    assert not any("observed" in note and "steps (" in note for note in summary["notes"])
    assert summary["ranks"][0]["budget_pct"]["checkpoint_io"] == pytest.approx(
        truth["checkpoint_io"], abs=2.0
    )
