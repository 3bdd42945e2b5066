"""Stages and tags (`gw.step(stage=..., tags=...)`): the budget split by them, and the tag value that makes
the slowest rank slow, on a synthetic run with planted per-source costs (tests/support/labeled_run.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from labeled_run import LabeledPlan, write_labeled_run

from gpuwatch.attribution.summary import CATEGORY_NAMES, Summary, load_summary

STEPS = 24
HEAVY_STEPS_RANK2 = {2, 3, 5, 8, 11, 13, 17, 19, 22}
HEAVY_STEPS_OTHERS = {7: 0, 16: 1}


def plan() -> LabeledPlan:
    draws = []
    for i in range(STEPS):
        row = ["image", "image", "video_hr" if i in HEAVY_STEPS_RANK2 else "image"]
        if i in HEAVY_STEPS_OTHERS:
            row[HEAVY_STEPS_OTHERS[i]] = "video_hr"
        draws.append(row)
    stages: list[str | None] = [None] * STEPS
    stages[0], stages[12] = "images", "video_256"
    return LabeledPlan(draws=draws, stages=stages, stage_extra_ms={"video_256": 10.0})


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> Summary:
    run = write_labeled_run(tmp_path_factory.mktemp("labeled") / "run", plan())
    return load_summary(run, use_cache=False)


def test_stages_are_named_in_order_with_their_steps(summary: Summary) -> None:
    assert [s.stage for s in summary.stages] == ["images", "video_256"]
    for stage in summary.stages:
        assert [r.rank for r in stage.ranks] == [0, 1, 2]
        assert all(r.steps == STEPS // 2 for r in stage.ranks)


def test_stage_budgets_add_up_to_the_whole_run_weighted_by_steps(summary: Summary) -> None:
    for rank in summary.ranks:
        parts = [r for s in summary.stages for r in s.ranks if r.rank == rank.rank]
        assert sum(p.steps for p in parts) == rank.steps
        for c in CATEGORY_NAMES:
            whole = rank.budget_ms_per_step.get(c) * rank.steps
            assert sum(p.budget_ms_per_step.get(c) * p.steps for p in parts) == pytest.approx(whole, abs=1e-6)
            wall = [p.step_time_ms.mean * p.steps for p in parts]
            pct = sum(p.budget_pct.get(c) * w for p, w in zip(parts, wall)) / sum(wall)
            assert pct == pytest.approx(rank.budget_pct.get(c), abs=1e-6)


def test_data_loading_grows_where_the_stage_planted_it(summary: Summary) -> None:
    p = plan()
    images, video = summary.stages
    for a, b in zip(images.ranks, video.ranks):
        want = {
            name: sum(p.data_ms(i, a.rank) for i in steps) / len(steps)
            for name, steps in (("images", range(12)), ("video_256", range(12, 24)))
        }
        assert a.budget_ms_per_step.data_loading == pytest.approx(want["images"], abs=0.01)
        assert b.budget_ms_per_step.data_loading == pytest.approx(want["video_256"], abs=0.01)


def test_tags_split_the_budget_by_value(summary: Summary) -> None:
    assert list(summary.tags) == ["source"]
    values = {g.value: g for g in summary.tags["source"]}
    assert set(values) == {"image", "video_hr"}
    rank2 = {v: next(r for r in g.ranks if r.rank == 2) for v, g in values.items()}
    assert rank2["video_hr"].steps == len(HEAVY_STEPS_RANK2)
    assert rank2["video_hr"].budget_ms_per_step.data_loading > rank2["image"].budget_ms_per_step.data_loading
    # a rank that drew the heavy source waits less than in its other steps
    assert rank2["video_hr"].sync_split_pct.wait < rank2["image"].sync_split_pct.wait


def test_straggler_names_the_tag_value_that_makes_it_slow(summary: Summary) -> None:
    p = plan()
    st = summary.straggler
    assert st is not None and st.rank == 2
    cause = st.tag_cause
    assert cause is not None
    assert (cause.key, cause.value, cause.steps_with) == ("source", "video_hr", len(HEAVY_STEPS_RANK2))
    heavy = sorted(HEAVY_STEPS_RANK2)
    # others' wait for rank 2 in its heavy steps, ground truth from the plan (ranks 0 and 1 each wait)
    want = sum(
        sum(p.arrive_ms(i, 2) - p.arrive_ms(i, r) for r in (0, 1) if p.arrive_ms(i, 2) > p.arrive_ms(i, r))
        for i in heavy
    ) / len(heavy)
    assert cause.caused_ms_with == pytest.approx(want, abs=0.01)
    assert cause.caused_ms_without == pytest.approx(0.0, abs=0.01)
    assert cause.waited_ms_with < cause.waited_ms_without
    assert "rank 2 waits least and is waited for most in steps where it drew source=video_hr" in cause.text
    sync = [r for r in summary.recommendations if r.category == "sync"]
    assert sync and all(cause.text in r.evidence for r in sync)


def test_json_round_trip_and_cli(summary: Summary, tmp_path: Path) -> None:
    doc = summary.to_json()
    assert Summary.from_json(doc).to_json() == doc
    assert doc["stages"][0]["stage"] == "images"
    assert set(doc["stages"][0]["ranks"][0]) >= {"rank", "steps", "step_time_ms", "budget_pct"}
    assert set(doc["tags"]["source"][0]["ranks"][0]) >= {"rank", "steps", "step_time_ms", "budget_pct"}
    run = write_labeled_run(tmp_path / "run", plan())
    proc = run_cli("summary", run, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["straggler"]["tag_cause"]["value"] == "video_hr"
    text = run_cli("summary", run)
    assert "Time budget per stage" in text.stdout and "source=video_hr" in text.stdout.replace("\n", " ")


def test_runs_without_labels_have_no_stages_or_tags(tmp_path: Path) -> None:
    p = plan()
    bare = LabeledPlan(draws=[["image"] * 3] * 6, stages=[None] * 6, source_ms=p.source_ms)
    s = load_summary(write_labeled_run(tmp_path / "bare", bare), use_cache=False)
    assert s.stages == () and list(s.tags) == ["source"]
    assert s.straggler is None or s.straggler.tag_cause is None


def test_the_html_report_shows_per_stage_budgets_and_the_tag_cause(summary: Summary) -> None:
    from reports.html.page import stage_table, tag_cause_text

    html = stage_table(summary)
    assert html.count("<tr>") == 1 + 2 * 3  # header, then 2 stages x 3 ranks
    assert ">images<" in html and ">video_256<" in html
    assert "source=video_hr" in tag_cause_text(summary)
