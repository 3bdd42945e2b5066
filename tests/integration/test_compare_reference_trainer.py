"""`gpuwatch compare` on the reference trainer, real 2-rank gloo runs on CPU: repeated short runs of
`--preset fixed` never alarm at the default limits; naive -> fixed passes and shows the compute share
recovered; fixed -> naive fails naming every cause the naive preset plants; and the plain-shell CI gate in
examples/ci runs end to end against a kept baseline.

All runs use one configuration apart from the preset: 2 ranks, 10 steps, a checkpoint every 2 steps (so a
short run holds enough checkpoints to tell the synchronous torch.save from DCP's async_save).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from compare_support import gfm_tables, validate_junit
from reference_trainer_support import ROOT, run_trainer, shared_data_root, trainer_env

from gpuwatch.attribution.summary import Summary, load_summary
from reports.compare import Outcome, Verdict, compare, render_markdown

pytestmark = pytest.mark.slow

FIXED_RUNS = 6  # every ordered pair of them (30) is checked; 9 runs (72 pairs) cost 80 s more of CI
ARGS = ["--nproc", "2", "--steps", "10", "--checkpoint-every", "2"]
NAIVE_CAUSES = {"data_loading", "cpu_preprocessing", "sync", "checkpoint_io"}


def train(out: Path, preset: str) -> Summary:
    run_trainer(["--preset", preset, *ARGS, "--run-dir", str(out), "--data-dir", str(shared_data_root())])
    return load_summary(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Summary]]:
    root = tmp_path_factory.mktemp("rt-compare")
    fixed = [train(root / f"fixed{i}", "fixed") for i in range(FIXED_RUNS)]
    return {"fixed": fixed, "naive": [train(root / "naive", "naive")]}


def regressed(cmp) -> set[str]:
    return {c.metric for c in cmp.job_checks() if c.outcome is Outcome.REGRESSED}


def test_repeated_fixed_runs_never_alarm(runs: dict[str, list[Summary]]) -> None:
    fixed = runs["fixed"]
    alarms = [
        (a, b, sorted(regressed(cmp)))
        for a, b in itertools.permutations(range(len(fixed)), 2)
        if (cmp := compare(fixed[a], fixed[b])).verdict is not Verdict.PASS
    ]
    assert not alarms, alarms


def test_naive_to_fixed_passes_and_shows_the_recovered_compute_share(runs: dict[str, list[Summary]]) -> None:
    cmp = compare(runs["naive"][0], runs["fixed"][0])
    assert cmp.verdict is Verdict.PASS and cmp.exit_code == 0
    compute = cmp.job_check("compute_share")
    assert compute is not None and compute.outcome is Outcome.IMPROVED
    assert compute.cand - compute.base > 40  # percentage points of step time given back to compute
    md = render_markdown(cmp)
    improved = md.split("**Improved:** ")[1].split("\n")[0]
    assert "compute share" in improved and f"{compute.cand:.1f}%" in improved
    # data loading and sync shrink by less than 5% of the naive run's long step: shown, not "improved"
    assert "cpu_preprocessing" in {c.metric for c in cmp.job_checks() if c.outcome is Outcome.IMPROVED}


def test_fixed_to_naive_fails_naming_every_regressed_category(runs: dict[str, list[Summary]]) -> None:
    cmp = compare(runs["fixed"][0], runs["naive"][0])
    assert cmp.verdict is Verdict.REGRESSION and cmp.exit_code == 1
    assert NAIVE_CAUSES <= regressed(cmp), {
        c.metric: (round(c.change, 1), c.outcome.value) for c in cmp.job_checks()
    }
    # CPU-only runs: compute's share is shown, and marked worse beyond the spread, but gated only when asked
    assert cmp.job_check("compute_share").outcome is Outcome.NOT_GATED
    grown = {(e.category, e.name) for e in cmp.evidence}
    assert ("checkpoint_io", "torch.save") in grown
    assert any(c == "data_loading" and "num_workers=0" in n for c, n in grown), grown
    md = render_markdown(cmp)
    table = gfm_tables(md)[0]
    for cause in NAIVE_CAUSES:
        assert next(r for r in table if r[0] == cause)[-1] == "**regressed**"


def test_shell_gate_runs_end_to_end(runs: dict[str, list[Summary]], tmp_path: Path) -> None:
    """examples/ci/gpuwatch-gate.sh against a kept baseline (a fixed run's summary --json): a candidate that
    loads its data on the training thread (--num-workers 0) fails the gate naming data_loading."""
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(runs["fixed"][0].to_json()))
    env = trainer_env()
    env.update(
        PYTHON=sys.executable,
        GATE_TRAIN_ARGS=f"--num-workers 0 --data-dir {shared_data_root()}",
        GITHUB_STEP_SUMMARY="",
    )
    out = tmp_path / "gate"
    proc = subprocess.run(
        ["bash", str(ROOT / "examples" / "ci" / "gpuwatch-gate.sh"), str(baseline), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.stdout.startswith("## gpuwatch compare: REGRESSION")
    assert "data_loading" in json.loads((out / "compare.json").read_text())["regressed"]
    validate_junit((out / "compare.xml").read_text())
    assert gfm_tables((out / "compare.md").read_text())
    assert os.access(ROOT / "examples" / "ci" / "gpuwatch-gate.sh", os.X_OK)
