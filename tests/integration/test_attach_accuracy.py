"""`gpuwatch attach` against real running trainers with planted causes, checked against the truth each
program measured itself (time.perf_counter per phase, cut to exactly the window attach reports on).

The budget must match the measured truth within 5 percentage points per category after 10-30 s of sampling;
the detected steps must line up with the program's own steps; what the DataLoader worker does must match
what the worker measured. Real py-spy (non-blocking), real DataLoader worker processes, real JPEG decode,
real torch.save to disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from attach_support import Target, run_window, start_cli, step_starts, truth_pct, wait_for
from conftest import run_cli

TOLERANCE_PP = 5.0
PHASE_TO_CATEGORY = {
    "data": "data_loading",
    "decode": "cpu_preprocessing",
    "compute": "compute",
    "ckpt": "checkpoint_io",
}


def _show(
    name: str, mapping: dict[str, str], want: dict[str, float], got: dict[str, float], doc: dict | None = None
) -> None:
    """The figures behind the assertions (pytest -s shows them, a failure shows them too; the issue note
    quotes them), with how attach sampled: its rate, the step's length and the samples a step got (a rate
    that divides the step keeps sampling the same phase of it)."""
    for phase, category in mapping.items():
        print(f"{name}: {category:18s} measured {want[phase]:5.1f}%  attach {got[category]:5.1f}%")
    if doc is not None:
        attach = doc["attach"]
        rate = attach["sampling"]["training_process"]
        det = attach["step_detection"]
        print(
            f"{name}: sampled at {rate['achieved_hz']} Hz (asked {rate['asked_hz']}, last {rate['last_rate_hz']},"
            f" {rate['saturated_runs']} of {rate['runs']} runs over budget, py-spy {rate['cpu_pct_of_core']}% of a"
            f" core); steps {det.get('median_step_ms')} ms,"
            f" {det.get('samples_per_step')} samples a step; uncertainty {attach['sampling']['share_uncertainty_pp']}"
        )


def _spans_written(run: Path) -> bool:
    return any(run.glob("rank*/spans-*.jsonl"))


@pytest.mark.slow
def test_planted_trainer_budget_steps_and_workers_match_the_measured_truth(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    run = tmp_path / "run"
    with Target(
        "planted", "--ckpt-path", tmp_path / "ckpt.pt", "--read-latency", "0.08", truth=truth
    ) as target:
        workers = target.children()
        # workers at 100 Hz: at the default tenth of --rate a 10 s window holds ~100 worker samples, a standard
        # error of ~4.5 points on a 70% share (attach reports it), too coarse for the 5-point check below
        attach = start_cli(
            "attach",
            target.pid,
            "--duration",
            "10",
            "--out",
            run,
            "--json",
            "--quiet",
            "--worker-rate",
            "100",
        )
        # the run directory is readable while attach still samples
        assert wait_for(lambda: _spans_written(run), 20), "no spans written while sampling"
        live = run_cli("summary", run, "--json")
        assert live.returncode == 0, live.stderr
        live_budget = json.loads(live.stdout)["ranks"][0]["budget_pct"]
        assert sum(live_budget.values()) == pytest.approx(100.0, abs=0.5)
        out, err = attach.communicate(timeout=180)
    assert attach.returncode == 0, err
    doc = json.loads(out)
    report, summary = doc["attach"], doc["summary"]
    assert report["status"] == "ended"

    # training thread: the main thread of the program (it runs forward/backward)
    assert report["training_thread"]["tid"] == target.pid

    # steps: used, confident, and on the program's own step starts
    det = report["step_detection"]
    assert det["used"] and det["confidence"] >= 0.6, det
    w0, w1, detected = run_window(run)
    assert w1 - w0 > 7e9, "fewer than 7 s of steps"
    measured = [s for s in step_starts(truth) if w0 <= s <= w1]
    # a py-spy sample the busy machine delays can merge two steps; never split one
    assert 0.6 * (len(measured) - 1) <= len(detected) - 1 <= len(measured), (len(detected), len(measured))
    lag_ms = [min((d - m for m in measured if m <= d + 5_000_000), default=1e12) / 1e6 for d in detected]
    assert np.median(lag_ms) < 15, lag_ms  # the first sample after the wrap to the top of the loop
    assert np.mean(np.array(lag_ms) < 40) > 0.7, lag_ms

    # budget per category vs measured truth over exactly the detected steps
    want = truth_pct(truth, (w0, w1))
    got = summary["ranks"][0]["budget_pct"]
    _show("planted", PHASE_TO_CATEGORY, want, got, doc)
    for phase, category in PHASE_TO_CATEGORY.items():
        assert want[phase] > 8, f"planted {phase} too small to prove anything: {want}"
        assert abs(got[category] - want[phase]) <= TOLERANCE_PP, (
            category,
            got[category],
            want[phase],
            got,
            want,
        )

    # the worker: the process py-spy saw is the program's DataLoader worker, and it spends its time where
    # it measured it did (a latency-bound read, then JPEG decode; idle otherwise)
    wrep = report["dataloader_workers"]
    assert set(wrep["pids"]) == workers
    window = tuple(report["sampled_unix_ns"])
    wtruth = truth_pct(truth, window, ".worker")
    pct = wrep["pct_by_label"]
    assert list(pct)[0] == "file read"
    print(f"planted worker: file read measured {wtruth['read']:.1f}% attach {pct['file read']:.1f}%")
    se = report["sampling"]["workers_share_uncertainty_pp"]
    assert 0 < se["file read"] < 2.5, se  # ~100 Hz x 10 s: sqrt(0.7 * 0.3 / 1000) = 1.4 points
    assert abs(pct["file read"] - wtruth["read"]) <= TOLERANCE_PP, (pct, wtruth)
    decode = sum(v for k, v in pct.items() if k in ("image decode (PIL)", "PIL decode/transform", "numpy"))
    assert abs(decode - wtruth["decode"]) <= TOLERANCE_PP, (pct, wtruth)
    assert "file read" in wrep["summary"] and "DataLoader worker" in wrep["summary"]

    # the findings are in the run itself (summary notes), not only in attach's output
    notes = " ".join(summary["notes"])
    assert "steps detected" in notes and "DataLoader worker" in notes


@pytest.mark.slow
def test_slow_single_process_dataloader_splits_read_from_decode(tmp_path: Path) -> None:
    """num_workers=0: the dataset runs under DataLoader.__next__ on the training thread. Its latency-bound
    read is data_loading; the JPEG decode and augmentation it does there are cpu_preprocessing (issue 18)."""
    truth = tmp_path / "truth.jsonl"
    run = tmp_path / "run"
    # 20 s of samples: over 8 s the shares' sampling error was 1.5-2 points (10 runs), and once in CI the data
    # share came 5.2 points over (5 allowed); over 12 s it was -2.9..+4.2 points here (7 runs), and in CI
    # 5.96 over once (stop 26) and the decode 5.26 over once (229f103). py-spy's chrometrace keeps a stack
    # until it changes, so a sampler that falls behind (a busy host) may give the time it missed to the last
    # stack seen: a few such stalls move points between read and decode, and a longer window averages them.
    with Target("loader0", "--read-latency", "0.01", "--width", "768", truth=truth) as target:
        proc = run_cli(
            "attach", target.pid, "--duration", "20", "--out", run, "--json", "--quiet", timeout=180
        )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    det = doc["attach"]["step_detection"]
    if det["used"]:
        w0, w1, _ = run_window(run)
    else:  # the budget then covers the whole sampled window
        w0, w1 = doc["attach"]["sampled_unix_ns"]
    want = truth_pct(truth, (w0, w1))
    items = truth_pct(truth, (w0, w1), ".items")  # per item: read, decode (+ augment)
    want["read"], want["decode"] = items["read"], items["decode"]
    # what the loader does besides (its sampler and fetch, the item's own lines, its truth record) is small:
    # data = read + decode + that. Nothing names that work, so it stays the loader's, data_loading
    # (stack_rules): the truth of data_loading is everything under next() but the decode. Compared with the
    # read alone, attach came 1.2-2.2 points over in 3 runs here, and 5.96 once in CI (5 allowed).
    assert want["data"] - want["read"] - want["decode"] < 3, want
    want["loader"] = want["data"] - want["decode"]
    got = doc["summary"]["ranks"][0]["budget_pct"]
    mapping = {"loader": "data_loading", "decode": "cpu_preprocessing", "compute": "compute"}
    _show("loader0", {"read": "data_loading", **mapping}, want, got, doc)
    assert want["read"] > 10 and want["decode"] > 5 and want["compute"] > 20, want
    for phase, category in mapping.items():
        assert abs(got[category] - want[phase]) <= TOLERANCE_PP, (category, got, want)
    assert doc["attach"]["dataloader_workers"] is None  # no worker processes


@pytest.mark.slow
def test_saturated_workers_the_budget_holds_while_attach_yields(tmp_path: Path) -> None:
    """Two DataLoader workers decoding large JPEGs keep both cores busy: attach samples the workers at the
    lowest priority and the training process within a CPU budget, says what rate it achieved, and the budget
    still matches the truth (with the training process's py-spy at SCHED_IDLE it did not: compute came out
    4-15 points short, the sampler seeing the thread only when a core was free)."""
    truth = tmp_path / "truth.jsonl"
    run = tmp_path / "run"
    # steps of ~150 ms (a 1024-wide MLP; 1700 px JPEGs keep the workers behind it): at the ~18 Hz the budget
    # allows on this saturated host a step is a few samples. Steps of 40 ms (a 512-wide MLP, 960 px) were a
    # sample or two at the 35 Hz of the budget before: the data share came 5.0 points off once in CI over 10 s
    with Target(
        "saturated",
        *("--workers", "2", "--read-latency", "0", "--worker-image", "1700", "--width", "1024"),
        truth=truth,
    ) as target:
        workers = target.children()
        # 30 s, not the 10 s of the other tests: each step's phases are off by up to a sample (the uncertainty
        # attach reports, yielding.share_uncertainty_pp: about 2 points over 20 s here; -1.1 to +1.2 measured)
        proc = run_cli(
            "attach", target.pid, "--duration", "30", "--out", run, "--json", "--quiet", timeout=180
        )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    sampling = doc["attach"]["sampling"]
    main = sampling["training_process"]
    assert main["priority"] == "normal", main
    assert sampling["workers"]["priority"] in ("SCHED_IDLE", "nice 19"), sampling["workers"]
    assert main["achieved_hz"] is not None and 5 <= main["achieved_hz"] <= 110, main
    assert sampling["workers"] is not None and sampling["workers"]["asked_hz"] == 10
    assert any("attach_sampling" in n and "Hz per thread" in n for n in doc["summary"]["notes"])
    det = doc["attach"]["step_detection"]
    w0, w1 = run_window(run)[:2] if det["used"] else doc["attach"]["sampled_unix_ns"]
    want = truth_pct(truth, (w0, w1))
    got = doc["summary"]["ranks"][0]["budget_pct"]
    # the loop's own line is host work by the budget's rules (the target times it apart); on a saturated host
    # it also holds the waits for a core that fall there. Until the workers' py-spys were started after the
    # training process's and stopped before it, their extra seconds came out unattributed (10-19 points)
    want["host"] = want.get("host", 0.0)
    got = {**got, "host": got["host_overhead"] + got["unattributed"]}
    _show("saturated", {"data": "data_loading", "compute": "compute", "host": "host"}, want, got, doc)
    assert want["data"] > 20, want
    # what attach says it can resolve at the rate it achieved (one standard error, points): finer than the check
    se = sampling["share_uncertainty_pp"]
    assert 0 < se["data_loading"] < TOLERANCE_PP / 2, se
    for phase, category in (("data", "data_loading"), ("compute", "compute"), ("host", "host")):
        assert abs(got[category] - want[phase]) <= TOLERANCE_PP, f"{category}: {got} against {want}"
    assert set(doc["attach"]["dataloader_workers"]["pids"]) == workers
