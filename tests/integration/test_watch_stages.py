"""`gw.step(stage=..., tags=...)` in a real watched loop: the step spans carry them, the stage persists until
changed, and `gpuwatch summary --json` splits the budget by them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import run_cli

import gpuwatch
from gpuwatch.store.run_reader import RunReader


def test_stage_persists_tags_are_per_step_and_the_summary_splits_by_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with gpuwatch.watch(run, sample_hz=0, system_samplers=False) as gw:
        for i in range(8):
            with gpuwatch.span("load", category="data_loading"):
                time.sleep(0.004 if i < 4 else 0.012)  # the second stage loads three times as long
            gw.step(stage="images" if i == 0 else "video_256" if i == 4 else None, tags={"source": i % 2})
    reader = RunReader(run)
    try:
        cols = reader.span_columns(with_attrs=True)
    finally:
        reader.close()
    steps = [json.loads(a) for k, a in zip(cols.kind, cols.attrs) if k == "step"]
    assert [s["stage"] for s in steps] == ["images"] * 4 + ["video_256"] * 4
    assert [s["tags"] for s in steps] == [{"source": str(i % 2)} for i in range(8)]

    proc = run_cli("summary", run, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    stages = {g["stage"]: g["ranks"][0] for g in doc["stages"]}
    assert list(stages) == ["images", "video_256"]
    data = {k: v["budget_ms_per_step"]["data_loading"] for k, v in stages.items()}
    assert data["video_256"] > 2 * data["images"] > 0
    assert [g["value"] for g in doc["tags"]["source"]] == ["0", "1"]
    total = sum(g["ranks"][0]["steps"] for g in doc["tags"]["source"])
    assert total == doc["ranks"][0]["steps"]
