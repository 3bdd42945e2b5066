"""`gpuwatch compare` on a real CPU training program (tests/support/compare_planted.py), run again and again
as separate processes: repeated runs of one configuration never alarm at the default limits, and a planted
regression of 10% of the step time in one category (a slower input pipeline; a synchronous checkpoint put
back on the training thread) is caught every time, naming that category and the region that grew.

The plant is sized from the baseline runs themselves (10% of their mean step time), and the program times
itself, so the test first checks that the plant took (perf_counter) before asking compare about it.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli_env

from gpuwatch.attribution.summary import Summary, load_summary
from reports.compare import Outcome, Verdict, compare

pytestmark = pytest.mark.slow

PROGRAM = ROOT / "tests" / "support" / "compare_planted.py"
STEPS = 24
BASE_RUNS = 9  # 8 pairs of consecutive runs; every ordered pair of them (72) is checked
REGRESSED_RUNS = 3


def run_program(out: Path, *args: str) -> tuple[Summary, list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    truth = out / "truth.json"
    cmd = [
        sys.executable,
        str(PROGRAM),
        "--run-dir",
        str(out / "run"),
        "--steps",
        str(STEPS),
        "--truth",
        str(truth),
    ]
    proc = subprocess.run([*cmd, *args], cwd=out, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_summary(out / "run"), json.loads(truth.read_text())["steps"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Summary, list[dict]]]:
    root = tmp_path_factory.mktemp("planted-base")
    return [run_program(root / f"b{i}") for i in range(BASE_RUNS)]


@pytest.fixture(scope="module")
def base(runs: list[tuple[Summary, list[dict]]]) -> list[Summary]:
    return [s for s, _ in runs]


def test_repeated_runs_never_alarm(base: list[Summary]) -> None:
    alarms = []
    for a, b in itertools.permutations(range(BASE_RUNS), 2):
        cmp = compare(base[a], base[b])
        if cmp.verdict is not Verdict.PASS:
            alarms.append(
                (
                    a,
                    b,
                    [
                        (c.metric, round(c.change, 1))
                        for c in cmp.job_checks()
                        if c.outcome is Outcome.REGRESSED
                    ],
                )
            )
    assert not alarms, alarms


@pytest.mark.parametrize(
    "category, flag, truth_key, region",
    [
        ("data_loading", "--slow-input-ms", "input_ms", "DataLoader.__next__ (num_workers=0)"),
        ("checkpoint_io", "--sync-checkpoint-ms", "checkpoint_ms", "torch.save"),
    ],
)
def test_ten_percent_regression_is_caught_every_time(
    runs: list[tuple[Summary, list[dict]]],
    tmp_path: Path,
    category: str,
    flag: str,
    truth_key: str,
    region: str,
) -> None:
    extra = ["--checkpoint-every", "1"] if category == "checkpoint_io" else []
    for i in range(REGRESSED_RUNS):
        base, base_truth = runs[i]
        plant_ms = 0.10 * float(np.mean([s["wall_ms"] for s in base_truth[1:]]))  # 10% of this base's step
        cand, truth = run_program(tmp_path / f"r{i}", flag, f"{plant_ms:.2f}", *extra)
        grew = np.median([s[truth_key] for s in truth[1:]]) - np.median(
            [s[truth_key] for s in base_truth[1:]]
        )
        assert grew >= 0.8 * plant_ms, (grew, plant_ms)  # the plant took (perf_counter, the program's own)
        cmp = compare(base, cand)
        named = [c.metric for c in cmp.job_checks() if c.outcome is Outcome.REGRESSED]
        assert cmp.verdict is Verdict.REGRESSION and category in named, (i, named, cmp.job_check(category))
        # besides the plant, only what it moves: step time, compute's share, and for the checkpoint the host
        # work around torch.save (building the state dict, opening the file)
        assert set(named) <= {category, "compute_share", "step_time", "host_overhead"}, named
        assert any(e.category == category and e.name == region for e in cmp.evidence), cmp.evidence
