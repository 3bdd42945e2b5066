"""Prometheus `/metrics` of a run, scraped for real over 127.0.0.1: from `gpuwatch.watch(metrics_port=...)`
inside a live watched loop, and from `gpuwatch export prometheus`; the values equal what `gpuwatch summary
--json` says over the same steps (its `per_step` figures over the same window)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, run_cli
from prometheus_client.parser import text_string_to_metric_families
from synthetic_run import write_synthetic_run

import gpuwatch

CATEGORIES = (
    "compute", "data_loading", "cpu_preprocessing", "sync", "checkpoint_io", "memcpy", "host_overhead",
    "unattributed",
)  # fmt: skip


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("gpuwatch_")
    }


def expected_from_summary(doc: dict, window: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics, computed from `gpuwatch summary --json` alone (its per-step figures)."""
    out = {}
    for r in doc["ranks"]:
        rank = (("rank", str(r["rank"])),)
        ps = r["per_step"]
        n = min(window, len(ps["wall_ms"]))
        wall = sum(ps["wall_ms"][-n:])
        for c in CATEGORIES:
            out[("gpuwatch_budget_ratio", (("category", c), *rank))] = sum(ps["category_ms"][c][-n:]) / wall
        out[("gpuwatch_step_time_seconds", rank)] = wall / n / 1000
        warm = r["warmup"]["steps"] if r.get("warmup") and not r["warmup"]["included"] else 0
        out[("gpuwatch_steps_total", rank)] = r["steps"] + warm
    return out


def assert_same(got: dict, want: dict) -> None:
    for key, value in want.items():
        assert key in got, (key, sorted(got))
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_a_live_watched_loop_serves_its_own_metrics_equal_to_the_summary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with gpuwatch.watch(run, sample_hz=0, system_samplers=False, flush_interval_s=0.2, metrics_port=0) as gw:
        assert gw.metrics is not None and gw.metrics.host == "127.0.0.1"  # loopback by default
        for i in range(12):
            with gpuwatch.span("load", category="data_loading"):
                time.sleep(0.004 + 0.002 * (i % 3))
            with gpuwatch.span("math", category="compute"):
                time.sleep(0.006)
            gw.step()
        time.sleep(0.8)  # the writer has flushed every finished step; the loop is paused, still watched
        got = scrape(gw.metrics.url)
        proc = run_cli("summary", run, "--json")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert [r["rank"] for r in doc["ranks"]] == [0]
        assert_same(got, expected_from_summary(doc, 20))
        assert got[("gpuwatch_records_dropped_total", (("rank", "0"),))] == 0
        ratio = sum(got[("gpuwatch_budget_ratio", (("category", c), ("rank", "0")))] for c in CATEGORIES)
        assert ratio == pytest.approx(1.0, abs=1e-3)  # per-step figures are kept to the microsecond
        assert got[("gpuwatch_budget_ratio", (("category", "data_loading"), ("rank", "0")))] > 0.2
        url = gw.metrics.url
    with pytest.raises(OSError):  # the endpoint closes with the watch
        urllib.request.urlopen(url, timeout=5)


def test_export_prometheus_serves_a_run_over_a_window_of_steps(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", steps=30, ranks=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuwatch", "export", "prometheus", str(run), "--port", "0", "--window-steps", "8"],
        cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert "serving http://127.0.0.1:" in line, line
        url = line.split("serving ", 1)[1].split()[0]
        got = scrape(url)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == ""
    doc = json.loads(run_cli("summary", run, "--json").stdout)
    assert_same(got, expected_from_summary(doc, 8))
    assert {k[1] for k in got if k[0] == "gpuwatch_records_dropped_total"} == {
        (("rank", "0"),),
        (("rank", "1"),),
    }
    # the window is the last 8 steps, not the whole run (the synthetic run checkpoints every 50 steps)
    assert got[("gpuwatch_steps_total", (("rank", "0"),))] == 30


def test_export_errors(tmp_path: Path) -> None:
    assert run_cli("export", "prometheus", tmp_path / "nowhere").returncode == 2
    run = write_synthetic_run(tmp_path / "run", steps=3, ranks=1)
    bad = run_cli("export", "prometheus", run, "--window-steps", "0")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_the_grafana_dashboard_reads_only_metrics_we_export() -> None:
    import re

    dash = json.loads((ROOT / "examples" / "grafana-gpuwatch.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exported = {"gpuwatch_budget_ratio", "gpuwatch_step_time_seconds", "gpuwatch_steps_total"}
    exported.add("gpuwatch_records_dropped_total")
    used = {m for e in exprs for m in re.findall(r"gpuwatch_[a-z_]+", e)}
    assert used == exported
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "rank"}
