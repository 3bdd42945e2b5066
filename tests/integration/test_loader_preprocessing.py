"""Decode inside the loader: an ImageFolder-style trainer with `num_workers=0`, under `gpuwatch.watch` and
under `gpuwatch attach`, against the read, decode and transform times the program measured itself.

The Dataset runs on the training thread inside `DataLoader.__next__`: reading the file (and the storage's
latency) is data_loading; PIL decode, the torchvision-like transforms and collate are cpu_preprocessing
(DESIGN.md's definitions; README "The time budget"). watch must match within 3 points, attach within 5.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from attach_support import run_window, steps_truth, truth_pct
from conftest import ROOT, cli_env, run_cli

PROGRAM = ROOT / "tests" / "support" / "planted_imagefolder.py"
WATCH_TOLERANCE_PP = 3.0
ATTACH_TOLERANCE_PP = 5.0


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from planted_imagefolder import make_data

    root = tmp_path_factory.mktemp("imagefolder") / "data"
    make_data(root)
    return root


def measured(doc: dict[str, float]) -> dict[str, float]:
    """The program's phases (percent) in budget categories."""
    return {
        "data_loading": doc.get("read", 0.0),
        "cpu_preprocessing": doc.get("decode", 0.0) + doc.get("transform", 0.0) + doc.get("collate", 0.0),
        "compute": doc.get("compute", 0.0),
    }


def check(name: str, got: dict[str, float], want: dict[str, float], tolerance: float) -> None:
    table = "\n".join(f"  {c:18s} measured {w:5.1f}%  {name} {got[c]:5.1f}%" for c, w in want.items())
    print(f"{name}:\n{table}")  # the figures behind the assertions (pytest -s)
    for category, value in want.items():
        assert abs(got[category] - value) <= tolerance, f"{category}\n{table}"


@pytest.mark.slow
def test_watch_splits_read_from_decode_and_transforms(tmp_path: Path, images: Path) -> None:
    truth, run = tmp_path / "truth.jsonl", tmp_path / "run"
    cmd = [sys.executable, str(PROGRAM), "--data", str(images), "--truth", str(truth), "--run-dir", str(run)]
    proc = subprocess.run(
        [*cmd, "--steps", "40"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = run_cli("summary", run, "--json")
    assert summary.returncode == 0, summary.stderr
    doc = json.loads(summary.stdout)
    (rank,) = doc["ranks"]
    want = measured(steps_truth(truth, set(rank["per_step"]["step"])))
    assert want["data_loading"] > 5 and want["cpu_preprocessing"] > 25, want  # the plant took
    check("watch", rank["budget_pct"], want, WATCH_TOLERANCE_PP)
    names = {e["category"]: e["name"] for e in reversed(rank["evidence"])}  # the top name per category
    assert names["data_loading"] == "DataLoader.__next__ (num_workers=0)"
    assert "PIL" in names["cpu_preprocessing"], rank["evidence"]
    assert any(r["category"] == "cpu_preprocessing" for r in doc["recommendations"])


def start_program(*args: str | Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAM), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline() if ready else b""
    if not line.strip():
        proc.kill()
        raise RuntimeError(f"program did not start: {proc.communicate()[1].decode(errors='replace')[-2000:]}")
    return proc, int(line)


@pytest.mark.slow
def test_attach_splits_read_from_decode_and_transforms(tmp_path: Path, images: Path) -> None:
    truth, run = tmp_path / "truth.jsonl", tmp_path / "run"
    proc, pid = start_program("--data", images, "--truth", truth)
    try:
        # 15 s of samples: over 10 s the shares' sampling error was about 2 points (errors of -2.3 to +2.5 in
        # 4 runs), and once in CI the data share came 5.06 points over (5 allowed)
        attach = run_cli("attach", pid, "--duration", "15", "--out", run, "--json", "--quiet", timeout=180)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert attach.returncode == 0, attach.stderr
    doc: dict[str, Any] = json.loads(attach.stdout)
    det = doc["attach"]["step_detection"]
    w0, w1 = run_window(run)[:2] if det["used"] else doc["attach"]["sampled_unix_ns"]
    assert w1 - w0 > 6e9, "fewer than 6 s of steps"
    want = measured(truth_pct(truth, (w0, w1)))
    check("attach", doc["summary"]["ranks"][0]["budget_pct"], want, ATTACH_TOLERANCE_PP)
