"""Optional torch.profiler windows inside a watched run (`gpuwatch.watch(..., profile_steps=(a, b))`).

The profiler records steps a..b-1 (CPU activities, plus CUDA on a GPU). At the end of the window the trace is
exported next to the run (`RUN_DIR/profiles/rank0000-steps-a-b.json.gz`, openable in Perfetto) and imported
on a background thread with the same code as `gpuwatch import` (`collectors.kineto.kineto_import`), shifted onto
this writer's timeline, and written as one bulk segment. The profiler's own step markers are dropped: the
watch's `gw.step()` spans already are the steps. Exporting runs on the training thread (torch.profiler
does it there); that time is recorded as a `host_overhead` span named for gpuwatch, not hidden.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from collectors.base import Collector, RecordSink
from collectors.hooks.hook_context import HookContext
from gpuwatch.records import Category, SpanColumns, SpanKind


def parse_profile_steps(value: Any) -> tuple[int, int] | None:
    """`profile_steps` as (first, stop): an int n means steps 1..n (step 0 is warm-up), a pair or range as given.

    Raises ValueError for anything else.
    """
    if value is None or value is False:
        return None
    if isinstance(value, bool):
        raise ValueError("profile_steps must be an int, a (first, stop) pair or a range")
    if isinstance(value, int):
        return (1, 1 + value) if value > 0 else None
    if isinstance(value, range):
        return (value.start, value.stop) if value.stop > value.start else None
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        first, stop = int(value[0]), int(value[1])
        if 0 <= first < stop:
            return first, stop
    raise ValueError(f"profile_steps must be an int, a (first, stop) pair or a range, not {value!r}")


class ProfilerWindow(Collector):
    """Runs torch.profiler over one window of steps and imports the trace into the run.

    Args:
        ctx: the process's hook context.
        window: (first step, stop step) to record.
        out_dir: where the exported trace goes.
        write_columns: writes span columns as one segment (the writer's `write_span_columns`).
    """

    name = "profiler_window"

    def __init__(
        self,
        ctx: HookContext,
        window: tuple[int, int],
        out_dir: Path,
        write_columns: Callable[[SpanColumns], Any],
    ) -> None:
        self.ctx = ctx
        self.first, self.stop_step = window
        self.out_dir = out_dir
        self.write_columns = write_columns
        self._prof: Any = None
        self._done = False
        self._threads: list[threading.Thread] = []
        self.imported_spans = 0

    @property
    def recording(self) -> bool:
        """True while torch.profiler records (the watch observes those steps whole)."""
        return self._prof is not None

    def start(self, sink: RecordSink) -> None:
        if self.first == 0:
            self._begin()

    def on_boundary(self, next_step: int) -> None:
        """At a step boundary, before step `next_step` runs (training thread)."""
        if self._done:
            return
        if self._prof is None and next_step == self.first:
            self._begin()
        elif self._prof is not None and next_step >= self.stop_step:
            self._finish()

    def stop(self) -> None:
        if self._prof is not None:
            self._finish()
        for thread in self._threads:
            thread.join(timeout=120.0)

    def _begin(self) -> None:
        try:
            torch = sys.modules.get("torch")
            if torch is None:
                raise RuntimeError("torch is not imported")
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(ProfilerActivity.CUDA)
            prof = profile(activities=activities)
            prof.__enter__()
            self._prof = prof
        except Exception as exc:
            self._done = True
            self.ctx.hook_error("profiler_window", exc)

    def _finish(self) -> None:
        prof, self._prof = self._prof, None
        self._done = True
        ctx = self.ctx
        t0 = ctx.begin("gpuwatch.profiler_export")
        try:
            prof.__exit__(None, None, None)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"rank{ctx.rank:04d}-steps-{self.first}-{self.stop_step}.json.gz"
            prof.export_chrome_trace(str(path))
        except Exception as exc:
            ctx.hook_error("profiler_window", exc)
            ctx.abandon("gpuwatch.profiler_export")
            return
        ctx.end(
            t0,
            SpanKind.PHASE.value,
            "gpuwatch: torch.profiler stop and export",
            Category.HOST_OVERHEAD.value,
            key="gpuwatch.profiler_export",
        )
        thread = threading.Thread(
            target=self._import, args=(path,), name="gpuwatch-profile-import", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _import(self, path: Path) -> None:
        try:
            from collectors.kineto.kineto_import import import_trace

            trace = import_trace(path, default_rank=self.ctx.rank)
            cols = shift_columns(trace.spans, trace.anchor_unix_ns - self.ctx.anchor_unix_ns, self.ctx.rank)
            if len(cols):
                self.write_columns(cols)
            self.imported_spans = len(cols)
            self.ctx.note_once(
                "profiler_window",
                f"torch.profiler window steps {self.first}-{self.stop_step - 1}: {len(cols)} events imported "
                f"from {path}",
            )
        except Exception as exc:
            self.ctx.hook_error("profiler_window_import", exc)


def shift_columns(cols: SpanColumns, shift_ns: int, rank: int) -> SpanColumns:
    """Imported spans on the writer's timeline, without the profiler's step markers."""
    kept = cols.take(cols.kind != SpanKind.STEP.value)
    return dataclasses.replace(
        kept,
        start_ns=kept.start_ns + np.int64(shift_ns),
        end_ns=kept.end_ns + np.int64(shift_ns),
        rank=np.full(len(kept), rank, dtype=np.int32),
    )
