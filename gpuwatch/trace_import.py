"""`gpuwatch import`: PyTorch profiler traces into a run directory (one writer folder per rank)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gpuwatch import __version__
from gpuwatch.errors import UsageError
from gpuwatch.records import Run
from gpuwatch.run_dir import RUN_FILE, default_host
from gpuwatch.segment_writer import SegmentWriter


def import_to_run(
    paths: list[str], out: str | os.PathLike[str], *, progress=None, on_skip=None
) -> tuple[str, list]:
    """Import traces under `paths` into the run directory `out`; returns (run_id, per-rank results).

    `progress(result)` is called per imported rank, `on_skip(path, reason)` per file found in a directory
    that is not a trace. Raises UsageError when `out` already holds a run (imports never mix into one).
    """
    from collectors.kineto_import import import_traces

    out_path = Path(out)
    if (out_path / RUN_FILE).exists():
        raise UsageError(f"{out_path} already holds a run; choose a new --out directory")
    if out_path.exists() and not out_path.is_dir():
        raise UsageError(f"--out {out_path} exists and is not a directory")
    results = import_traces(paths, on_skip=on_skip)
    run_id = ""
    for res in results:
        run = Run(
            run_id=run_id,
            rank=res.rank,
            host=default_host(),
            pid=res.pid,
            command=str(res.path),
            world_size=res.world_size,
            started_at_unix_ns=res.anchor_unix_ns,
            tool_version=__version__,
            source="import",
            meta={
                "trace_file": str(res.path),
                "backend": res.backend,
                "devices": res.device_names,
                "events_total": res.events_total,
                "events_skipped": res.skipped,
                "imported_at_unix_ns": time.time_ns(),
            },
        )
        writer = SegmentWriter(out_path, run, background=False)
        run_id = writer.run.run_id
        writer.write_span_columns(res.spans)
        writer.close()
        if progress is not None:
            progress(res)
    return run_id, results
