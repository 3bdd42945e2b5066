"""The lowest-priority helpers of attach (collectors/pyspy/yielding.py), on the real scheduler of this machine."""

from __future__ import annotations

import os
import threading

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


def test_share_uncertainty_follows_the_number_of_stretches_and_the_interval() -> None:
    # 24 stretches at 10 ms in 10 s: 100 * 0.01 * sqrt(24/6) / 10 = 0.2 pp
    assert share_uncertainty_pp(24, 0.01, 10.0) == pytest.approx(0.2)
    assert share_uncertainty_pp(24, 0.04, 10.0) == pytest.approx(0.8)
    assert share_uncertainty_pp(0, 0.01, 10.0) == 0.0


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
