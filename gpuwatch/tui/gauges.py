"""The dashboard's gauges: the last samples of the NVML and /proc metrics of every rank, as table rows."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

DEVICE_METRICS = ("gpu_util_pct", "mem_used_bytes", "mem_total_bytes", "power_mw")
PROC_METRICS = (
    "proc_cpu_pct",
    "rss_bytes",
    "child_count",
    "children_cpu_pct",
    "children_rss_bytes",
    "io_read_bytes_total",
    "io_write_bytes_total",
)
HISTORY = 60
"""Samples kept per series (the device panel's sparklines)."""


@dataclass(frozen=True, slots=True)
class GpuRow:
    """One GPU's latest NVML gauges (None: not available)."""

    rank: int
    device_index: int
    util_pct: float | None
    mem_used_bytes: float | None
    mem_total_bytes: float | None
    power_mw: float | None
    util_history: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class ProcRow:
    """The /proc view of one rank's process tree (the trainer and its DataLoader workers)."""

    rank: int
    pid: int
    cpu_pct: float | None
    rss_bytes: float | None
    children: float | None
    """Live descendant processes (DataLoader workers)."""
    children_cpu_pct: float | None
    children_rss_bytes: float | None
    read_bytes_per_s: float | None
    write_bytes_per_s: float | None
    cpu_history: tuple[float, ...]


class Gauges:
    """The last `HISTORY` samples of each (rank, metric, device, pid) series, fed by the follower's polls."""

    def __init__(self) -> None:
        self._series: dict[tuple[int, str, int, int], deque[tuple[int, float]]] = {}

    def shift(self, delta_ns: int) -> None:
        """The run's timeline moved back by `delta_ns` (a writer with an earlier anchor joined)."""
        for series in self._series.values():
            for i, (t, v) in enumerate(series):
                series[i] = (t + delta_ns, v)

    def add(self, samples: dict[str, np.ndarray]) -> None:
        if not samples or not len(samples.get("t_ns", ())):
            return
        order = np.argsort(samples["t_ns"], kind="stable")
        rows = zip(
            samples["rank"][order].tolist(),
            samples["metric"][order].tolist(),
            samples["device_index"][order].tolist(),
            samples["pid"][order].tolist(),
            samples["t_ns"][order].tolist(),
            samples["value"][order].tolist(),
            strict=True,
        )
        for rank, metric, device, pid, t, value in rows:
            key = (rank, metric, device, pid)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = deque(maxlen=HISTORY)
            series.append((t, value))

    def _last(self, rank: int, metric: str, device: int, pid: int) -> float | None:
        series = self._series.get((rank, metric, device, pid))
        if not series:
            return None
        value = series[-1][1]
        return None if value != value else value  # NaN: not available

    def gpu_rows(self) -> tuple[GpuRow, ...]:
        rows = []
        for rank, metric, device, pid in sorted(self._series):
            if metric != "gpu_util_pct" or pid != 0:
                continue
            history = tuple(v for _, v in self._series[(rank, metric, device, pid)] if v == v)
            rows.append(
                GpuRow(
                    rank=rank,
                    device_index=device,
                    util_pct=self._last(rank, "gpu_util_pct", device, 0),
                    mem_used_bytes=self._last(rank, "mem_used_bytes", device, 0),
                    mem_total_bytes=self._last(rank, "mem_total_bytes", device, 0),
                    power_mw=self._last(rank, "power_mw", device, 0),
                    util_history=history,
                )
            )
        return tuple(rows)

    def proc_rows(self) -> tuple[ProcRow, ...]:
        rows = []
        for rank, metric, device, pid in sorted(self._series):
            if metric != "proc_cpu_pct" and not (
                metric == "rss_bytes" and (rank, "proc_cpu_pct", -1, pid) not in self._series
            ):
                continue
            series = self._series.get((rank, "proc_cpu_pct", device, pid), ())
            rows.append(
                ProcRow(
                    rank=rank,
                    pid=pid,
                    cpu_pct=self._last(rank, "proc_cpu_pct", -1, pid),
                    rss_bytes=self._last(rank, "rss_bytes", -1, pid),
                    children=self._last(rank, "child_count", -1, pid),
                    children_cpu_pct=self._last(rank, "children_cpu_pct", -1, pid),
                    children_rss_bytes=self._last(rank, "children_rss_bytes", -1, pid),
                    read_bytes_per_s=self._rate(rank, "io_read_bytes_total", pid),
                    write_bytes_per_s=self._rate(rank, "io_write_bytes_total", pid),
                    cpu_history=tuple(v for _, v in series if v == v),
                )
            )
        return tuple(rows)

    def _rate(self, rank: int, metric: str, pid: int) -> float | None:
        series = self._series.get((rank, metric, -1, pid))
        if not series or len(series) < 2:
            return None
        (t1, v1), (t2, v2) = series[-2], series[-1]
        if t2 <= t1 or v1 != v1 or v2 != v2:
            return None
        return (v2 - v1) / ((t2 - t1) / 1e9)
