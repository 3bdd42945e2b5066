"""The reference trainer's stages and data sources under gpuwatch (issue 16): the progressive schedule's
stages in `gpuwatch summary --json`, and `--source-mix independent` vs `balanced` through the ablation.

- Progressive: every stage is named; per-stage budgets add up to the whole run weighted by steps, and data
  loading grows with resolution (each video stage reads twice the frames of the one before).
- Source mix: with `independent` the summary names source=clips as what makes the straggler slow, and
  `balanced` (the same batches, the same source on every rank each step) recovers most of the waiting;
  measured by `python -m reference_trainer.ablation --source-mix --check`, as a user runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import summary_json
from reference_trainer_support import ROOT, run_trainer, shared_data_root, trainer_env

pytestmark = pytest.mark.slow

SMALL = ["--width", "96", "--depth", "2", "--heads", "4", "--checkpoint", "off"]
CATEGORIES = (
    "compute", "data_loading", "cpu_preprocessing", "sync", "checkpoint_io", "memcpy", "host_overhead",
    "unattributed",
)  # fmt: skip


def test_progressive_stages_add_up_and_data_loading_grows_with_resolution(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_trainer(
        ["--progressive", "--steps", "8", "--batch-size", "8", "--reduced-decode", *SMALL,
         "--run-dir", str(run), "--data-dir", str(shared_data_root())]
    )  # fmt: skip
    doc = summary_json(run)
    whole = doc["ranks"][0]
    stages = {g["stage"]: g["ranks"][0] for g in doc["stages"]}
    assert list(stages)[-3:] == ["video_16", "video_32", "video_64"]  # images_32 may all be warm-up
    assert set(stages) <= {"images_32", "video_16", "video_32", "video_64"}
    assert sum(s["steps"] for s in stages.values()) == whole["steps"]
    for c in CATEGORIES:
        parts = sum(s["budget_ms_per_step"][c] * s["steps"] for s in stages.values())
        assert parts == pytest.approx(whole["budget_ms_per_step"][c] * whole["steps"], rel=1e-6, abs=1e-6)
    data = [stages[s]["budget_ms_per_step"]["data_loading"] for s in ("video_16", "video_32", "video_64")]
    assert data[0] < data[1] < data[2], data
    stills = ["stills"] if "images_32" in stages else []
    assert [g["value"] for g in doc["tags"]["source"]] == ["clips", *stills]


def test_source_mix_ablation_names_the_source_and_balanced_recovers_waiting(tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    md = tmp_path / "ablation.md"
    md.write_text("# Reference trainer ablation\n\nkept\n")
    proc = subprocess.run(
        [sys.executable, "-m", "reference_trainer.ablation", "--source-mix", "--preset", "naive", "--steps",
         "10", "--out", str(out), "--check", "--json", "--markdown", str(md), "--", "--grad-sync", "ddp",
         "--reduced-decode", "--read-latency-ms", "2", *SMALL, "--data-dir", str(shared_data_root())],
        cwd=ROOT, env=trainer_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    results = {r["configuration"]: r for r in json.loads(proc.stdout)}
    ind, bal = results["source mix independent"], results["source mix balanced"]
    assert proc.returncode == 0, proc.stderr[-3000:]  # --check: source=clips named, a third recovered
    assert "drew source=clips" in ind["tag_cause"]
    assert sum(bal["sync_wait_ms_per_step"].values()) < sum(ind["sync_wait_ms_per_step"].values())
    doc = summary_json(Path(ind["run_dir"]))
    assert doc["straggler"]["tag_cause"]["value"] == "clips"
    assert any("source=clips" in r["evidence"] for r in doc["recommendations"] if r["category"] == "sync")
    text = md.read_text()
    assert text.startswith("# Reference trainer ablation\n\nkept\n") and "balanced recovers" in text
