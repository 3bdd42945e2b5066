"""Prometheus exporter: a run's budget as `/metrics`, for `gpuwatch export prometheus` and
`gpuwatch.watch(..., metrics_port=P)`.

An exporter is a view like the terminal table: on each scrape (at most every `min_interval_s`) it reads
the run's typed `Summary` (`load_summary`, the same analysis `gpuwatch summary --json` runs) and the
writers' drop counts, and turns them into these families (labels `rank`, and `category` for the ratio):

| metric | type | value |
| --- | --- | --- |
| `gpuwatch_budget_ratio{rank,category}` | gauge | share of the window's step wall time in the category (0-1) |
| `gpuwatch_step_time_seconds{rank}` | gauge | mean wall time of the window's steps |
| `gpuwatch_steps_total{rank}` | counter | steps the rank has finished (warm-up steps included) |
| `gpuwatch_records_dropped_total{rank}` | counter | spans and samples the rank's writer dropped (queue full) |

The window is the last `window_steps` steps of each rank the summary counts (`per_step` of `summary
--json`: `window_values` is the one formula both sides use). The server listens on 127.0.0.1 unless told
otherwise: the run's names (kernels, files) are data a network should not see by default.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuwatch.attribution.summary import CATEGORY_NAMES, RankSummary, Summary

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
"""Prometheus's registered default port for exporters of this kind (as OpenTelemetry's exporter uses)."""
DEFAULT_WINDOW_STEPS = 20
MIN_INTERVAL_S = 5.0
"""A scrape reuses the previous analysis when it is younger than this: Prometheus may scrape every second,
an analysis of a long run costs more."""


@dataclass(frozen=True, slots=True)
class WindowValues:
    """One rank's figures over its window of steps (what the metrics carry)."""

    rank: int
    steps_total: int
    window_steps: int
    step_time_s: float
    budget_ratio: dict[str, float]
    """Category -> share of the window's step wall time, 0-1."""


def window_values(r: RankSummary, window_steps: int) -> WindowValues:
    """The metrics of one rank of a Summary over its last `window_steps` steps (its whole-run figures when the
    summary has no per-step data)."""
    warm = r.warmup.steps if r.warmup is not None and not r.warmup.included else 0
    ps = r.per_step
    if ps is None or not ps.wall_ms:
        wall = r.step_time_ms.mean
        return WindowValues(
            r.rank,
            r.steps + warm,
            r.steps,
            wall / 1000.0,
            {c: r.budget_pct.get(c) / 100.0 for c in CATEGORY_NAMES},
        )
    n = min(max(window_steps, 1), len(ps.wall_ms))
    walls = ps.wall_ms[-n:]
    total = sum(walls)
    ratio = {c: (sum(ps.category(c)[-n:]) / total if total > 0 else 0.0) for c in CATEGORY_NAMES}
    return WindowValues(r.rank, r.steps + warm, n, total / n / 1000.0, ratio)


class RunCollector:
    """A prometheus_client collector over one run directory (or one rank of it).

    Args:
        run_dir: the run (read while it is written).
        window_steps: how many recent steps of each rank the ratios and step time cover.
        ranks: only these ranks (None: all).
        min_interval_s: reuse an analysis younger than this.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        window_steps: int = DEFAULT_WINDOW_STEPS,
        ranks: list[int] | None = None,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.window_steps = window_steps
        self.ranks = ranks
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[WindowValues], dict[int, int]] | None = None

    def values(self) -> tuple[list[WindowValues], dict[int, int]]:
        """Per rank window values and dropped-record counts (the analysis is reused for `min_interval_s`)."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.min_interval_s:
                return self._cached[1], self._cached[2]
            summary = self._summary()
            values = [] if summary is None else [window_values(r, self.window_steps) for r in summary.ranks]
            dropped = self._dropped()
            self._cached = (now, values, dropped)
            return values, dropped

    def _summary(self) -> Summary | None:
        from gpuwatch.attribution.summary import load_summary
        from gpuwatch.errors import GpuwatchError

        try:
            return load_summary(self.run_dir, ranks=self.ranks)
        except GpuwatchError:  # nothing recorded yet: an empty scrape, not an error page
            return None

    def _dropped(self) -> dict[int, int]:
        from gpuwatch.errors import GpuwatchError
        from gpuwatch.store.run_dir import list_writer_dirs
        from gpuwatch.store.run_reader import read_writer

        out: dict[int, int] = {}
        try:
            for folder in list_writer_dirs(self.run_dir):
                w = read_writer(folder)
                if self.ranks is None or w.run.rank in self.ranks:
                    out[w.run.rank] = out.get(w.run.rank, 0) + w.dropped_spans + w.dropped_samples
        except (GpuwatchError, OSError):
            pass
        return out

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        values, dropped = self.values()
        ratio = GaugeMetricFamily(
            "gpuwatch_budget_ratio",
            "Share of step wall time in each budget category over the last steps (0-1)",
            labels=["rank", "category"],
        )
        step = GaugeMetricFamily(
            "gpuwatch_step_time_seconds", "Mean step wall time over the last steps", labels=["rank"]
        )
        steps = CounterMetricFamily("gpuwatch_steps", "Steps finished", labels=["rank"])
        drops = CounterMetricFamily(
            "gpuwatch_records_dropped", "Spans and samples dropped by the rank's writer", labels=["rank"]
        )
        for v in values:
            rank = str(v.rank)
            for c in CATEGORY_NAMES:
                ratio.add_metric([rank, c], v.budget_ratio[c])
            step.add_metric([rank], v.step_time_s)
            steps.add_metric([rank], v.steps_total)
        for r, n in sorted(dropped.items()):
            drops.add_metric([str(r)], n)
        yield from (ratio, step, steps, drops)


class MetricsServer:
    """A running `/metrics` endpoint; `close()` stops it. `port` is the one bound (useful with port 0)."""

    def __init__(self, httpd: Any, thread: threading.Thread, collector: RunCollector) -> None:
        self._httpd = httpd
        self._thread = thread
        self.collector = collector
        self.host: str = str(httpd.server_address[0])
        self.port: int = int(httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve(
    run_dir: str | os.PathLike[str],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    window_steps: int = DEFAULT_WINDOW_STEPS,
    ranks: list[int] | None = None,
    min_interval_s: float = MIN_INTERVAL_S,
) -> MetricsServer:
    """Serve `/metrics` for a run in a daemon thread. Raises OSError when the address cannot be bound."""
    from prometheus_client import CollectorRegistry, start_http_server

    collector = RunCollector(run_dir, window_steps=window_steps, ranks=ranks, min_interval_s=min_interval_s)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd, thread, collector)
