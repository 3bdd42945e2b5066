"""The lowest-priority helpers of attach (collectors/pyspy/yielding.py), on the real scheduler of this machine."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from collectors.pyspy.yielding import RateGovernor, call_lowered, share_uncertainty_pp


def priority() -> tuple[int, int]:
    return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)


def test_call_lowered_lowers_the_work_and_what_it_starts_but_never_the_caller() -> None:
    before = priority()
    seen: dict[str, tuple[int, int]] = {}

    def work() -> str:
        seen["work"] = priority()
        child = threading.Thread(target=lambda: seen.__setitem__("child", priority()))
        child.start()
        child.join()
        return "done"

    assert call_lowered(work) == "done"
    assert priority() == before  # the caller (here: pytest's thread) keeps its priority
    lowest = {os.SCHED_IDLE} if hasattr(os, "SCHED_IDLE") else {os.SCHED_OTHER}
    assert seen["work"][0] in lowest and seen["work"][1] == 19
    assert seen["child"] == seen["work"]  # threads started there inherit it (the /proc and NVML samplers)


def test_call_lowered_raises_the_works_error_in_the_caller() -> None:
    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        call_lowered(fail)


def test_governor_keeps_the_rate_inside_the_budget_and_climbs_back() -> None:
    gov = RateGovernor(asked_hz=100, budget_cores=0.05)
    assert gov.after_run(cpu_s=0.2, wall_s=2.0) == 50  # 10% of a core against 5%: half the rate
    assert gov.after_run(cpu_s=0.01, wall_s=0.2) == 50  # a start-up dominated run does not move it
    assert gov.after_run(cpu_s=0.02, wall_s=2.0) == 63  # 1%: under half the budget, up by a quarter
    for _ in range(5):
        gov.after_run(cpu_s=0.02, wall_s=2.0)
    assert gov.rate_hz == 100  # never above what was asked


def _sampled_share_error_pp(rng: np.random.Generator, interval_s: float, window_s: float = 10.0) -> tuple:
    """One simulated attach: a thread alternating data waits of 10-45 ms and compute of 20-50 ms (the
    saturated test target's mix), sampled every `interval_s` from a random phase. Returns (error of the data
    share in points, data stretches seen in the samples, steps)."""
    lengths = rng.uniform([0.010, 0.020], [0.045, 0.050], size=(int(window_s / 0.03) + 10, 2)).ravel()
    edges = np.concatenate([[0.0], np.cumsum(lengths)])
    is_data = np.arange(lengths.size) % 2 == 0
    times = rng.uniform(0, interval_s) + np.arange(0, window_s, interval_s)
    seen = is_data[np.searchsorted(edges, times, side="right") - 1]
    inside = np.minimum(edges[1:], window_s) - np.minimum(edges[:-1], window_s)
    truth_pct = 100.0 * inside[is_data].sum() / window_s
    runs = int(seen[0]) + int(np.count_nonzero(seen[1:] & ~seen[:-1]))
    steps = int(np.count_nonzero(edges[2::2] <= window_s))
    return 100.0 * seen.mean() - truth_pct, runs, steps


@pytest.mark.parametrize("interval_s", [0.01, 0.03, 0.06])
def test_share_uncertainty_matches_the_spread_of_simulated_sampling(interval_s: float) -> None:
    """The standard error attach reports against the spread of 400 simulated attaches of known truth: within
    30% while the interval is at most the stretches' length; short by at most 30% at twice it (stretches
    missed between samples err together), where counting only the stretches seen was short by 70%. A short
    stretch in every step (the loop's own line) is off by far less than a quarter of an interval squared."""
    rng = np.random.default_rng(1)
    runs = [_sampled_share_error_pp(rng, interval_s) for _ in range(400)]
    spread = float(np.std([err for err, _, _ in runs]))
    said = float(np.mean([share_uncertainty_pp(n, interval_s, 10.0, steps, 44.0) for _, n, steps in runs]))
    assert 0.7 * spread <= said <= 1.3 * spread, (spread, said)
    assert share_uncertainty_pp(0, interval_s, 10.0, 100) == 0.0
    # 1% of 10 s in 160 stretches of 0.6 ms: each off by 0.6 (D - 0.6) ms^2, not D^2 / 4
    short = share_uncertainty_pp(160, interval_s, 10.0, 160, 1.0)
    assert short == pytest.approx(100.0 * np.sqrt(160 * 0.1 / 160 * (interval_s - 0.1 / 160)) / 10.0)
    assert short < share_uncertainty_pp(160, interval_s, 10.0, 160) / 2


def test_governor_holds_the_budget_strictly_only_while_the_host_is_saturated() -> None:
    gov = RateGovernor(asked_hz=100, budget_cores=0.02)
    assert gov.after_run(cpu_s=0.1, wall_s=2.0, host_idle_cores=1.5) == 100  # 5% of a core: a core was free
    assert gov.saturated_runs == 0
    assert gov.after_run(cpu_s=0.1, wall_s=2.0, host_idle_cores=0.1) == 40  # saturated: 2% of 5% of the rate
    assert gov.saturated_runs == 1
    assert gov.after_run(cpu_s=0.1, wall_s=2.0) == 16  # idle time unknown: held as saturated


def test_idle_cores_from_two_readings_of_proc_stat() -> None:
    from collectors.pyspy.yielding import CLOCK_TICKS, host_idle_jiffies, idle_cores

    assert idle_cores(0, 3 * CLOCK_TICKS, 2.0) == pytest.approx(1.5)
    assert idle_cores(None, 5, 1.0) is None
    now = host_idle_jiffies()
    assert now is not None and now > 0  # this machine has /proc/stat


def test_the_rate_is_kept_for_py_spys_sampling_not_its_start_up_nor_gpuwatchs_own_work(tmp_path) -> None:
    """A run's cost as the governor sees it (pyspy_sampler.PySpyRecorder._cost), on real processes: a child
    that burns 0.3 s of CPU before it "says it samples" and little after, while this process burns 0.3 s.
    The start-up is not sampling cost, and this process's work is not the job's: the host is not saturated
    by them, so the rate stays (the 3% budget would have cut it to a third)."""
    import subprocess
    import sys
    import time

    from collectors.pyspy.pyspy_sampler import PySpyRecorder, _Chunk, _own_cpu_s
    from collectors.pyspy.yielding import host_idle_jiffies, process_cpu_s

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
            "print('ready', flush=True)\ntime.sleep(5)",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        rec = PySpyRecorder(
            "py-spy", child.pid, rate_hz=100, chunk_s=2.0, subprocesses=False, on_chunk=lambda *a: None,
            workdir=tmp_path, cpu_budget_cores=0.03,
        )  # fmt: skip
        at_ready = process_cpu_s(child.pid)
        chunk = _Chunk(
            child, tmp_path / "c.json", time.time_ns(), time.time_ns(), host_idle_jiffies(), 100, at_ready,
            _own_cpu_s(),
        )  # fmt: skip
        t = time.process_time()
        while time.process_time() - t < 0.3:  # gpuwatch's own work (an attach starting up)
            pass
        time.sleep(0.5)
        cost = rec._cost(chunk)
        assert cost.cpu_s is not None and at_ready is not None and cost.cpu_s >= 0.25  # start-up counted here
        assert cost.sampling_cpu_s is not None and cost.sampling_cpu_s < 0.05  # ... not here
        assert cost.spare_cores is not None and cost.spare_cores >= 0.5 * 0.3 / cost.wall_s
        rate = rec.governor.after_run(cost.sampling_cpu_s, cost.wall_s, cost.spare_cores)
        assert rate == 100
    finally:
        child.kill()
        child.wait()


def test_a_first_run_on_a_saturated_host_starts_at_the_rate_the_budget_allows() -> None:
    from collectors.pyspy.yielding import PRIOR_SAMPLE_CPU_S

    gov = RateGovernor(asked_hz=100, budget_cores=0.03)
    assert gov.begin(spare_cores=0.2) == int(0.03 / PRIOR_SAMPLE_CPU_S) < 100
    assert not gov.last_saturated and gov.saturated_runs == 0  # no run measured yet: a short first chunk
    assert RateGovernor(asked_hz=100, budget_cores=0.03).begin(spare_cores=1.2) == 100  # a core to spare
    assert RateGovernor(asked_hz=100, budget_cores=0.03).begin(spare_cores=None) == 100  # unknown: as asked
    assert RateGovernor(asked_hz=100, budget_cores=0.0).begin(spare_cores=0.0) == 100  # no budget
    assert RateGovernor(asked_hz=20, budget_cores=0.03).begin(spare_cores=0.0) == 20  # never above the ask
    assert RateGovernor(asked_hz=100, budget_cores=0.001, min_hz=5).begin(spare_cores=0.0) == 5


def test_the_host_reading_counts_this_process_s_own_work_as_spare() -> None:
    """Two real readings around 0.3 s of this process's CPU: whatever else the machine runs, the cores the
    job left include what this process used (an attach starting up is not the job saturating the host)."""
    import time

    from collectors.pyspy.yielding import HostReading, spare_cores_at_start

    first = HostReading.now()
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    later = HostReading.now()
    spare = later.spare_cores_since(first)
    assert spare is not None and spare >= 0.8 * 0.3 / (later.t_s - first.t_s)
    t0 = time.monotonic()
    assert spare_cores_at_start(HostReading.now()) is not None
    assert time.monotonic() - t0 >= 0.2  # it looks for STARTUP_PROBE_S (0.25 s) at least


def test_the_cli_default_budget_is_attachs() -> None:
    from gpuwatch.capture.attach import DEFAULT_CPU_BUDGET_PCT, AttachOptions
    from gpuwatch.cli.main import build_parser

    args = build_parser().parse_args(["attach", str(os.getpid())])
    assert args.cpu_budget == DEFAULT_CPU_BUDGET_PCT == AttachOptions(pid=1).cpu_budget_pct
