"""NVML sampler: per-device and per-process GPU utilization, memory, power, clocks and PCIe, via nvidia-ml-py.

Used by the in-process watch and by `gpuwatch attach`; both start it the same way::

    from collectors.system.nvml_sampler import NvmlSampler

    sampler = NvmlSampler(interval_s=1.0, anchor_unix_ns=run.started_at_unix_ns,
                          pids=proc_sampler.watched_pids, rank=rank)   # pids=None: this process and its children
    sampler.start(writer)            # any RecordSink; samples on a daemon thread
    ...
    sampler.stop()                   # also shuts NVML down again

NVML is initialised lazily on the first tick, on the sampler's thread (constructing the sampler costs
nothing and imports nothing). Without NVIDIA's library or driver (`NVMLError_LibraryNotFound`,
`NVMLError_DriverNotLoaded`, any other init error) or without devices, that is recorded once through
`sink.note("nvml_unavailable", ...)` and every later tick does nothing. A query a device does not support
(`NVMLError_NotSupported`, `NVMLError_FunctionNotFound`, `NVMLError_NoPermission`) is noted once per
function and error, never asked again on that device, and its metric is emitted with `value=None` (SQL
NULL: not available, never 0); other NVML errors give None for that tick, noted once, and are retried.

Metrics (`Sample.device_index` is the NVML device index, which is not the CUDA ordinal when
`CUDA_VISIBLE_DEVICES` reorders or hides devices):

| metric | `Sample.pid` | value |
| --- | --- | --- |
| `gpu_util_pct` | 0 | % of the last NVML sample period (1/6 s to 1 s) in which a kernel ran on the device |
| `mem_util_pct` | 0 | % of that period in which device memory was read or written |
| `mem_used_bytes`, `mem_total_bytes` | 0 | device memory in use (all processes) / installed |
| `power_mw` | 0 | board power draw, milliwatts |
| `sm_clock_mhz` | 0 | current SM clock |
| `pcie_tx_bytes_per_s`, `pcie_rx_bytes_per_s` | 0 | PCIe throughput over NVML's 20 ms window (NVML's KB/s x 1024) |
| `proc_gpu_util_pct` | watched pid | mean SM utilization NVML sampled for that process since the last tick |
| `proc_gpu_mem_util_pct` | watched pid | the same for memory read/write utilization |
| `proc_gpu_mem_used_bytes` | watched pid | device memory the process holds (None where NVML cannot say, e.g. WDDM) |

Per-process metrics are emitted only for watched pids that NVML lists on a device (compute processes or
utilization samples). `nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)` returns only samples
newer than the given CPU timestamp (µs), and `NVMLError_NotFound` when there are none: the sampler passes the
newest timestamp it has seen, so every NVML sample is counted once. NVML keeps per-process samples only
while a process runs kernels, so a listed process with no new sample reads 0 (as nvitop shows it). In a
container with its own pid namespace NVML reports host pids, which match no watched pid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from collectors.base import SamplerThread

PidSource = Callable[[], Iterable[int]] | Iterable[int] | None
"""Which processes count as ours: a callable asked each tick, a fixed collection, or None (this process
and its live descendants)."""

_PERMANENT_ERRORS = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission")
"""Errors that will not go away by asking again: the query is skipped on that device from then on."""

_KIB = 1024  # nvmlDeviceGetPcieThroughput reports KB/s


class NvmlSampler(SamplerThread):
    """Samples NVML for every device (or the given ones) and for the watched processes on them.

    Args:
        interval_s: seconds between samples.
        anchor_unix_ns: the run's wall-clock anchor (`Run.started_at_unix_ns`); sample times are relative to it.
        pids: the watched processes (see `PidSource`); `ProcSampler.watched_pids` fits.
        rank: written into every `Sample.rank`.
        devices: NVML device indices to sample; None means all.
        pcie: also sample PCIe throughput (each reading blocks the sampler thread about 20 ms per direction).
    """

    name = "nvml"

    def __init__(
        self,
        interval_s: float,
        anchor_unix_ns: int,
        pids: PidSource = None,
        rank: int = 0,
        *,
        devices: Sequence[int] | None = None,
        pcie: bool = True,
    ) -> None:
        super().__init__(interval_s, anchor_unix_ns, rank)
        self.pids = pids
        self.devices = None if devices is None else tuple(devices)
        self.pcie = pcie
        self._state = "new"  # -> "ready" (NVML initialised, handles known) or "unavailable" (noted, idle)
        self._handles: list[tuple[int, Any]] = []
        self._skip: set[tuple[int, str]] = set()  # (device, function) found permanently unsupported
        self._last_seen_us: dict[int, int] = {}  # per device: newest process-utilization sample timestamp

    # ---- lifecycle -----------------------------------------------------------------------------
    def stop(self) -> None:
        thread = self._thread
        super().stop()
        if self._state != "ready":
            return
        if thread is not None and thread.is_alive():
            return  # still inside an NVML call: shutting down under it could crash the process
        _shutdown()
        self._state, self._handles = "new", []

    def _ensure_nvml(self) -> bool:
        """Initialise NVML once. Returns whether there is anything to sample."""
        if self._state != "new":
            return self._state == "ready"
        try:
            import pynvml
        except ImportError as exc:
            return self._unavailable("nvidia-ml-py is not installed", exc)
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / ..., or a broken pynvml
            return self._unavailable("NVIDIA's NVML library or driver is not available", exc)
        try:
            count = pynvml.nvmlDeviceGetCount()
            wanted = range(count) if self.devices is None else [i for i in self.devices if 0 <= i < count]
            self._handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in wanted]
        except Exception as exc:
            _shutdown()
            return self._unavailable("NVML could not enumerate devices", exc)
        if not self._handles:
            _shutdown()
            return self._unavailable(f"NVML found no devices to sample (count {count}, asked {self.devices})")
        self._state = "ready"
        return True

    def _unavailable(self, why: str, exc: BaseException | None = None) -> bool:
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        self._note_once("nvml_unavailable", f"GPU metrics not recorded, {why}{detail}")
        self._state = "unavailable"
        return False

    # ---- one tick ------------------------------------------------------------------------------
    def sample_once(self, t_ns: int) -> None:
        if not self._ensure_nvml():
            return
        import pynvml

        watched: set[int] | None = None  # asked at most once per tick, and only when a device lists processes
        for index, handle in self._handles:
            util = self._query(index, "nvmlDeviceGetUtilizationRates", handle)
            self._emit("gpu_util_pct", t_ns, index, None if util is None else util.gpu)
            self._emit("mem_util_pct", t_ns, index, None if util is None else util.memory)
            mem = self._query(index, "nvmlDeviceGetMemoryInfo", handle)
            self._emit("mem_used_bytes", t_ns, index, None if mem is None else mem.used)
            self._emit("mem_total_bytes", t_ns, index, None if mem is None else mem.total)
            self._emit("power_mw", t_ns, index, self._query(index, "nvmlDeviceGetPowerUsage", handle))
            clock = self._query(index, "nvmlDeviceGetClockInfo", handle, pynvml.NVML_CLOCK_SM)
            self._emit("sm_clock_mhz", t_ns, index, clock)
            if self.pcie:
                for metric, counter in (
                    ("pcie_tx_bytes_per_s", pynvml.NVML_PCIE_UTIL_TX_BYTES),
                    ("pcie_rx_bytes_per_s", pynvml.NVML_PCIE_UTIL_RX_BYTES),
                ):
                    kib = self._query(index, "nvmlDeviceGetPcieThroughput", handle, counter)
                    self._emit(metric, t_ns, index, None if kib is None else kib * _KIB)

            procs = self._query(index, "nvmlDeviceGetComputeRunningProcesses", handle)
            util_by_pid = self._process_utilization(index, handle)
            listed = {p.pid for p in procs or ()} | set(util_by_pid or ())
            if not listed:
                continue
            if watched is None:
                watched = self._watched_pids()
            mem_by_pid = {p.pid: p.usedGpuMemory for p in procs or ()}
            for pid in sorted(listed & watched):
                sm, mem_util = (None, None) if util_by_pid is None else util_by_pid.get(pid, (0.0, 0.0))
                self._emit("proc_gpu_util_pct", t_ns, index, sm, pid)
                self._emit("proc_gpu_mem_util_pct", t_ns, index, mem_util, pid)
                self._emit("proc_gpu_mem_used_bytes", t_ns, index, mem_by_pid.get(pid), pid)

    def _process_utilization(self, index: int, handle: Any) -> dict[int, tuple[float, float]] | None:
        """Mean (smUtil, memUtil) per pid over the NVML samples newer than the last tick's; None if unsupported."""
        last_us = self._last_seen_us.get(index)
        if last_us is None:  # first tick: only what NVML sampled during the last interval
            last_us = time.time_ns() // 1000 - int(self.interval_s * 1e6)
        samples = self._query(
            index, "nvmlDeviceGetProcessUtilization", handle, last_us, empty_if_not_found=True
        )
        if samples is None:
            return None
        sums: dict[int, list[float]] = {}
        newest_us = last_us
        for s in samples:
            if s.timeStamp <= last_us:  # NVML filters these already; never count a sample twice
                continue
            newest_us = max(newest_us, s.timeStamp)
            acc = sums.setdefault(s.pid, [0.0, 0.0, 0.0])
            acc[0] += s.smUtil
            acc[1] += s.memUtil
            acc[2] += 1
        self._last_seen_us[index] = newest_us
        return {pid: (sm / n, mem / n) for pid, (sm, mem, n) in sums.items()}

    def _watched_pids(self) -> set[int]:
        try:
            if self.pids is None:
                from collectors.system.proc_sampler import process_tree_pids

                return process_tree_pids(os.getpid())
            return set(self.pids() if callable(self.pids) else self.pids)
        except Exception as exc:  # a failing pid source must not cost the device metrics
            self._note_once("nvml_pids_error", f"could not tell which processes are watched: {exc!r}")
            return set()

    # ---- the NVML boundary ---------------------------------------------------------------------
    def _query(self, index: int, func: str, *args: Any, empty_if_not_found: bool = False) -> Any:
        """Call `pynvml.<func>(*args)` for device `index`.

        Args:
            index: the device the call is about (unsupported calls are remembered per device).
            func: a pynvml function name, looked up at call time.
            empty_if_not_found: `NVMLError_NotFound` means "nothing new" (process utilization): return [].

        Returns:
            The function's result, or None when it is not available (noted once per function and error).
        """
        import pynvml

        if (index, func) in self._skip:
            return None
        try:
            fn = getattr(pynvml, func)
        except AttributeError:  # an nvidia-ml-py too old for this call
            self._skip.add((index, func))
            self._note_once(
                f"nvml_{func}_missing", f"nvidia-ml-py has no {func}; its metrics are not recorded"
            )
            return None
        try:
            return fn(*args)
        except pynvml.NVMLError as exc:
            kind = type(exc).__name__
            if empty_if_not_found and isinstance(exc, pynvml.NVMLError_NotFound):
                return []
            if kind in _PERMANENT_ERRORS:
                self._skip.add((index, func))
            self._note_once(
                f"nvml_{func}_{kind}",
                f"{func} failed on GPU {index} ({kind}: {exc}); its metrics are recorded as not available",
                device_index=index,
            )
            return None

    def _emit(self, metric: str, t_ns: int, device: int, value: float | None, pid: int = 0) -> None:
        self.emit_sample(metric, t_ns, value, device_index=device, pid=pid)


def _shutdown() -> None:
    """Release our reference on NVML (pynvml counts nvmlInit/nvmlShutdown pairs)."""
    try:
        import pynvml

        pynvml.nvmlShutdown()
    except Exception:  # NVML is going away anyway; nothing the user needs to hear
        pass
