"""Follows a run directory while it is written: each `poll()` returns only the rows of segments that are new
since the last poll, never the whole run again (what `gpuwatch top` refreshes from).

Segments are immutable and numbered per writer, so a cursor per (writer, table) is the highest flush number
read so far. A compacted segment replaces small ones the cursor may already have read: it is their lines
concatenated in order, so the rows already taken from the small ones are skipped at its head (the cursor
keeps how many rows each range it read held). Rows come back in the order `RunReader` reads them within a
writer, with times on the run's common timeline (the earliest writer's anchor); when a writer with an
earlier anchor joins, that timeline moves and the batch says by how much.

JSON-lines segments (what live writers append, a few hundred rows each) are decoded with msgspec: DuckDB's
`read_json` costs about 7 ms per file to set up, which at eight writers flushing every second would be a
tenth of a core spent reading alone. Parquet segments (bulk imports) go through DuckDB as in `RunReader`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from gpuwatch.errors import RunDirError
from gpuwatch.records import (
    NULL_INT,
    NULLABLE_INT_COLUMNS,
    SAMPLE_COLUMNS,
    SPAN_COLUMNS,
    TABLE_COLUMNS,
    SpanColumns,
)
from gpuwatch.store.run_dir import SEGMENT_RE, WRITER_FILE, Segment, list_writer_dirs, read_run_marker
from gpuwatch.store.run_reader import WriterInfo, read_writer, segment_selects

FMT_ORDER = {"parquet": 0, "jsonl": 1}
"""`RunReader` reads a writer's Parquet segments before its JSON-lines ones; row order follows that."""


class _SpanRow(msgspec.Struct):
    rank: int
    pid: int
    tid: int
    stream: int
    device_index: int
    kind: str
    category: str | None
    name: str
    start_ns: int
    end_ns: int
    step: int | None = None
    bytes: int | None = None
    correlation: int | None = None
    seq: int | None = None
    attrs: msgspec.Raw = msgspec.Raw(b"null")
    """Kept as its JSON text (`null` when absent), as the reader's VARCHAR cast of the JSON column."""


class _SampleRow(msgspec.Struct):
    rank: int
    pid: int
    device_index: int
    metric: str
    t_ns: int
    value: float | None = None


_SPAN_ROWS = msgspec.json.Decoder(list[_SpanRow])
_SAMPLE_ROWS = msgspec.json.Decoder(list[_SampleRow])
_ROW: dict[str, msgspec.json.Decoder[Any]] = {
    "spans": msgspec.json.Decoder(_SpanRow),
    "samples": msgspec.json.Decoder(_SampleRow),
}
"""One row at a time: how a damaged segment's intact lines are read."""


@dataclass(frozen=True, slots=True)
class SpanChunk:
    """New span rows of one segment of one writer, in file order."""

    writer: str
    """The writer's folder name (writers sort by it, as `RunReader` reads them)."""
    order_key: tuple[int, int]
    """(format order, first flush number) of the rows: where they sit in the writer's reader order."""
    spans: SpanColumns


@dataclass(frozen=True, slots=True)
class TailBatch:
    """What one poll found."""

    run_id: str
    writers: tuple[WriterInfo, ...]
    """Every writer as its `writer.json` says now, `offset_ns` on the run's common timeline."""
    anchor_unix_ns: int
    """Wall-clock origin of the common timeline (the earliest writer's anchor)."""
    anchor_moved_ns: int
    """How far that origin moved back since the previous poll: add it to every time returned before."""
    chunks: tuple[SpanChunk, ...]
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    """New samples of the metrics asked for: `rank`, `pid`, `device_index`, `metric`, `t_ns`, `value` (NaN
    where NULL)."""
    skipped: tuple[str, ...] = ()
    """What of the run cannot be read (a lost run marker, unreadable writer records), one line each; damage
    to a writer's segments is a note of that writer instead."""

    @property
    def new_rows(self) -> int:
        return sum(len(c.spans) for c in self.chunks) + int(len(self.samples.get("t_ns", ())))


class _Vanished(Exception):
    """A listed segment was gone when read (compaction replaced it): its writer is listed again."""

    def __init__(self, writer: str) -> None:
        super().__init__(writer)
        self.writer = writer


@dataclass
class _Cursor:
    read_to: int = 0
    """Highest flush number whose rows have been returned."""
    ranges: list[tuple[int, int, int]] = field(default_factory=list)
    """(first, last, rows) of what was read, so a compacted segment's already-read head can be skipped."""


@dataclass(frozen=True, slots=True)
class _Read:
    writer: WriterInfo
    segment: Segment
    skip_rows: int
    """Rows at the head of a compacted segment that were already returned from the small ones it replaced."""
    order_first: int
    """The first flush number whose rows this read returns (where they sit in the writer's order)."""


class RunTail:
    """Incremental reader of one run directory.

    Args:
        run_dir: the run directory.
        sample_metrics: which sample metrics to return (None: no samples).

    `poll()` raises RunDirUsageError while the path is missing or not a run directory (the caller decides
    whether to wait), RunDirError for a run of another schema version (no cursor moves). A damaged run is
    followed as far as it is intact, as `RunReader` reads it: a writer whose record cannot be read is left
    out (`TailBatch.skipped`), a damaged segment gives its intact lines (JSON lines) or nothing (Parquet),
    and a note of its writer says so.
    """

    def __init__(self, run_dir: str | Path, *, sample_metrics: tuple[str, ...] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.sample_metrics = frozenset(sample_metrics or ())
        self._cursors: dict[tuple[str, str], _Cursor] = {}
        self._writers: dict[str, tuple[tuple[int, int], WriterInfo]] = {}
        self._anchor: int | None = None
        self._con: Any = None
        self._listing: dict[str, list[str]] = {}
        self._parsed: dict[str, dict[str, Segment | None]] = {}
        self._skipped: dict[str, str] = {}  # writer folder -> why its record cannot be read
        self._damage: dict[str, dict[str, dict[str, Any]]] = {}  # writer folder -> notes on its segments
        self._lines_read: dict[Path, int] = {}  # a salvaged segment's lines, good and bad, for the cursor

    def poll(self) -> TailBatch:
        marker = read_run_marker(self.run_dir)
        batch = self._poll(marker["run_id"])
        skipped = ((marker["recovered"],) if "recovered" in marker else ()) + tuple(
            f"skipped writer folder {name}: {why}" for name, why in sorted(self._skipped.items())
        )
        return replace(batch, skipped=skipped) if skipped else batch

    def _poll(self, run_id: str) -> TailBatch:
        self._listing = {}  # each writer folder is listed once per poll, for both tables
        found = self._refresh_writers()
        if not found:
            return TailBatch(run_id, (), self._anchor or 0, 0, ())
        anchor = min(w.run.started_at_unix_ns for w in found)
        moved = 0 if self._anchor is None else self._anchor - anchor
        self._anchor = anchor
        writers = tuple(_with_offset(w, w.run.started_at_unix_ns - anchor) for w in found)
        chunks: list[SpanChunk] = []
        samples: list[dict[str, np.ndarray]] = []
        for table in ("spans", "samples") if self.sample_metrics else ("spans",):
            for _ in range(5):
                try:
                    self._read_table(writers, table, chunks, samples)
                except _Vanished as gone:  # compacted between listing and reading: list that writer again
                    self._listing.pop(gone.writer, None)
                    time.sleep(0.01)
                    continue
                break
        if self._damage:
            writers = tuple(self._with_damage(w) for w in writers)
        return TailBatch(run_id, writers, anchor, moved, tuple(chunks), self._samples(samples))

    def _read_table(
        self,
        writers: tuple[WriterInfo, ...],
        table: str,
        chunks: list[SpanChunk],
        samples: list[dict[str, np.ndarray]],
    ) -> None:
        """Read the table's new segments in order, moving each cursor as soon as its segment is in: a
        catch-up of thousands of segments that meets a compaction keeps what it has read."""
        for r in self._plan(writers, table):
            cols = self._read(r, table)
            n = len(cols["t_ns" if table == "samples" else "start_ns"])
            self._advance(
                r.writer.folder.name, table, r.segment, r.skip_rows + self._lines_read.pop(r.segment.path, n)
            )
            if not n:
                continue
            if table == "spans":
                key = (FMT_ORDER[r.segment.fmt], r.order_first)
                chunks.append(SpanChunk(r.writer.folder.name, key, SpanColumns(**cols)))
            else:
                samples.append(cols)

    def _with_damage(self, w: WriterInfo) -> WriterInfo:
        notes = self._damage.get(w.folder.name)
        return replace(w, notes={**w.notes, **notes}) if notes else w

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    # ---- writers and segments ------------------------------------------------------------------
    def _refresh_writers(self) -> list[WriterInfo]:
        """writer.json of every writer, re-read only when the file changed (mtime, size)."""
        out = []
        for folder in list_writer_dirs(self.run_dir):
            try:
                st = (folder / WRITER_FILE).stat()
            except FileNotFoundError:
                continue
            key = (st.st_mtime_ns, st.st_size)
            known = self._writers.get(folder.name)
            if known is None or known[0] != key:
                try:
                    known = (key, read_writer(folder))
                except RunDirError as exc:  # damaged, or another schema: that writer is left out
                    self._skipped[folder.name] = str(exc)
                    continue
                self._skipped.pop(folder.name, None)
                self._writers[folder.name] = known
            out.append(known[1])
        return out

    def _plan(self, writers: tuple[WriterInfo, ...], table: str) -> list[_Read]:
        """Segments with rows not returned yet, in the reader's order, with how many head rows to skip."""
        plan = []
        for w in writers:
            cursor = self._cursors.get((w.folder.name, table), _Cursor())
            for seg in self._new_segments(w.folder, table, cursor.read_to):
                inside = [(last, n) for f, last, n in cursor.ranges if f >= seg.first and last <= seg.last]
                skip = sum(n for _, n in inside)
                order_first = max(last for last, _ in inside) + 1 if inside else seg.first
                plan.append(_Read(w, seg, skip, order_first))
        plan.sort(key=lambda r: (r.writer.folder.name, FMT_ORDER[r.segment.fmt], r.order_first))
        return plan

    def _new_segments(self, folder: Path, table: str, read_to: int) -> list[Segment]:
        """`list_segments` for what is past the cursor only: the folder is listed once a poll, and only
        names not seen before are parsed (a long run keeps a few hundred files per writer)."""
        names = self._listing.get(folder.name)
        if names is None:
            try:
                names = self._listing[folder.name] = os.listdir(folder)
            except FileNotFoundError:
                names = self._listing[folder.name] = []
        parsed = self._parsed.setdefault(folder.name, {})
        found = []
        for name in names:
            seg = parsed.get(name)
            if seg is None and name not in parsed:
                m = SEGMENT_RE.match(name)
                seg = parsed[name] = (
                    Segment(folder / name, m.group(1), int(m.group(2)), int(m.group(3)), m.group(4))
                    if m
                    else None
                )
            if seg is not None and seg.table == table and seg.last > read_to:
                found.append(seg)
        if len(parsed) > 2 * len(names) + 64:  # forget compacted-away names
            keep = set(names)
            self._parsed[folder.name] = {k: v for k, v in parsed.items() if k in keep}
        found.sort(key=lambda s: (s.first, -s.last))
        kept: list[Segment] = []
        covered_to = read_to
        for seg in found:  # a compacted segment covers the small ones it replaces (same as list_segments)
            if seg.last > covered_to:
                kept.append(seg)
                covered_to = seg.last
        return kept

    def _advance(self, writer: str, table: str, seg: Segment, rows: int) -> None:
        cursor = self._cursors.setdefault((writer, table), _Cursor())
        cursor.ranges = [r for r in cursor.ranges if not (r[0] >= seg.first and r[1] <= seg.last)]
        cursor.ranges.append((seg.first, seg.last, rows))
        cursor.read_to = max(cursor.read_to, seg.last)

    # ---- reading -------------------------------------------------------------------------------
    def _read(self, r: _Read, table: str) -> dict[str, np.ndarray]:
        try:
            if r.segment.fmt == "jsonl":
                return self._read_jsonl(r, table)
            return self._read_parquet(r, table)
        except FileNotFoundError:  # compacted away between listing and reading: list again
            raise _Vanished(r.writer.folder.name) from None
        except (OSError, RunDirError) as exc:  # damaged (a directory, unreadable, broken Parquet): skipped
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._note_damage(r, f"damaged, skipped ({why})")
            columns = TABLE_COLUMNS[table]
            return _columns([], columns)

    def _note_damage(self, r: _Read, message: str) -> None:
        notes = self._damage.setdefault(r.writer.folder.name, {})
        notes[f"segment {r.segment.path.name}"] = {
            "message": message,
            "count": 1,
            "t_unix_ns": time.time_ns(),
        }

    def _read_jsonl(self, r: _Read, table: str) -> dict[str, np.ndarray]:
        lines = r.segment.path.read_bytes().rstrip(b"\n").split(b"\n")[r.skip_rows :]
        lines = [line for line in lines if line]
        doc = b"[" + b",".join(lines) + b"]"
        try:
            rows = (_SAMPLE_ROWS if table == "samples" else _SPAN_ROWS).decode(doc)
        except msgspec.MsgspecError:  # a damaged segment, or one of another schema: its intact lines
            rows = []
            for line in lines:
                try:
                    rows.append(_ROW[table].decode(line))
                except msgspec.MsgspecError:
                    pass
            self._lines_read[r.segment.path] = len(lines)
            bad = len(lines) - len(rows)
            self._note_damage(r, f"damaged, only its intact lines read ({bad} of {len(lines)} lines skipped)")
        if table == "samples":
            samples = rows
            out = _columns(samples, SAMPLE_COLUMNS)
            out["t_ns"] += r.writer.offset_ns
            return out
        out = _columns(rows, SPAN_COLUMNS)
        out["start_ns"] += r.writer.offset_ns
        out["end_ns"] += r.writer.offset_ns
        return out

    def _read_parquet(self, r: _Read, table: str) -> dict[str, np.ndarray]:
        columns = TABLE_COLUMNS[table]
        (sql,) = segment_selects(r.writer, table, columns, [r.segment])
        select = ", ".join(
            f"coalesce({n}, {NULL_INT}) AS {n}"
            if n in NULLABLE_INT_COLUMNS and table == "spans"
            else f'"{n}"'
            for n, _ in columns
        )
        try:
            data = (
                self._connection().execute(f"SELECT {select} FROM ({sql}) OFFSET {r.skip_rows}").fetchnumpy()
            )
        except Exception as exc:  # duckdb's own errors: one line
            raise RunDirError(f"cannot read segment {r.segment.path}: {str(exc).splitlines()[0]}") from None
        out = {k: _plain(v) for k, v in data.items()}
        if table == "samples":
            out["value"] = np.asarray(out["value"], dtype=np.float64)
        return out

    def _samples(self, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if not parts:
            return {}
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        keep = np.zeros(len(out["t_ns"]), dtype=bool)
        for metric in self.sample_metrics:  # np.isin on an object array sorts it
            keep |= out["metric"] == metric
        return {k: v[keep] for k, v in out.items()}

    def _connection(self) -> Any:
        if self._con is None:
            import duckdb

            self._con = duckdb.connect(config={"threads": 1})
        return self._con


def _columns(rows: list[Any], columns: tuple[tuple[str, str], ...]) -> dict[str, np.ndarray]:
    """Decoded rows as the columns `RunReader` returns: NULL_INT for NULL in the nullable integer columns, NaN
    for a NULL sample value, `attrs` as its JSON text."""
    out: dict[str, np.ndarray] = {}
    n = len(rows)
    for name, sql_type in columns:
        values = [getattr(row, name) for row in rows]
        if name in NULLABLE_INT_COLUMNS:
            out[name] = np.fromiter((NULL_INT if v is None else v for v in values), dtype=np.int64, count=n)
        elif name == "attrs":
            arr = np.empty(n, dtype=object)
            arr[:] = [None if bytes(v) == b"null" else bytes(v).decode() for v in values]
            out[name] = arr
        elif name == "value":
            out[name] = np.fromiter((np.nan if v is None else v for v in values), dtype=np.float64, count=n)
        elif sql_type == "VARCHAR":
            arr = np.empty(n, dtype=object)
            arr[:] = values
            out[name] = arr
        else:
            out[name] = np.array(values, dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    return out


def _with_offset(w: WriterInfo, offset_ns: int) -> WriterInfo:
    return w if w.offset_ns == offset_ns else replace(w, offset_ns=offset_ns)


def _plain(arr: Any) -> np.ndarray:
    """A fetched column as a plain array: NULL text as None, NULL numbers as NaN."""
    if isinstance(arr, np.ma.MaskedArray):
        if arr.dtype == object:
            out = np.array(arr.data, dtype=object, copy=True)
            out[np.ma.getmaskarray(arr)] = None
            return out
        if arr.dtype.kind == "f":
            return np.asarray(arr.filled(np.nan))
        return np.asarray(arr.filled())
    return np.asarray(arr)
