"""`gpuwatch import`: PyTorch profiler traces into a run directory (one writer folder per rank)."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

from gpuwatch.capture.import_writer import (
    SPLIT_WRITER_MAX_SPANS,
    SplitWriter,
    child_succeeded,
    end_child,
    fork_writer,
)
from gpuwatch.capture.trace_preload import TracePreload
from gpuwatch.errors import UsageError
from gpuwatch.store.run_dir import RUN_FILE, run_for_process
from gpuwatch.store.segment_writer import SegmentWriter


def import_to_run(
    paths: list[str],
    out: str | os.PathLike[str],
    *,
    progress=None,
    on_skip=None,
    preload: TracePreload | None = None,
) -> tuple[str, list]:
    """Import traces under `paths` into the run directory `out`; returns (run_id, per-rank results).

    `progress(result)` is called per imported rank, `on_skip(path, reason)` per file found in a directory
    that is not a trace. `preload`: a `TracePreload.start(paths)` the caller began before importing this
    module (`gpuwatch import` does), else one starts here. Raises UsageError when `out` already holds a run
    (imports never mix into one).
    """
    out_path = Path(out)
    if (out_path / RUN_FILE).exists():
        raise UsageError(f"{out_path} already holds a run; choose a new --out directory")
    if out_path.exists() and not out_path.is_dir():
        raise UsageError(f"--out {out_path} exists and is not a directory")
    if preload is None:
        preload = TracePreload.start(paths)  # the file inflates on a thread while numpy and msgspec load
    split_writer = SplitWriter()  # a single large trace's split child stays on as the writer
    try:
        from collectors.kineto.kineto_import import import_traces

        results = import_traces(
            paths, on_skip=on_skip, split=True, preloaded=preload.result(), after_split=split_writer
        )
        writers = _writers_for(out_path, results)
    except BaseException:
        split_writer.cancel()
        raise
    run_id = writers[0].run.run_id

    # Segments are written by a child process while this one analyses the same columns, still in memory,
    # and keeps the summary next to the run: the first `gpuwatch summary` then reads nothing back. A child,
    # not a thread: importing DuckDB (0.1 s) and its COPY hold the GIL for most of their 0.3 s (216k-event
    # trace, 4 alternated runs: 1.25-1.38 s with the thread, 1.16-1.28 s with a child). Where fork is not
    # available or threads are running, a thread does it, as before.
    failure: list[BaseException] = []

    def write_all() -> None:
        try:
            for writer, res in zip(writers, results):
                writer.write_span_columns(res.spans)
                writer.close()
        except BaseException as exc:  # re-raised on the caller's thread
            failure.append(exc)

    child = thread = None
    by_split = sum(len(res.spans) for res in results) <= SPLIT_WRITER_MAX_SPANS and split_writer.send(
        writers, [res.spans for res in results]
    )
    if not by_split:
        split_writer.cancel()
        child = fork_writer(write_all, failure)
        if child is None:
            thread = threading.Thread(target=write_all, name="gpuwatch-import-writer")
            thread.start()
    try:
        doc = _summary_in_memory(out_path, run_id, writers, results)
    except BaseException:  # Ctrl-C: no writer child left behind (a thread finishes its write)
        split_writer.cancel()
        if child is not None:
            end_child(child)
        raise
    if thread is not None:
        thread.join()
    elif not (split_writer.finish() if by_split else child is not None and child_succeeded(child)):
        write_all()  # the child failed: write here, where an error reaches the user as it would have
    if failure:
        raise failure[0]
    if progress is not None:
        for res in results:
            progress(res)
    if doc is not None:
        from gpuwatch.store import summary_cache

        summary_cache.store(out_path, doc)
    return run_id, results


def _writers_for(out_path: Path, results: list) -> list[SegmentWriter]:
    """One synchronous writer per imported rank, all in one new run."""
    writers: list[SegmentWriter] = []
    run_id = ""
    for res in results:
        run = run_for_process(
            run_id=run_id,
            source="import",
            rank=res.rank,
            pid=res.pid,
            command=str(res.path),
            world_size=res.world_size,
            started_at_unix_ns=res.anchor_unix_ns,
            meta={
                "trace_file": str(res.path),
                "backend": res.backend,
                "devices": res.device_names,
                "events_total": res.events_total,
                "events_skipped": res.skipped,
                # the trace's format generation: how the TensorBoard plugin's Overview read it
                "event_categories": list(res.event_categories),
                "imported_at_unix_ns": time.time_ns(),
            },
        )
        writers.append(SegmentWriter(out_path, run, background=False))
        run_id = writers[0].run.run_id
    return writers


def _summary_in_memory(out_path: Path, run_id: str, writers: list, results: list) -> dict | None:
    """The run's summary from the columns still in memory (the same document `gpuwatch summary` computes
    from the store: same offsets onto the common timeline, same span order). Best effort: None on any
    failure, and the summary is then computed from the store when asked for."""
    try:
        return summary_of_import(out_path, run_id, writers, results)
    except Exception:  # noqa: BLE001 - the import itself succeeds either way
        return None


def summary_of_import(out_path: Path, run_id: str, writers: list, results: list) -> dict:
    """`_summary_in_memory` without the safety net (the importer fuzz tests call it: whatever a trace
    holds, the analysis of what was imported must not fail). `writers` need `.folder` and `.run`."""

    from gpuwatch.attribution.analysis import analyze_columns
    from gpuwatch.attribution.summary import summarize
    from gpuwatch.store.run_reader import WriterInfo

    anchor = min(res.anchor_unix_ns for res in results)
    infos = [
        WriterInfo(
            folder=w.folder,
            run=w.run,
            status="ended",
            offset_ns=w.run.started_at_unix_ns - anchor,
            dropped_spans=0,
            dropped_samples=0,
            updated_at_unix_ns=0,
        )
        for w in writers
    ]
    rank_cols = {}
    for res in results:
        offset = res.anchor_unix_ns - anchor
        cols = res.spans.sorted_as_reader()  # the import sorts them already: no copy
        rank_cols[res.rank] = dataclasses.replace(
            cols, start_ns=cols.start_ns + offset, end_ns=cols.end_ns + offset
        )
    return summarize(analyze_columns(out_path, run_id, infos, rank_cols)).to_json()
