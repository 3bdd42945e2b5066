"""The HTML report's data: the numbers and figure JSON it draws (not HTML bytes), checked against the Summary
they come from and against a golden file for a planted trace; the timeline's bounds and escaping; the CLI's
errors. The page opened in a real browser is tests/integration/test_report_browser.py."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from synthetic_kineto import planted_rank
from synthetic_run import write_synthetic_run

from gpuwatch.attribution.summary import CATEGORY_NAMES, Summary, load_summary
from reports.html import figures as F
from reports.html.page import figure_json
from reports.html.report_data import (
    DEFAULT_GPU_HOUR_PRICE_USD,
    TIMELINE_MAX_BARS,
    _buckets,
    load_report,
)

GOLDEN = Path(__file__).parent / "golden" / "report_planted_trace.json"
HOSTILE = '<script>window.pwned=1</script> "q" & </script><img src=x onerror="window.pwned=2">'


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 ranks on /proc and NVML samples, rank 1 slow at data loading, rank 0 checkpointing every 50 steps."""
    return write_synthetic_run(tmp_path_factory.mktemp("syn") / "run", steps=120, ranks=4, gpu=True)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("planted")
    trace = planted_rank(4).write(tmp / "rank0.json.gz")
    run = tmp / "run"
    assert run_cli("import", trace, "--out", run).returncode == 0
    return run


def test_headline_is_the_step_weighted_budget(synthetic: Path) -> None:
    s = load_summary(synthetic)
    h = F.headline(s, 3.0)
    wall = sum(r.step_time_ms.mean * r.steps for r in s.ranks)
    compute = sum(r.budget_ms_per_step.compute * r.steps for r in s.ranks)
    assert h.compute_pct == pytest.approx(100 * compute / wall, abs=1e-6)
    assert h.idle_pct == pytest.approx(100 - h.compute_pct)
    assert h.gpu_hours_lost_per_1000 == pytest.approx(10 * h.idle_pct)
    assert h.usd_lost_per_1000 == pytest.approx(3.0 * h.gpu_hours_lost_per_1000)
    walls = [w for r in s.ranks for w in r.per_step.wall_ms]  # type: ignore[union-attr]
    assert h.median_step_ms == pytest.approx(float(np.median(walls)))
    assert h.top_category == max(
        (c for c in CATEGORY_NAMES if c != "compute"), key=lambda c: F.job_budget_ms(s)[c]
    )
    assert not h.device_mode  # a CPU run: the page says "process-hours"


def test_whatif_is_the_summary_savings(synthetic: Path) -> None:
    s = load_summary(synthetic)
    job = F.job_budget_ms(s)
    step = sum(job.values())
    jobwide = [v for v in s.savings if v.rank is None]
    assert [v.category for v in jobwide] == sorted(
        (c for c in CATEGORY_NAMES if c != "compute" and job[c] > 0), key=lambda c: -job[c]
    )
    for v in jobwide:  # independent arithmetic on the job's mean step
        assert v.step_time_ms_after == pytest.approx(step - job[v.category], rel=1e-9)
        assert v.speedup == pytest.approx(step / (step - job[v.category]), rel=1e-9)
        assert v.gpu_hours_saved_per_1000 == pytest.approx(1000 * job[v.category] / step, rel=1e-9)
    # rank 1 loads data for 30 ms where the others take 10: it gets a what-if of its own
    assert any(v.rank == 1 and v.category == "data_loading" for v in s.savings)
    fig = F.whatif_figure(s)
    assert fig is not None
    bars = fig["data"][0]
    assert bars["base"] == 1.0
    assert [round(1 + x, 3) for x in bars["x"]] == [round(v.speedup, 3) for v in reversed(s.savings)]


def test_step_bars_add_up_to_each_steps_wall_time(synthetic: Path) -> None:
    s = load_summary(synthetic)
    for r in s.ranks:
        fig, group = F.step_budget_figure(r)
        assert fig is not None and group == 1
        stacked = np.sum([trace["y"] for trace in fig["data"]], axis=0)
        assert stacked == pytest.approx(r.per_step.wall_ms, abs=0.01)  # type: ignore[union-attr]
        assert fig["data"][0]["x"] == list(r.per_step.step)  # type: ignore[union-attr]


def test_long_runs_average_groups_of_steps() -> None:
    n = 1000
    doc = {
        "run_id": "x",
        "ranks": [
            {
                "rank": 0,
                "steps": n,
                "step_time_ms": {"median": 10.0},
                "budget_pct": {"compute": 50.0, "sync": 50.0},
                "per_step": {
                    "step": list(range(n)),
                    "wall_ms": [10.0 + (i % 2) for i in range(n)],
                    "category_ms": {"compute": [5.0] * n, "sync": [5.0 + (i % 2) for i in range(n)]},
                },
            }
        ],
    }
    fig, group = F.step_budget_figure(Summary.from_json(doc).ranks[0])
    assert fig is not None and group == 4 and len(fig["data"][0]["x"]) == 250
    assert fig["data"][1]["y"] == [5.5] * 250  # the mean of each group of 4 steps
    assert "mean of 4 consecutive steps" in fig["layout"]["xaxis"]["title"]["text"]


def test_rank_comparison_marks_the_rank_others_wait_for(synthetic: Path) -> None:
    s = load_summary(synthetic)
    assert s.straggler is not None and s.straggler.rank == 1
    fig = F.rank_budget_figure(s)
    sums = np.sum([trace["x"] for trace in fig["data"]], axis=0)
    assert sums == pytest.approx([100.0] * len(s.ranks), abs=0.01)
    assert "wait" in fig["data"][0]["y"][1] and "wait" not in fig["data"][0]["y"][0]
    (box,) = fig["layout"]["shapes"]
    assert box["y0"] < 1 < box["y1"]
    split = F.sync_split_figure(s)
    assert split is not None
    wait = split["data"][1]["x"]
    assert wait[1] < min(wait[0], wait[2], wait[3])  # the late rank waits least


def test_compatibility_figures_are_the_summary_numbers(planted_run: Path) -> None:
    s = load_summary(planted_run)
    r = s.ranks[0]
    ov = F.overview_figure(s)
    assert ov is not None
    got = {trace["name"]: trace["x"][0] for trace in ov["data"]}
    assert sum(got.values()) == pytest.approx(100.0, abs=0.01)
    for role, label in F.ROLE_LABELS.items():
        assert got.get(label, 0.0) == pytest.approx(getattr(r.overview_pct, role), abs=1e-3)
    t = F.temporal_figure(s)
    assert t is not None
    assert {trace["name"]: trace["x"][0] for trace in t["data"]} == pytest.approx(
        {
            "compute": r.temporal_pct.compute,
            "non-compute": r.temporal_pct.non_compute,
            "idle": r.temporal_pct.idle,
        },
        abs=1e-3,
    )


def test_golden_figures_of_a_planted_trace(planted_run: Path) -> None:
    """The figure data of a planted trace, against a golden file (GPUWATCH_UPDATE_GOLDEN=1 rewrites it)."""
    s = load_summary(planted_run)
    h = F.headline(s, DEFAULT_GPU_HOUR_PRICE_USD)
    truth = planted_rank(4).truth_pct()  # what was planted, before any tool ran
    assert h.compute_pct == pytest.approx(truth["compute"], abs=0.01)
    assert h.top_category == max((c for c in truth if c != "compute"), key=truth.__getitem__)
    for v in s.savings:
        assert v.gpu_hours_saved_per_1000 == pytest.approx(10 * truth[v.category], abs=0.1)
    got = {
        "headline": {k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(h).items()},
        "whatif": F.whatif_figure(s),
        "rank_budget": F.rank_budget_figure(s),
        "steps": F.step_budget_figure(s.ranks[0])[0],
        "overview": F.overview_figure(s),
        "temporal": F.temporal_figure(s),
    }
    got = json.loads(json.dumps(got))
    if os.environ.get("GPUWATCH_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert got == want


def test_timeline_reads_a_few_steps_and_draws_the_budget(synthetic: Path) -> None:
    report = load_report(synthetic)
    tl = report.timeline
    assert tl is not None and len(tl.steps) == 3 and tl.ranks == (0, 1, 2, 3)
    s = report.summary
    for rank in tl.ranks:
        budget_lane = next(lane for lane in tl.lanes if lane.rank == rank and lane.label.endswith("budget"))
        drawn = float((budget_lane.end_ms - budget_lane.start_ms).sum())
        ps = s.rank(rank).per_step
        assert ps is not None
        walls = sum(w for st, w in zip(ps.step, ps.wall_ms) if st in tl.steps)
        assert drawn == pytest.approx(walls, rel=1e-6)  # the window's budget is the whole run's, those steps
        for c in set(budget_lane.category.tolist()):
            in_lane = float((budget_lane.end_ms - budget_lane.start_ms)[budget_lane.category == c].sum())
            want = sum(v for st, v in zip(ps.step, ps.category(c)) if st in tl.steps)
            assert in_lane == pytest.approx(want, abs=0.01)
    fig = F.timeline_figure(tl)
    assert sum(len(trace["y"]) for trace in fig["data"]) == tl.bars_shown <= TIMELINE_MAX_BARS
    assert not tl.merged


def test_large_windows_are_merged_and_capped(tmp_path: Path) -> None:
    """A trace whose representative steps hold far more spans than the figure can draw."""
    from synthetic_kineto import Plan

    trace = planted_rank(3, Plan(kernels=1500)).write(tmp_path / "rank0.json.gz")
    assert run_cli("import", trace, "--out", tmp_path / "run").returncode == 0
    tl = load_report(tmp_path / "run").timeline
    assert tl is not None
    assert tl.spans_in_window > TIMELINE_MAX_BARS and tl.merged and tl.bars_shown <= TIMELINE_MAX_BARS
    names = [n for lane in tl.lanes for n in lane.name.tolist()]
    assert any(n.startswith(tuple(f"{k} spans" for k in range(2, 10_000))) for n in names)
    # the budget row, binned to pixels, still says what the steps mostly were
    ps = load_summary(tmp_path / "run").ranks[0].per_step
    assert ps is not None
    lane = next(lane for lane in tl.lanes if lane.label.endswith("budget"))
    widths = lane.end_ms - lane.start_ms
    for c in ("compute", "data_loading"):
        drawn = float(widths[lane.category == c].sum() / widths.sum())
        want = sum(v for st, v in zip(ps.step, ps.category(c)) if st in tl.steps) / sum(
            w for st, w in zip(ps.step, ps.wall_ms) if st in tl.steps
        )
        assert drawn == pytest.approx(want, abs=0.02), c


def test_names_are_escaped_in_figure_json(tmp_path: Path) -> None:
    tr = planted_rank(2)
    for e in tr.events:
        if e.get("cat") == "kernel" and not e["name"].startswith("nccl"):
            e["name"] = HOSTILE
    trace = tr.write(tmp_path / "rank0.json.gz")
    assert run_cli("import", trace, "--out", tmp_path / "run").returncode == 0
    report = load_report(tmp_path / "run")
    assert report.timeline is not None
    fig = F.timeline_figure(report.timeline)
    hover = [h for trace in fig["data"] for h in trace["hovertext"]]
    assert any("&lt;script&gt;window.pwned=1&lt;/script&gt;" in h for h in hover)
    assert not any("<script" in h or "<img" in h for h in hover)
    text = figure_json(fig)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == json.loads(json.dumps(fig))  # the escapes are still the same JSON


def test_series_buckets_keep_the_mean_and_the_gaps() -> None:
    t = np.arange(10_000, dtype=np.float64)
    v = np.where(t < 5000, 1.0, 3.0)
    v[7000:7100] = np.nan
    bt, bv = _buckets(t, v, 100)
    assert bt.size == 100 and bt[0] == pytest.approx(49.5)  # each point: the mean time of 100 samples
    assert (bv[:50] == 1.0).all() and (bv[50:70] == 3.0).all() and (bv[71:] == 3.0).all()
    assert np.isnan(bv[70])  # a bucket that measured nothing stays a gap, never 0
    v[:] = np.nan
    assert np.isnan(_buckets(t, v, 100)[1]).all()


def test_time_series_come_from_the_store(synthetic: Path) -> None:
    report = load_report(synthetic)
    by_metric = {p.metric: p for p in report.panels}
    assert {"gpu_util_pct", "mem_used_bytes", "power_mw", "proc_cpu_pct", "rss_bytes"} <= set(by_metric)
    util = by_metric["gpu_util_pct"]
    assert [s.label for s in util.series] == [f"rank {r} · GPU {r}" for r in range(4)]
    assert all(
        v == 60.0 + 5 * r for r, s in enumerate(util.series) for v in s.value
    )  # synthetic_run's values
    assert by_metric["power_mw"].unit == "W" and by_metric["power_mw"].series[0].value[0] == pytest.approx(
        350.0
    )
    rate = by_metric["io_read_bytes_total"]  # a cumulative counter, drawn as a rate
    assert rate.unit == "MB/s" and all(v is not None and v > 0 for v in rate.series[0].value)


# ---- command line ----------------------------------------------------------------------------------


def test_default_price_is_stated_once() -> None:
    from gpuwatch.cli.report_cmd import DEFAULT_PRICE_USD

    assert DEFAULT_PRICE_USD == DEFAULT_GPU_HOUR_PRICE_USD


def test_help_explains_every_option() -> None:
    out = run_cli("report", "--help").stdout
    for option in (
        "RUN",
        "CAND",
        "--out",
        "--gpu-hour-price",
        "default: report.html",
        "diff.html",
        "exit codes",
    ):
        assert option in out


@pytest.mark.parametrize(
    "argv,code,needle",
    [
        (["report", "{tmp}/missing"], 2, "run directory not found"),
        (["report", "{tmp}"], 2, "not a gpuwatch run directory"),
        (["report", "{run}", "--gpu-hour-price", "-1"], 2, "a price per GPU-hour"),
        (["report", "{run}", "--gpu-hour-price", "nan"], 2, "a price per GPU-hour"),
        (["report", "{run}", "-o", "{tmp}/no/such/dir/r.html"], 2, "does not exist"),
        (["report", "{run}", "-o", "{tmp}"], 2, "is a directory"),
        (["report", "{run}", "{tmp}/missing"], 2, "run directory not found"),
    ],
)
def test_errors_are_one_line(
    planted_run: Path, tmp_path: Path, argv: list[str], code: int, needle: str
) -> None:
    proc = run_cli(*[a.format(tmp=tmp_path, run=planted_run) for a in argv])
    assert proc.returncode == code and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_a_run_of_another_schema_is_a_runtime_error(planted_run: Path, tmp_path: Path) -> None:
    import shutil

    foreign = tmp_path / "foreign"
    shutil.copytree(planted_run, foreign)
    marker = json.loads((foreign / "gpuwatch-run.json").read_text())
    (foreign / "gpuwatch-run.json").write_text(json.dumps({**marker, "schema_version": 999}))
    proc = run_cli("report", foreign, "-o", tmp_path / "r.html")
    assert proc.returncode == 1 and "schema 999" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_report_and_diff_are_written(planted_run: Path, synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    proc = run_cli("report", planted_run, "-o", out, "--gpu-hour-price", "4")
    assert proc.returncode == 0 and proc.stdout == "" and "report written" in proc.stderr
    html = out.read_text()
    assert "$4.00 per GPU-hour" in html and "set with --gpu-hour-price" in html
    assert html.count('type="application/json"') >= 7
    assert math.isclose(
        out.stat().st_size / 1e6, float(proc.stderr.split("(")[1].split(" MB")[0]), abs_tol=0.06
    )
    diff = tmp_path / "d.html"
    assert run_cli("report", planted_run, synthetic, "-o", diff).returncode == 0
    text = diff.read_text()
    assert "candidate − base" in text and "the default" in text
