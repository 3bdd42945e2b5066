"""The one small interface every collector implements, and the sink it emits records into.

A collector turns one source (torch hooks, NVML, /proc, py-spy, a trace file) into `Span`/`Sample` records.
It knows the records, never the store or a view: it writes into a `RecordSink` (the run's segment writer
satisfies it). Collectors must never hurt the training job: `start`/`stop` and everything they run catch
their own errors and report them once through `sink.note(...)`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from gpuwatch.records import Sample, Span


class RecordSink(Protocol):
    """Where collectors put records. Implementations never block (they drop and count when full)."""

    def emit_span(self, span: Span) -> None: ...

    def emit_sample(self, sample: Sample) -> None: ...

    def note(self, key: str, message: str, **fields: Any) -> None:
        """Record a fact once per key (later calls count): hook errors, missing libraries."""
        ...


class Collector(ABC):
    """A source of records with a start/stop lifecycle.

    Subclasses set `name` and implement `start`/`stop`. Both must be idempotent and must not raise:
    a collector that cannot work notes why (`sink.note`) and degrades to "not available".
    """

    name: str = "collector"

    @abstractmethod
    def start(self, sink: RecordSink) -> None:
        """Begin emitting records into `sink`.

        Args:
            sink: where records go; kept until `stop`.
        """

    @abstractmethod
    def stop(self) -> None:
        """Stop emitting; emit anything still pending first. Safe to call twice or before start."""


class SamplerThread(Collector):
    """A collector that samples on a daemon thread paced with `time.monotonic` (no drift, never blocks).

    Subclasses implement `sample_once(t_ns)` and emit with `emit_sample`; an exception there is noted once
    and sampling goes on. `clock_ns` converts to the writer's timeline (ns since its anchor); the default
    is `time.time_ns` minus `anchor_unix_ns`.
    """

    def __init__(self, interval_s: float, anchor_unix_ns: int, rank: int = 0) -> None:
        self.interval_s = interval_s
        self.anchor_unix_ns = anchor_unix_ns
        self.rank = rank
        """Written into every `Sample.rank` this sampler emits."""
        self.sink: RecordSink | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._noted: set[str] = set()

    def clock_ns(self) -> int:
        return time.time_ns() - self.anchor_unix_ns

    def start(self, sink: RecordSink) -> None:
        if self._thread is not None:
            return
        self.sink = sink
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"gpuwatch-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(2.0, 3 * self.interval_s))

    def _loop(self) -> None:
        run_paced(self._stop, self.interval_s, lambda: self.sample_once(self.clock_ns()), self._sample_failed)

    def _sample_failed(self, exc: Exception) -> None:
        # never let a sampler die silently or take the job down
        if self.sink is not None:
            self.sink.note(f"{self.name}_error", f"{self.name} sampler failed: {exc!r}")

    def _note_once(self, key: str, message: str, **fields: Any) -> None:
        """`sink.note` the first time `key` comes up (later ones are not even counted)."""
        if key in self._noted or self.sink is None:
            return
        self._noted.add(key)
        self.sink.note(key, message, **fields)

    def emit_sample(
        self, metric: str, t_ns: int, value: float | None, *, device_index: int = -1, pid: int = 0
    ) -> None:
        """Emit one `Sample` of this sampler's rank into the sink (nothing before `start`).

        Args:
            metric: the metric name, its unit in the name (`gpu_util_pct`, `rss_bytes`).
            t_ns: ns on the writer's timeline.
            value: any number, stored as float; None = not available (SQL NULL, never 0).
            device_index: the device it is about, -1 for host metrics.
            pid: the process (or thread) it is about, 0 for device-wide metrics.
        """
        if self.sink is None:
            return
        self.sink.emit_sample(
            Sample(
                rank=self.rank,
                metric=metric,
                t_ns=t_ns,
                value=None if value is None else float(value),
                device_index=device_index,
                pid=pid,
            )
        )

    @abstractmethod
    def sample_once(self, t_ns: int) -> None:
        """Take one sample at `t_ns` (ns on the writer's timeline) and emit it into `self.sink`."""


def run_paced(
    stop: threading.Event, interval_s: float, tick: Callable[[], None], on_error: Callable[[Exception], None]
) -> None:
    """Call `tick()` every `interval_s` seconds until `stop` is set, paced with `time.monotonic` (no drift).

    An exception in `tick` goes to `on_error` and ticking goes on.
    """
    next_t = time.monotonic()
    while not stop.is_set():
        try:
            tick()
        except Exception as exc:
            on_error(exc)
        next_t += interval_s
        delay = next_t - time.monotonic()
        if delay < 0:  # fell behind (suspended, overloaded): skip missed ticks instead of bursting
            next_t = time.monotonic()
            delay = 0.0
        stop.wait(delay)
