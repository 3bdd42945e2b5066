"""One writer per process: records in, immutable segment files out, never blocking the producer.

Producers (hooks on the training thread, sampler threads) call `emit_span`/`emit_sample`: an append to a
bounded deque, or a counted drop when it is full. A daemon thread paced with `time.monotonic` drains the
deque every `flush_interval_s` into a new JSON-lines segment (temp file, then atomic rename), compacts small
segments into larger ones, and rewrites `writer.json` with drop counts and notes. A SIGKILL loses at most
the last flush interval. Bulk producers call `write_span_columns`, which writes one Parquet segment.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from gpuwatch.records import (
    NULL_INT,
    NULLABLE_INT_COLUMNS,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    SPAN_COLUMNS,
    Run,
    Sample,
    Span,
    SpanColumns,
)
from gpuwatch.store.run_dir import (
    WRITER_FILE,
    claim_writer_dir,
    ensure_run_dir,
    list_segments,
    run_to_json,
    segment_name,
    write_json_atomic,
)
from gpuwatch.store.run_files import write_bytes_atomic

_SPAN_FIELDS = tuple(name for name, _ in SPAN_COLUMNS)
_SAMPLE_FIELDS = tuple(name for name, _ in SAMPLE_COLUMNS)
COMPACT_EVERY = 64
"""Merge this many small segments of a table into one, so hour-long runs stay a few hundred files."""
WRITER_FILE_REFRESH_S = 10.0
"""writer.json is rewritten at least this often (its `updated_at_unix_ns` moves) even when nothing it says
changed; otherwise only when something did. Rewriting it with every 1 s flush was a third of the writer
thread's time in a watched loop (0.5-0.7 ms a flush on this VM's ext4: a file made, written and renamed)."""
RETIRE_AFTER_S = 60.0
"""The small segments a compaction replaced are deleted this long after it, not at once: a reader that
listed them just before still finds them (with 8 writers compacting, a long query over every segment
would otherwise keep missing a file deleted under it, and retry forever)."""


class SegmentWriter:
    """Writes one process's records into its own folder of a run directory.

    Args:
        run_dir: the run directory (created if missing; joined if another rank created it).
        run: this process's `Run` record (its `run_id` is replaced by the directory's).
        flush_interval_s: how often the background thread writes a segment.
        max_queue: records held in memory before new ones are dropped and counted.
        background: False for tools that write synchronously (import); no thread is started.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        run: Run,
        *,
        flush_interval_s: float = 1.0,
        max_queue: int = 200_000,
        background: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        run_id = ensure_run_dir(self.run_dir, run.run_id or None)
        self.run = Run(**{**run_to_json(run), "run_id": run_id})
        self.folder = claim_writer_dir(self.run_dir, run.rank, run.pid)
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self._spans: collections.deque[Span] = collections.deque()
        self._samples: collections.deque[Sample] = collections.deque()
        self.dropped_spans = 0
        self.dropped_samples = 0
        self._notes: dict[str, dict[str, Any]] = {}
        self._meta_extra: dict[str, Any] = {}
        self._facts_changed = 0  # counts note() and set_meta() calls: writer.json is stale when it moves
        self._writer_file_state: tuple[Any, ...] | None = None  # what the last writer.json said, and when
        self._seq = 0
        self._compact_after = 0  # after a failed compaction, the next try waits for more segments
        self._small_segments: collections.Counter[str] = collections.Counter()  # per table, not yet merged
        self._retired: list[tuple[float, list[Path]]] = []  # (when, small segments a compaction replaced)
        self.retire_after_s = RETIRE_AFTER_S
        self._lock = threading.Lock()  # one flush at a time (background thread vs close())
        self._stop = threading.Event()
        self._status = "running"
        self._encoder = msgspec.json.Encoder()
        self._write_writer_file()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="gpuwatch-writer", daemon=True)
            self._thread.start()

    # ---- handing a synchronous writer to another process (`gpuwatch import`'s writer child) ----------
    def __getstate__(self) -> dict[str, Any]:
        if self._thread is not None:
            raise TypeError("a SegmentWriter with a background thread cannot be pickled")
        state = dict(self.__dict__)
        for key in ("_lock", "_stop", "_encoder", "_thread"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._encoder = msgspec.json.Encoder()
        self._thread = None

    # ---- producers (any thread; never block) -------------------------------------------------
    def emit_span(self, span: Span) -> None:
        if len(self._spans) >= self.max_queue:
            self.dropped_spans += 1
            return
        self._spans.append(span)

    def emit_sample(self, sample: Sample) -> None:
        if len(self._samples) >= self.max_queue:
            self.dropped_samples += 1
            return
        self._samples.append(sample)

    def note(self, key: str, message: str, **fields: Any) -> None:
        """Record a fact once per key (a hook error, a missing library); later calls only count."""
        self._facts_changed += 1
        entry = self._notes.get(key)
        if entry is None:
            self._notes[key] = {"message": message, "count": 1, "t_unix_ns": time.time_ns(), **fields}
        else:
            entry["count"] += 1

    def set_meta(self, **fields: Any) -> None:
        """Add facts to this writer's `Run.meta` (written with the next flush)."""
        self._meta_extra.update(fields)
        self._facts_changed += 1

    # ---- bulk (synchronous) --------------------------------------------------------------------
    def write_span_columns(self, cols: SpanColumns) -> Path:
        """Write many spans as one Parquet segment, through DuckDB (imported here, not at module load)."""
        import duckdb

        with self._lock:
            self._seq += 1
            name = segment_name("spans", self._seq, self._seq, "parquet")
            tmp = self.folder / f".{name}.tmp"
            frame = {field: getattr(cols, field) for field in _SPAN_FIELDS}
            # one thread: writing one file gains little from a second one, which doubles the buffers
            con = duckdb.connect(config={"threads": 1})
            try:
                con.register("frame", frame)
                select = ", ".join(_parquet_select(field, sql_type) for field, sql_type in SPAN_COLUMNS)
                con.execute(f"COPY (SELECT {select} FROM frame) TO '{_sql_str(tmp)}' (FORMAT parquet)")
            finally:
                con.close()
            os.replace(tmp, self.folder / name)
            return self.folder / name

    # ---- flushing ------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything queued so far (called by the thread, by close(), and by signal handlers).

        Never raises for the file system: a segment that cannot be written (disk full, a read-only or
        removed run directory) drops its records, counted, with one `writer_error` note (its count says
        how many flushes failed); the queue is emptied either way, so memory stays bounded."""
        with self._lock:
            self._flush_table("spans", self._spans, _SPAN_FIELDS)
            self._flush_table("samples", self._samples, _SAMPLE_FIELDS)
            try:
                self._write_writer_file()
            except OSError as exc:  # the counts and notes land with the next flush that can write
                self._failed("writer.json", exc)
            if self._retired:
                self._delete_retired(everything=self._status != "running")

    def close(self, status: str = "ended") -> None:
        """Stop the thread, write what is left and mark the writer ended. Safe to call twice; never raises
        for the file system (see `flush`)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 3 * self.flush_interval_s))
        self._status = status
        self.flush()

    def _loop(self) -> None:
        next_t = time.monotonic() + self.flush_interval_s
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            next_t += self.flush_interval_s
            try:
                self.flush()
            except Exception as exc:  # a full disk must not kill the job: note it and keep trying
                self.note("writer_error", f"segment write failed: {exc!r}")

    def _flush_table(self, table: str, queue: collections.deque[Any], fields: tuple[str, ...]) -> None:
        if not queue:
            return
        records: list[Any] = []
        while queue:
            try:
                records.append(queue.popleft())
            except IndexError:
                break
        try:  # the records as they are, in one call: a third of the cost of a dict per record
            data = self._encoder.encode_lines(records)
        except (TypeError, msgspec.EncodeError):  # not a record msgspec knows: field by field, as before
            data = b"".join(
                self._encoder.encode({f: getattr(rec, f) for f in fields}) + b"\n" for rec in records
            )
        self._seq += 1
        name = segment_name(table, self._seq, self._seq, "jsonl")
        try:
            write_bytes_atomic(self.folder / name, data)
        except OSError as exc:
            if table == "spans":
                self.dropped_spans += len(records)
            else:
                self.dropped_samples += len(records)
            self._failed(name, exc)
            return
        try:
            self._maybe_compact(table)
        except OSError as exc:  # the small segments stay, all readable: only the compaction waits
            self._compact_after = self._seq + COMPACT_EVERY
            self.note("writer_compaction", f"merging small segments failed, retried later: {_why(exc)}")

    def _failed(self, what: str, exc: OSError) -> None:
        """One note for every write that failed (its count grows), and one line on stderr the first time:
        when the run directory itself cannot be written, the note cannot reach it."""
        first = "writer_error" not in self._notes
        self.note(
            "writer_error",
            f"cannot write {what} in {self.folder}: {_why(exc)}; records dropped and counted, training goes on",
        )
        if first:
            try:
                print(
                    f"gpuwatch: cannot write the run ({_why(exc)}): records are dropped and counted",
                    file=sys.stderr,
                )
            except Exception:  # noqa: BLE001 - a closed stderr is no reason to fail
                pass

    def _maybe_compact(self, table: str) -> None:
        """Merge a table's small segments once there are `COMPACT_EVERY` of them. They are counted as they
        are written, and the folder is listed only when the count says so: listing it with every flush was
        0.2-0.3 ms of the writer thread's time each second in a watched loop (this VM, ext4)."""
        self._small_segments[table] += 1
        if self._seq < self._compact_after or self._small_segments[table] < COMPACT_EVERY:
            return
        small = [s for s in list_segments(self.folder, table) if s.fmt == "jsonl" and s.first == s.last]
        self._small_segments[table] = len(small)
        if len(small) < COMPACT_EVERY:
            return
        first, last = small[0].first, small[-1].last
        name = segment_name(table, first, last, "jsonl")
        tmp = self.folder / f".{name}.tmp"
        try:
            with open(tmp, "wb") as out:
                for seg in small:
                    out.write(seg.path.read_bytes())
            os.replace(tmp, self.folder / name)
        except OSError:
            _unlink_quietly(tmp)
            raise
        # readers now prefer the wider segment; the small ones go once a reader that listed them just
        # before is surely done (listing skips them meanwhile: the wide one covers them)
        self._retired.append((time.monotonic(), [seg.path for seg in small]))
        self._small_segments[table] = 0
        self._delete_retired()

    def _delete_retired(self, everything: bool = False) -> None:
        now, keep = time.monotonic(), []
        for when, paths in self._retired:
            if everything or now - when >= self.retire_after_s:
                for path in paths:
                    _unlink_quietly(path)
            else:
                keep.append((when, paths))
        self._retired = keep

    def _write_writer_file(self) -> None:
        """Rewrite writer.json where what it says changed (status, drop counts, notes, meta) or
        `WRITER_FILE_REFRESH_S` passed: a flush that only adds segments leaves it alone."""
        state = (self._status, self.dropped_spans, self.dropped_samples, self._facts_changed)
        now_s = time.monotonic()
        last = self._writer_file_state
        if last is not None and last[0] == state and now_s - last[1] < WRITER_FILE_REFRESH_S:
            return
        self._write_writer_json()
        self._writer_file_state = (state, now_s)

    def _write_writer_json(self) -> None:
        run = run_to_json(self.run)
        run["meta"] = {**run["meta"], **self._meta_extra}
        write_json_atomic(
            self.folder / WRITER_FILE,
            {
                **run,
                "schema_version": SCHEMA_VERSION,  # readers skip a writer of another record schema
                "status": self._status,
                "updated_at_unix_ns": time.time_ns(),
                "dropped_spans": self.dropped_spans,
                "dropped_samples": self.dropped_samples,
                "notes": self._notes,
            },
        )


def _why(exc: OSError) -> str:
    return f"{exc.strerror} (errno {exc.errno})" if exc.strerror else repr(exc)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


def _parquet_select(field: str, sql_type: str) -> str:
    # Bulk columns hold NULL_INT for "unknown" in integer columns that are nullable in the data model.
    if field in NULLABLE_INT_COLUMNS:
        return f'CAST(NULLIF("{field}", {NULL_INT}) AS {sql_type}) AS "{field}"'
    return f'CAST("{field}" AS {sql_type}) AS "{field}"'
