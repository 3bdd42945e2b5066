"""The GPU path of attach: NVML utilization -> device-busy spans -> the engine's device mode.

- `place_busy` through the real store and engine: a planted training thread and planted NVML intervals
  give a budget computed by hand.
- `NvmlBusySampler` against nvidia-ml-py's functions replaced at the NVML boundary (DESIGN.md): per-process
  utilization for the target's pids, the device's own utilization when the driver keeps no per-process
  samples, "not available" without a driver.
- A real attach to a real CPU trainer with that boundary replaced: the run is analysed in device mode with
  compute equal to the utilization NVML reported.
- On a machine with a CUDA device (`gpu` marker): a real attach to a real GPU loop.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pynvml
import pytest
from attach_support import Target

from collectors.system.nvml_busy import BusyInterval, NvmlBusySampler, place_busy
from gpuwatch.records import Run, Span

MS = 1_000_000


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.samples: list[Any] = []
        self.notes: dict[str, str] = {}

    def emit_span(self, span: Span) -> None:
        self.spans.append(span)

    def emit_sample(self, sample: Any) -> None:
        self.samples.append(sample)

    def note(self, key: str, message: str, **fields: Any) -> None:
        self.notes.setdefault(key, message)


class FakeNvml:
    """The pynvml functions the busy sampler calls, with pynvml's own return structs and errors."""

    def __init__(
        self, pids_on: dict[int, set[int]], sm_pct: int, device_pct: int = 0, per_process: bool = True
    ):
        self.pids_on = pids_on  # device index -> pids running on it
        self.sm_pct = sm_pct
        self.device_pct = device_pct
        self.per_process = per_process
        self.clock = itertools.count(1_000_000, 200_000)  # NVML sample timestamps, µs

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [
            pynvml.c_nvmlProcessInfo_t(pid=p, usedGpuMemory=1 << 30) for p in self.pids_on.get(handle, ())
        ]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[Any]:
        return []

    def nvmlDeviceGetProcessUtilization(self, handle: int, last_seen_us: int) -> list[Any]:
        if not self.per_process:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        ts = next(self.clock)
        return [
            pynvml.c_nvmlProcessUtilizationSample_t(pid=p, timeStamp=ts, smUtil=self.sm_pct, memUtil=5)
            for p in self.pids_on.get(handle, ())
        ]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return pynvml.c_nvmlUtilization_t(gpu=self.device_pct, memory=0)


def budget_of(run_dir: Path) -> dict[str, Any]:
    from gpuwatch.attribution.analysis import analyze_run
    from gpuwatch.attribution.summary import summarize

    return summarize(analyze_run(run_dir)).to_json()["ranks"][0]


def test_busy_time_is_laid_over_the_training_thread_and_the_engine_splits_the_rest(tmp_path: Path) -> None:
    from gpuwatch.store.segment_writer import SegmentWriter

    host = [  # the training thread over one second
        (0, 100 * MS, "sync"),
        (100 * MS, 400 * MS, "compute"),
        (400 * MS, 800 * MS, "data_loading"),
        (800 * MS, 1000 * MS, "cpu_preprocessing"),
    ]
    busy = [
        BusyInterval(0, 0, 500 * MS, 60.0, "process"),
        BusyInterval(0, 500 * MS, 1000 * MS, 20.0, "process"),
    ]
    kernels = place_busy(busy, host, rank=0, pid=42)
    # 300 ms in [0, 500): over the sync wait first, then the forward/backward launches
    # 100 ms in [500, 1000): no sync or compute there; preprocessing comes before the data wait
    assert [(k.start_ns // MS, k.end_ns // MS) for k in kernels] == [(0, 100), (100, 300), (800, 900)]
    assert all(k.kind == "kernel" and k.stream == 0 and k.category == "compute" for k in kernels)

    run = Run("", 0, "h", 42, "train.py", 1, time.time_ns(), "test", "attach")
    writer = SegmentWriter(tmp_path / "run", run, background=False)
    for s, e, cat in host:
        writer.emit_span(Span(0, "stack_sample", cat, s, e, category=cat, pid=42, tid=42))
    for k in kernels:
        writer.emit_span(k)
    writer.close()
    b = budget_of(tmp_path / "run")
    assert b["mode"] == "device"
    pct = b["budget_pct"]
    # busy 400 of 1000 ms; idle: [300,400) launches -> host overhead, [400,800) data, [900,1000) preprocessing
    assert pct["compute"] == pytest.approx(40, abs=0.1)
    assert pct["host_overhead"] == pytest.approx(10, abs=0.1)
    assert pct["data_loading"] == pytest.approx(40, abs=0.1)
    assert pct["cpu_preprocessing"] == pytest.approx(10, abs=0.1)
    assert pct["sync"] == pytest.approx(0, abs=0.1)


def test_sampler_reads_per_process_utilization_of_the_targets_device_only() -> None:
    sink = Sink()
    fake = FakeNvml({1: {777}}, sm_pct=70, device_pct=99)  # device 0 busy with someone else's job
    s = NvmlBusySampler(0.01, 0, pids=lambda: {777}, nvml=fake)
    s.start(sink)
    deadline = time.monotonic() + 10
    while len(s._busy) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.stop()
    got = s.take()
    assert got and {b.device_index for b in got} == {1}
    assert {(b.busy_pct, b.source) for b in got} == {(70.0, "process")}
    assert all(b.end_ns > b.start_ns for b in got)
    assert s.take() == []


def test_sampler_falls_back_to_device_utilization_and_notes_a_missing_driver() -> None:
    fake = FakeNvml({0: {5}}, sm_pct=0, device_pct=35, per_process=False)
    s = NvmlBusySampler(1.0, 0, pids=lambda: {5}, nvml=fake)
    s.sink = Sink()
    s.available = True
    s._nvml = fake
    s._handles = [0, 1]
    s.sample_once(0)
    s.sample_once(200 * MS)
    assert s.take() == [BusyInterval(0, 0, 200 * MS, 35.0, "device")]

    class NoDriver:
        def nvmlInit(self) -> None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    sink = Sink()
    gone = NvmlBusySampler(0.1, 0, pids=lambda: {5}, nvml=NoDriver())
    gone.start(sink)
    gone.stop()
    assert not gone.available and "CPU mode" in sink.notes["nvml_unavailable"]


def test_attach_with_nvml_reporting_utilization_runs_the_engine_in_device_mode(tmp_path: Path) -> None:
    """Real py-spy on a real trainer; only nvidia-ml-py's answers are planted (50% SM for the target)."""
    from gpuwatch.capture.attach import AttachOptions, attach

    with Target("bench", "--width", "256", "--depth", "2", "--batch", "64") as target:
        fake = FakeNvml({0: {target.pid}}, sm_pct=50)
        result = attach(
            AttachOptions(pid=target.pid, out_dir=tmp_path / "run", duration_s=6, system_samplers=False),
            nvml=fake,
        )
    assert result.report["gpu"]["nvml"] and result.report["gpu"]["devices"] == [0]
    b = budget_of(tmp_path / "run")
    assert b["mode"] == "device"
    assert b["budget_pct"]["compute"] == pytest.approx(50, abs=4), b["budget_pct"]
    # the device idles the other half while the thread runs forward/backward: launch overhead on a GPU
    assert b["budget_pct"]["host_overhead"] > 30


@pytest.mark.gpu
def test_real_gpu_trainer(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from conftest import run_cli

    with Target("cuda", "--width", "2048", "--depth", "4", "--batch", "256") as target:
        proc = run_cli(
            "attach", target.pid, "--duration", "8", "--out", tmp_path / "run", "--json", "--quiet"
        )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["attach"]["gpu"]["nvml"] and doc["attach"]["gpu"]["devices"]
    rank = doc["summary"]["ranks"][0]
    assert rank["mode"] == "device"
    assert rank["budget_pct"]["compute"] > 5
    assert rank["budget_pct"]["data_loading"] > 1  # the 10 ms host wait each step (file read rule)


def test_a_line_waiting_on_the_device_is_sync_on_a_gpu_only(tmp_path: Path) -> None:
    """py-spy sees no C calls: on `print(loss.item())` the innermost frame is the user's line. Its text
    (read from the target's own source file) names the wait; on a CPU-only run the same line is host work."""
    from collectors.pyspy.attach_stacks import StackClassifier

    src = tmp_path / "train.py"
    src.write_text(
        "for b in dl:\n    loss = model(b)\n    print(loss.item())\n    torch.cuda.synchronize()\n"
    )
    fwd = (f"{tmp_path}/torch/nn/modules/linear.py", "Linear.forward", 10)
    gpu, cpu = StackClassifier(device_syncs=True), StackClassifier()
    item = ((str(src), "<module>", 3),)
    assert gpu.classify(item) == ("sync", "host-device sync (.item()/.cpu()/synchronize)")
    assert gpu.classify(((str(src), "<module>", 4),))[0] == "sync"
    assert cpu.classify(item) == (None, "<module> (train.py:3)")
    # a deeper Python frame is where the thread is: the line calling it does not matter then
    assert gpu.classify(((str(src), "<module>", 2), fwd)) == ("compute", "forward")
