"""The NVML sampler, with nvidia-ml-py replaced at its function boundary only (no GPU here), and for real
without a driver: pynvml-shaped structs in, real `pynvml.NVMLError` subclasses raised, samples checked
against the planted values."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest
from conftest import ListSink

from collectors.system.nvml_sampler import NvmlSampler

DEVICE_METRICS = (
    "gpu_util_pct",
    "mem_util_pct",
    "mem_used_bytes",
    "mem_total_bytes",
    "power_mw",
    "sm_clock_mhz",
    "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s",
)


@dataclass
class FakeDevice:
    """What one GPU reports, in NVML's own units."""

    gpu_pct: int = 0
    mem_pct: int = 0
    mem_total: int = 16 << 30
    mem_used: int = 0
    power_mw: int = 0
    sm_mhz: int = 0
    pcie_tx_kib: int = 0
    pcie_rx_kib: int = 0
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, usedGpuMemory)
    util_samples: list[tuple[int, int, int, int]] = field(
        default_factory=list
    )  # (pid, timeStamp µs, sm, mem)
    errors: dict[str, pynvml.NVMLError] = field(default_factory=dict)  # function name -> raised error


class FakeNvml:
    """Replaces the pynvml functions the sampler calls; records every call."""

    def __init__(self, devices: list[FakeDevice], init_error: pynvml.NVMLError | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.calls: list[tuple[str, Any]] = []
        self.last_seen_args: list[int] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in (
            "nvmlInit",
            "nvmlShutdown",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetMemoryInfo",
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetClockInfo",
            "nvmlDeviceGetPcieThroughput",
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetProcessUtilization",
        ):
            monkeypatch.setattr(pynvml, name, self._wrap(name, getattr(self, name)))

    def _wrap(self, name: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            device = args[0] if args and isinstance(args[0], FakeDevice) else None
            self.calls.append((name, None if device is None else self.devices.index(device)))
            if device is not None and name in device.errors:
                raise device.errors[name]
            return fn(*args)

        return call

    def count(self, name: str, device: int | None = None) -> int:
        return sum(1 for n, d in self.calls if n == name and (device is None or d == device))

    # pynvml's signatures and return shapes; the device object itself serves as the opaque handle
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        return self.devices[index]

    def nvmlDeviceGetUtilizationRates(self, h: FakeDevice) -> Any:
        return pynvml.c_nvmlUtilization_t(gpu=h.gpu_pct, memory=h.mem_pct)

    def nvmlDeviceGetMemoryInfo(self, h: FakeDevice) -> Any:
        return pynvml.c_nvmlMemory_t(total=h.mem_total, free=h.mem_total - h.mem_used, used=h.mem_used)

    def nvmlDeviceGetPowerUsage(self, h: FakeDevice) -> int:
        return h.power_mw

    def nvmlDeviceGetClockInfo(self, h: FakeDevice, clock_type: int) -> int:
        assert clock_type == pynvml.NVML_CLOCK_SM
        return h.sm_mhz

    def nvmlDeviceGetPcieThroughput(self, h: FakeDevice, counter: int) -> int:
        return h.pcie_tx_kib if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES else h.pcie_rx_kib

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeDevice) -> list[Any]:
        out = []
        for pid, used in h.processes:
            info = pynvml.c_nvmlProcessInfo_v2_t(
                pid=pid, usedGpuMemory=used or 0, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF
            )
            obj = pynvml.nvmlStructToFriendlyObject(info)
            if used is None:  # what pynvml returns for NVML_VALUE_NOT_AVAILABLE (WDDM)
                obj.usedGpuMemory = None
            out.append(obj)
        return out

    def nvmlDeviceGetProcessUtilization(self, h: FakeDevice, last_seen_us: int) -> list[Any]:
        # NVML's contract: only samples newer than lastSeenTimeStamp; NVML_ERROR_NOT_FOUND when none.
        self.last_seen_args.append(last_seen_us)
        newer = [s for s in h.util_samples if s[1] > last_seen_us]
        if not newer:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return [
            pynvml.c_nvmlProcessUtilizationSample_t(
                pid=pid, timeStamp=ts, smUtil=sm, memUtil=mem, encUtil=0, decUtil=0
            )
            for pid, ts, sm, mem in newer
        ]


def make_sampler(sink: ListSink, **kwargs: Any) -> NvmlSampler:
    sampler = NvmlSampler(interval_s=1.0, anchor_unix_ns=time.time_ns(), rank=3, **kwargs)
    sampler.sink = sink
    return sampler


def test_device_metrics_are_the_nvml_values_in_our_units(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [
        FakeDevice(87, 41, 40 << 30, 12 << 30, 251_000, 1410, 1500, 250_000),
        FakeDevice(3, 1, 80 << 30, 1 << 30, 61_500, 210, 0, 7),
    ]
    fake = FakeNvml(devices)
    fake.install(monkeypatch)
    sink = ListSink()
    make_sampler(sink, pids=set()).sample_once(100)

    for index, d in enumerate(devices):
        expected = {
            "gpu_util_pct": d.gpu_pct,
            "mem_util_pct": d.mem_pct,
            "mem_used_bytes": d.mem_used,
            "mem_total_bytes": d.mem_total,
            "power_mw": d.power_mw,
            "sm_clock_mhz": d.sm_mhz,
            "pcie_tx_bytes_per_s": d.pcie_tx_kib * 1024,
            "pcie_rx_bytes_per_s": d.pcie_rx_kib * 1024,
        }
        for metric, value in expected.items():
            assert sink.get(100, metric, index) == [float(value)], metric
    assert len(sink.samples) == 2 * len(DEVICE_METRICS)  # no process is on any device
    assert all(s.rank == 3 and s.pid == 0 for s in sink.samples)
    assert sink.notes == []


def test_unsupported_query_is_none_every_tick_and_noted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [FakeDevice(power_mw=100_000), FakeDevice(power_mw=200_000)]
    devices[1].errors["nvmlDeviceGetPowerUsage"] = pynvml.NVMLError_NotSupported()
    fake = FakeNvml(devices)
    fake.install(monkeypatch)
    sink = ListSink()
    sampler = make_sampler(sink, pids=set(), pcie=False)
    for t in (1, 2, 3):
        sampler.sample_once(t)

    for t in (1, 2, 3):
        assert sink.get(t, "power_mw", 0) == [100_000.0]
        assert sink.get(t, "power_mw", 1) == [None]  # not available: NULL, never 0 or NaN
    assert [key for key, _, _ in sink.notes] == ["nvml_nvmlDeviceGetPowerUsage_NVMLError_NotSupported"]
    assert sink.notes[0][2] == {"device_index": 1}
    assert fake.count("nvmlDeviceGetPowerUsage", 1) == 1  # not asked again
    assert fake.count("nvmlDeviceGetPowerUsage", 0) == 3
    assert fake.count("nvmlDeviceGetPcieThroughput") == 0
    assert fake.count("nvmlInit") == 1  # initialised once, lazily


def test_transient_error_is_none_for_that_tick_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    device = FakeDevice(sm_mhz=1755)
    fake = FakeNvml([device])
    fake.install(monkeypatch)
    sink = ListSink()
    sampler = make_sampler(sink, pids=set())
    device.errors["nvmlDeviceGetClockInfo"] = pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
    sampler.sample_once(1)
    sampler.sample_once(2)
    del device.errors["nvmlDeviceGetClockInfo"]
    sampler.sample_once(3)
    assert [sink.get(t, "sm_clock_mhz", 0) for t in (1, 2, 3)] == [[None], [None], [1755.0]]
    assert [key for key, _, _ in sink.notes] == ["nvml_nvmlDeviceGetClockInfo_NVMLError_Unknown"]


def test_process_metrics_only_for_watched_pids_and_each_nvml_sample_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now_us = time.time_ns() // 1000
    trainer, worker, stranger, windows = 4100, 4101, 999, 4102
    device = FakeDevice(
        processes=[(trainer, 3 << 30), (worker, 256 << 20), (stranger, 5 << 30), (windows, None)],
        util_samples=[
            (trainer, now_us - 2_000_000, 99, 99),  # older than the first tick's window: never counted
            (trainer, now_us - 300_000, 50, 20),
            (trainer, now_us - 100_000, 70, 40),
            (stranger, now_us - 200_000, 90, 90),
        ],
    )
    fake = FakeNvml([FakeDevice(), device])
    fake.install(monkeypatch)
    sink = ListSink()
    watched = {trainer, worker, windows}
    sampler = make_sampler(sink, pids=lambda: watched)

    sampler.sample_once(1)
    assert sink.get(1, "proc_gpu_util_pct", 1, trainer) == [60.0]  # mean of the two new NVML samples
    assert sink.get(1, "proc_gpu_mem_util_pct", 1, trainer) == [30.0]
    assert sink.get(1, "proc_gpu_mem_used_bytes", 1, trainer) == [float(3 << 30)]
    assert sink.get(1, "proc_gpu_util_pct", 1, worker) == [0.0]  # listed, ran no kernel since last tick
    assert sink.get(1, "proc_gpu_mem_used_bytes", 1, worker) == [float(256 << 20)]
    assert sink.get(1, "proc_gpu_mem_used_bytes", 1, windows) == [None]  # NVML cannot say (WDDM)
    assert not [s for s in sink.samples if s.pid == stranger]
    assert not [s for s in sink.samples if s.device_index == 0 and s.pid != 0]

    device.util_samples.append((trainer, now_us + 500_000, 10, 5))
    sampler.sample_once(2)
    assert sink.get(2, "proc_gpu_util_pct", 1, trainer) == [10.0]  # only the new sample
    assert fake.last_seen_args[-1] == now_us - 100_000  # the newest timestamp seen so far

    sampler.sample_once(3)  # nothing new: NVML says NOT_FOUND, which is "no kernels", not an error
    assert sink.get(3, "proc_gpu_util_pct", 1, trainer) == [0.0]
    assert fake.last_seen_args[-1] == now_us + 500_000
    assert sink.notes == []


def test_unsupported_process_utilization_is_none_not_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    device = FakeDevice(processes=[(os.getpid(), 1 << 30)])
    device.errors["nvmlDeviceGetProcessUtilization"] = pynvml.NVMLError_NotSupported()
    FakeNvml([device]).install(monkeypatch)
    sink = ListSink()
    sampler = make_sampler(sink, pids=[os.getpid()])
    sampler.sample_once(1)
    sampler.sample_once(2)
    for t in (1, 2):
        assert sink.get(t, "proc_gpu_util_pct", 0, os.getpid()) == [None]
        assert sink.get(t, "proc_gpu_mem_used_bytes", 0, os.getpid()) == [float(1 << 30)]
    assert [key for key, _, _ in sink.notes] == [
        "nvml_nvmlDeviceGetProcessUtilization_NVMLError_NotSupported"
    ]


def test_default_pids_are_this_process_and_its_real_children(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE
    )
    try:
        device = FakeDevice(processes=[(os.getpid(), 1 << 20), (child.pid, 2 << 20), (1, 3 << 20)])
        FakeNvml([device]).install(monkeypatch)
        sink = ListSink()
        make_sampler(sink).sample_once(1)
        pids = {s.pid for s in sink.samples if s.metric == "proc_gpu_mem_used_bytes"}
        assert pids == {os.getpid(), child.pid}
    finally:
        child.kill()
        child.wait(timeout=10)
        assert child.stdin is not None
        child.stdin.close()


@pytest.mark.parametrize(
    "init_error",
    [pynvml.NVMLError_LibraryNotFound(), pynvml.NVMLError_DriverNotLoaded(), None],
    ids=["library_not_found", "driver_not_loaded", "no_devices"],
)
def test_no_nvml_is_noted_once_and_the_sampler_idles(
    monkeypatch: pytest.MonkeyPatch, init_error: pynvml.NVMLError | None
) -> None:
    fake = FakeNvml([], init_error=init_error)
    fake.install(monkeypatch)
    sink = ListSink()
    sampler = make_sampler(sink)
    for t in range(5):
        sampler.sample_once(t)
    sampler.stop()
    assert sink.samples == []
    assert [key for key, _, _ in sink.notes] == ["nvml_unavailable"]
    if init_error is not None:
        assert type(init_error).__name__ in sink.notes[0][1]
    assert fake.count("nvmlInit") == 1  # not retried every tick


def test_real_pynvml_without_a_driver_is_noted_once() -> None:
    """This machine's real nvidia-ml-py and its real failure to load libnvidia-ml.so.1."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML is installed here; the no-driver path needs a machine without it")
    sink = ListSink()
    sampler = NvmlSampler(interval_s=0.01, anchor_unix_ns=time.time_ns())
    sampler.start(sink)
    deadline = time.monotonic() + 10
    while not sink.notes and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # a few more ticks, which must stay silent
    sampler.stop()
    assert sink.samples == []
    assert len(sink.notes) == 1
    key, message, _ = sink.notes[0]
    assert key == "nvml_unavailable" and "NVMLError_LibraryNotFound" in message


def test_thread_initialises_once_and_shuts_down_on_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([FakeDevice(gpu_pct=55)])
    fake.install(monkeypatch)
    sink = ListSink()
    sampler = NvmlSampler(interval_s=0.01, anchor_unix_ns=time.time_ns(), pids=set(), pcie=False)
    sampler.start(sink)
    deadline = time.monotonic() + 10
    while len([s for s in sink.samples if s.metric == "gpu_util_pct"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop()
    sampler.stop()
    assert {s.value for s in sink.samples if s.metric == "gpu_util_pct"} == {55.0}
    assert fake.count("nvmlInit") == 1 and fake.count("nvmlShutdown") == 1
    assert sink.notes == []


@pytest.mark.gpu
def test_real_gpu_metrics_are_sane() -> None:
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pytest.skip("no NVIDIA driver on this machine")
    sink = ListSink()
    sampler = make_sampler(sink)
    sampler.sample_once(1)
    sampler.stop()
    for index in range(count):
        total = sink.get(1, "mem_total_bytes", index)
        used = sink.get(1, "mem_used_bytes", index)
        util = sink.get(1, "gpu_util_pct", index)
        assert total[0] is not None and total[0] > 0
        assert used[0] is not None and 0 <= used[0] <= total[0]
        assert util[0] is None or 0 <= util[0] <= 100


def test_samples_land_in_a_real_run_with_null_for_unsupported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Through the real segment writer and DuckDB reader: None is SQL NULL, the note is in writer.json."""
    from collectors.system.proc_sampler import ProcSampler
    from gpuwatch.records import Run
    from gpuwatch.store.run_reader import RunReader
    from gpuwatch.store.segment_writer import SegmentWriter

    device = FakeDevice(gpu_pct=64, processes=[(os.getpid(), 1 << 30)])
    device.errors["nvmlDeviceGetPowerUsage"] = pynvml.NVMLError_NotSupported()
    FakeNvml([device]).install(monkeypatch)
    anchor = time.time_ns()
    run = Run("", 0, "host", os.getpid(), "pytest", 1, anchor, "test", "watch")
    writer = SegmentWriter(tmp_path / "run", run, background=False)
    proc = ProcSampler(interval_s=1.0, anchor_unix_ns=anchor)
    nvml = NvmlSampler(interval_s=1.0, anchor_unix_ns=anchor, pids=proc.watched_pids, pcie=False)
    for sampler in (proc, nvml):
        sampler.sink = writer
    for _ in range(2):
        t_ns = proc.clock_ns()
        proc.sample_once(t_ns)
        nvml.sample_once(t_ns)
    nvml.stop()
    writer.close()

    reader = RunReader(tmp_path / "run")
    rows = reader.query(
        "SELECT metric, count(*), count(value) FROM samples WHERE metric IN (?, ?, ?, ?) GROUP BY metric ORDER BY metric",
        ["gpu_util_pct", "power_mw", "proc_gpu_mem_used_bytes", "proc_cpu_pct"],
    ).fetchall()
    assert rows == [
        ("gpu_util_pct", 2, 2),
        ("power_mw", 2, 0),  # two rows, both NULL
        ("proc_cpu_pct", 1, 1),
        ("proc_gpu_mem_used_bytes", 2, 2),
    ]
    assert reader.query(
        "SELECT DISTINCT pid FROM samples WHERE metric = 'proc_gpu_mem_used_bytes'"
    ).fetchall() == [(os.getpid(),)]
    (info,) = reader.writers
    assert list(info.notes) == ["nvml_nvmlDeviceGetPowerUsage_NVMLError_NotSupported"]
    assert info.notes["nvml_nvmlDeviceGetPowerUsage_NVMLError_NotSupported"]["count"] == 1
    reader.close()
