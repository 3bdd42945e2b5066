"""GPU compute for `gpuwatch attach`: NVML utilization of the target's devices as device-busy spans.

Attach sees no kernels, only NVML: over each polling interval, the share of time a kernel of the target ran
(`nvmlDeviceGetProcessUtilization` smUtil for the target's pids; the device's own utilization when the
driver keeps no per-process samples). `place_busy` turns that share into `Span(kind="kernel")` time inside
the interval, so the engine runs in device mode: busy time is compute, idle time goes to what the training
thread was doing (rule 2 of DESIGN.md). Where inside the interval the device was busy NVML does not say; the
busy time is laid over the training thread's samples in the order the device is most likely busy during
them: waiting on the device (sync) first, then launching forward/backward/optimizer work, other host work,
copies, preprocessing, data loading, checkpointing. Totals per interval are NVML's; placement is an estimate
(the spans say so). Limitation: a collective spinning while it waits for a late rank shows as busy in NVML
and lands in compute here (only the in-process and trace paths see kernels and can call it sync).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from collectors.base import SamplerThread
from gpuwatch.records import Category, Span, SpanKind

BUSY_NAME = "GPU busy (NVML utilization; placement within each interval estimated)"
PLACEMENT_ORDER: tuple[str | None, ...] = (
    Category.SYNC.value,
    Category.COMPUTE.value,
    Category.HOST_OVERHEAD.value,
    None,
    Category.MEMCPY.value,
    Category.CPU_PREPROCESSING.value,
    Category.DATA_LOADING.value,
    Category.CHECKPOINT_IO.value,
)
"""Training-thread categories in the order device-busy time is laid over them (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class BusyInterval:
    """Over [start_ns, end_ns) device `device_index` ran the target's kernels `busy_pct` percent of the time."""

    device_index: int
    start_ns: int
    end_ns: int
    busy_pct: float
    source: str
    """"process" (per-process smUtil) or "device" (whole-device utilization)."""


def place_busy(
    busy: Iterable[BusyInterval], host: list[tuple[int, int, str | None]], *, rank: int, pid: int
) -> list[Span]:
    """Device-busy spans for each NVML interval, laid over the training thread's samples.

    Args:
        busy: NVML intervals (ns on the writer's timeline).
        host: the training thread's (start_ns, end_ns, category) spans, sorted, not overlapping.
        rank, pid: written into the spans.
    Returns:
        `Span(kind="kernel", stream=0)` spans whose total inside each interval is busy_pct of its length.
    """
    out: list[Span] = []
    order = {cat: i for i, cat in enumerate(PLACEMENT_ORDER)}
    for b in busy:
        length = b.end_ns - b.start_ns
        want = int(round(length * max(0.0, min(100.0, b.busy_pct)) / 100.0))
        if want <= 0 or length <= 0:
            continue
        pieces: list[tuple[int, int, int]] = []  # (priority, start, end) of host time inside the interval
        covered = 0
        for s, e, cat in host:
            if e <= b.start_ns or s >= b.end_ns:
                continue
            s2, e2 = max(s, b.start_ns), min(e, b.end_ns)
            pieces.append((order.get(cat, len(order)), s2, e2))
            covered += e2 - s2
        gaps = _gaps([(p[1], p[2]) for p in sorted(pieces, key=lambda p: p[1])], b.start_ns, b.end_ns)
        pieces += [(len(order) + 1, s, e) for s, e in gaps]  # unsampled time last
        pieces.sort(key=lambda p: (p[0], p[1]))
        for _, s, e in pieces:
            if want <= 0:
                break
            take = min(want, e - s)
            out.append(
                Span(
                    rank=rank,
                    kind=SpanKind.KERNEL.value,
                    name=BUSY_NAME,
                    start_ns=s,
                    end_ns=s + take,
                    category=Category.COMPUTE.value,
                    pid=pid,
                    stream=0,
                    device_index=b.device_index,
                    attrs={"busy_pct": round(b.busy_pct, 1), "source": b.source},
                )
            )
            want -= take
    out.sort(key=lambda sp: sp.start_ns)
    return out


def _gaps(spans: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    out = []
    at = lo
    for s, e in spans:
        if s > at:
            out.append((at, s))
        at = max(at, e)
    if at < hi:
        out.append((at, hi))
    return out


class NvmlBusySampler(SamplerThread):
    """Polls NVML for the utilization the target's pids get on each device; keeps `BusyInterval`s.

    Args:
        interval_s: polling interval (NVML's own averaging window is 1/6 s to 1 s).
        anchor_unix_ns: the writer's anchor.
        pids: the target's pids now (callable: DataLoader workers come and go).
        rank: kept for symmetry with the other samplers (the `proc_gpu_util_pct` samples themselves come
            from `collectors.system.nvml_sampler`, which attach also runs).
        nvml: the NVML module (`pynvml` from nvidia-ml-py) or None to import it.

    Without NVIDIA's driver library it notes that once and `available` stays False: the run is CPU mode.
    """

    name = "nvml_busy"

    def __init__(
        self,
        interval_s: float,
        anchor_unix_ns: int,
        pids: Callable[[], Iterable[int]],
        rank: int = 0,
        nvml: Any = None,
    ) -> None:
        super().__init__(interval_s, anchor_unix_ns, rank)
        self.pids = pids
        self._nvml = nvml
        self.available = False
        self._handles: list[Any] = []
        self._last_ts_us: dict[int, int] = {}
        self._prev_t_ns: int | None = None
        self._lock = threading.Lock()
        self._busy: list[BusyInterval] = []
        self.devices_used: set[int] = set()

    def start(self, sink: Any) -> None:
        self.sink = sink
        try:
            nv = self._nvml
            if nv is None:
                import pynvml  # nvidia-ml-py

                nv = pynvml
            nv.nvmlInit()
            self._nvml = nv
            self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        except Exception as exc:  # no driver, no library, no device: CPU mode
            sink.note("nvml_unavailable", f"NVML not available ({type(exc).__name__}: {exc}); CPU mode")
            return
        if not self._handles:
            sink.note("nvml_unavailable", "NVML found no GPU; CPU mode")
            return
        self.available = True
        super().start(sink)

    def stop(self) -> None:
        super().stop()
        if self.available:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def take(self, until_ns: int | None = None) -> list[BusyInterval]:
        """Remove and return the intervals that end by `until_ns` (all when None)."""
        with self._lock:
            if until_ns is None:
                out, self._busy = self._busy, []
                return out
            out = [b for b in self._busy if b.end_ns <= until_ns]
            self._busy = [b for b in self._busy if b.end_ns > until_ns]
            return out

    def sample_once(self, t_ns: int) -> None:
        nv = self._nvml
        prev, self._prev_t_ns = self._prev_t_ns, t_ns
        pids = set(self.pids())
        for index, handle in enumerate(self._handles):
            if not self._uses_device(handle, pids):
                continue
            self.devices_used.add(index)
            pct, source = self._process_util(handle, index, pids)
            if pct is None:
                pct, source = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu), "device"
            if prev is not None:
                with self._lock:
                    self._busy.append(BusyInterval(index, prev, t_ns, pct, source))

    def _uses_device(self, handle: Any, pids: set[int]) -> bool:
        nv = self._nvml
        found = False
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                procs = getattr(nv, getter)(handle)
            except Exception:
                continue
            found = found or any(p.pid in pids for p in procs)
        return found

    def _process_util(self, handle: Any, index: int, pids: set[int]) -> tuple[float | None, str]:
        nv = self._nvml
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(handle, self._last_ts_us.get(index, 0))
        except Exception:  # NVML_ERROR_NOT_FOUND when no sample is new, NOT_SUPPORTED on some boards
            return None, "device"
        mine = [s for s in samples if s.pid in pids]
        if samples:
            self._last_ts_us[index] = max(s.timeStamp for s in samples)
        if not mine:
            return None, "device"
        # one sample per pid per NVML window; several pids of one job (workers rarely use the GPU) add up
        latest: dict[int, Any] = {}
        for s in mine:
            if s.pid not in latest or s.timeStamp > latest[s.pid].timeStamp:
                latest[s.pid] = s
        return float(min(100, sum(s.smUtil for s in latest.values()))), "process"
