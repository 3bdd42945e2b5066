"""Reads a run directory (all writers, all segments) through DuckDB, while it is still being written.

Times come back on the run's common timeline: nanoseconds since the earliest writer's anchor, so ranks that
recorded their own wall-clock anchors line up.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpuwatch.errors import RunDirError
from gpuwatch.records import (
    NULL_INT,
    NULLABLE_INT_COLUMNS,
    SCHEMA_VERSION,
    SPAN_COLUMNS,
    TABLE_COLUMNS,
    Run,
    SpanColumns,
)
from gpuwatch.store.run_dir import WRITER_FILE, Segment, list_segments, list_writer_dirs, read_run_marker


@dataclass(frozen=True, slots=True)
class WriterInfo:
    """One writing process of the run, as its `writer.json` describes it."""

    folder: Path
    run: Run
    status: str
    """"running" (or killed before it could say otherwise), "ended", or "target_exited"."""
    offset_ns: int
    """Add to this writer's times to put them on the run's common timeline."""
    dropped_spans: int
    dropped_samples: int
    updated_at_unix_ns: int
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)


class RunReader:
    """Query one run directory.

    A damaged run is read as far as it is intact (DESIGN.md "Bad input"): a lost or unreadable run marker,
    an unreadable writer record (that writer is skipped), a truncated or corrupt segment (a JSON-lines
    segment keeps its intact lines, a broken Parquet one is skipped), a segment of another schema (rows
    missing a required column are skipped). `skipped` says what was left out at the run's level; damage to
    a writer's segments is a note of that writer (`WriterInfo.notes`), so every view shows it.

    Raises:
        RunDirUsageError: the path does not exist or is not a run directory (exit 2).
        RunDirError: the run is from another schema version, has no data yet, or nothing of it is
            readable (exit 1).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        marker = read_run_marker(self.run_dir)
        self.run_id: str = marker["run_id"]
        self.skipped: list[str] = [marker["recovered"]] if "recovered" in marker else []
        """What could not be read at the run's level, one line each (the marker, writer records)."""
        self._damaged: dict[Path, str] = {}  # segment -> why it is left out
        self._salvaged: dict[Path, str] = {}  # JSON-lines segment -> why only its intact lines are read
        self.writers = self._load_writers()
        if not self.writers:
            if self.skipped and list_writer_dirs(self.run_dir):
                raise RunDirError(
                    f"cannot read run {self.run_dir}: no readable writer record ({self.skipped[-1]})"
                )
            raise RunDirError(f"run {self.run_dir} has no data yet (no writer has started)")
        self.anchor_unix_ns = min(w.run.started_at_unix_ns for w in self.writers)
        self.writers = [
            WriterInfo(**{**_fields(w), "offset_ns": w.run.started_at_unix_ns - self.anchor_unix_ns})
            for w in self.writers
        ]
        self._con: Any = None

    # ---- metadata ----------------------------------------------------------------------------
    @property
    def ranks(self) -> list[int]:
        return sorted({w.run.rank for w in self.writers})

    @property
    def world_size(self) -> int:
        return max([w.run.world_size for w in self.writers] + [len(self.ranks)])

    def _load_writers(self) -> list[WriterInfo]:
        out = []
        for folder in list_writer_dirs(self.run_dir):
            try:
                out.append(read_writer(folder))
            except RunDirError as exc:
                self.skipped.append(f"skipped writer folder {folder.name}: {exc}")
        return out

    # ---- queries -----------------------------------------------------------------------------
    def connection(self) -> Any:
        """A DuckDB connection with `spans` and `samples` views over every segment of every writer."""
        if self._con is None:
            import duckdb

            self._con = duckdb.connect()
            self._create_views()
        return self._con

    def _create_views(self) -> None:
        for table, columns in TABLE_COLUMNS.items():
            parts = []
            for w in self.writers:
                parts.extend(self._writer_selects(w, table, columns))
            if not parts:
                cols = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in columns)
                parts = [f"SELECT {cols} WHERE false"]
            self._con.execute(f"CREATE OR REPLACE VIEW {table} AS " + " UNION ALL ".join(parts))

    def _writer_selects(
        self, w: WriterInfo, table: str, columns: tuple[tuple[str, str], ...], *, check: bool = False
    ) -> list[str]:
        """One writer's SELECTs of `table`: damaged segments left out, salvaged ones read leniently."""
        segments = [s for s in list_segments(w.folder, table) if s.path not in self._damaged]
        whole = [s for s in segments if s.path not in self._salvaged]
        parts = segment_selects(w, table, columns, whole)
        for seg in segments:
            if seg.path in self._salvaged:
                parts.extend(segment_selects(w, table, columns, [seg], salvage=True))
        return parts

    def query(self, sql: str, params: list[Any] | None = None) -> QueryResult:
        """SQL against the `spans`/`samples` views (values always bound as parameters); it runs when one of
        the result's `fetchall`/`fetchone`/`fetchnumpy` is called (DuckDB reads segments while fetching,
        so that is where a damaged one shows).

        A segment that disappears between listing and reading (compaction) triggers a rebuild; a failure
        that persists sends every segment through `_find_damage`, and the query runs again without the
        damaged ones.
        """
        return QueryResult(self, sql, params or [])

    def _fetch(self, sql: str, params: list[Any], how: str) -> Any:
        vanished_tries = damage_tries = 0
        while True:
            try:
                return getattr(self.connection().execute(sql, params), how)()
            except Exception as exc:  # duckdb.IOException when a compacted small segment vanished
                vanished = "No files found" in str(exc) or "No such file" in str(exc)
                if vanished and vanished_tries < 10:  # writers compact while we read: list again
                    vanished_tries += 1
                    time.sleep(0.01 * vanished_tries)
                    self._con.close()
                    self._con = None
                elif damage_tries < 2 and self._find_damage():
                    damage_tries += 1
                    self._create_views()
                else:
                    raise RunDirError(f"cannot read run {self.run_dir}: {str(exc).splitlines()[0]}") from None

    def _find_damage(self) -> bool:
        """Probe each writer's segments; leave out (or salvage) the ones that fail. True when any was new."""
        import duckdb

        found = False
        probe = duckdb.connect(config={"threads": 1})
        try:
            for table, columns in TABLE_COLUMNS.items():
                for w in self.writers:
                    if _rows(probe, self._writer_selects(w, table, columns), table) is not None:
                        continue  # the common case: one query tells the whole writer is fine
                    for seg in list_segments(w.folder, table):
                        if (
                            seg.path in self._damaged
                            or _rows(probe, self._writer_selects_of(w, seg), table) is not None
                        ):
                            continue
                        if not os.path.lexists(seg.path):
                            continue  # compacted away meanwhile (a live writer), not damaged
                        found = True
                        why = _why_unreadable(probe, w, seg)
                        if seg.fmt == "jsonl" and seg.path not in self._salvaged and seg.path.is_file():
                            self._salvaged[seg.path] = why
                            if _rows(probe, self._writer_selects_of(w, seg), table):  # some lines intact
                                self._note(w, seg, f"damaged, only its intact lines read ({why})")
                                continue
                        self._salvaged.pop(seg.path, None)
                        self._damaged[seg.path] = why
                        self._note(w, seg, f"damaged, skipped ({why})")
        finally:
            probe.close()
        spans_left = any(
            s.path not in self._damaged for w in self.writers for s in list_segments(w.folder, "spans")
        )
        if found and not spans_left:
            first = next(iter(self._damaged.items()))
            raise RunDirError(
                f"cannot read run {self.run_dir}: every span segment is damaged ({first[0].name}: {first[1]})"
            )
        return found

    def _writer_selects_of(self, w: WriterInfo, seg: Segment) -> list[str]:
        columns = TABLE_COLUMNS[seg.table]
        return segment_selects(w, seg.table, columns, [seg], salvage=seg.path in self._salvaged)

    def _note(self, w: WriterInfo, seg: Segment, message: str) -> None:
        w.notes[f"segment {seg.path.name}"] = {"message": message, "count": 1}

    def span_columns(
        self, rank: int | None = None, *, with_attrs: bool = False, _exact: bool = False
    ) -> SpanColumns:
        """All spans (of one rank, or all), sorted by start (then longest first); None-able integers come
        back as -1.

        Text columns (name, kind, category) travel as 64-bit hashes and are decoded through a dictionary
        of their distinct values, so each distinct string is one Python object shared by every span that
        carries it (and `name_code` numbers the names). Rows come in the segments' own order (DuckDB keeps
        insertion order without ORDER BY) and are sorted with numpy, a third of DuckDB's sort time and
        memory. `attrs`, NULL for almost every span, is fetched only where set, in that same order. If two
        strings ever share a hash, or a writer adds rows between the two queries, the text travels in
        full instead (`_exact`).
        """
        where, params = ("WHERE rank = ?", [rank]) if rank is not None else ("", [])
        text = ("name", "kind", "category")
        select = []
        for name, _ in SPAN_COLUMNS:
            if name in NULLABLE_INT_COLUMNS:
                select.append(f"coalesce({name}, {NULL_INT}) AS {name}")
            elif name in text and not _exact:
                select.append(f'hash("{name}") AS "{name}"')
            elif name != "attrs" or (_exact and with_attrs):
                select.append(f'"{name}"')
        if with_attrs and not _exact:
            select.append("attrs IS NOT NULL AS has_attrs")
        data = self.query(f"SELECT {', '.join(select)} FROM spans {where}", params).fetchnumpy()
        if _has_nulls(data, _REQUIRED["spans"]) and self._find_damage():  # rows of another schema
            self._create_views()
            return self.span_columns(rank, with_attrs=with_attrs, _exact=_exact)
        data = {k: _unmasked(v) for k, v in data.items()}
        n = len(data["start_ns"])
        attrs = data.pop("attrs", None)
        if with_attrs and not _exact:
            attrs = np.full(n, None, dtype=object)
            has = np.flatnonzero(data.pop("has_attrs").astype(bool))
            if has.size:
                cond = f"{where} AND attrs IS NOT NULL" if where else "WHERE attrs IS NOT NULL"
                rows = self.query(f"SELECT start_ns, end_ns, attrs FROM spans {cond}", params).fetchall()
                got = np.array([(r[0], r[1]) for r in rows[: has.size]], dtype=np.int64).reshape(-1, 2)
                want = np.stack([data["start_ns"][has], data["end_ns"][has]], axis=1)
                if got.shape != want.shape or (got != want).any():  # the run grew in between
                    return self.span_columns(rank, with_attrs=True, _exact=True)
                attrs[has] = [r[2] for r in rows[: has.size]]
        order = np.lexsort((-data["end_ns"], data["start_ns"]))  # stable: ties keep segment order
        data = {k: v[order] for k, v in data.items()}
        name_code = None
        if _exact:
            decoded = {t: data[t] for t in text}
        else:
            got_text = self._decode_text(where, params, {t: data[t] for t in text})
            if got_text is None:
                return self.span_columns(rank, with_attrs=with_attrs, _exact=True)
            decoded, name_code = got_text
        cols: dict[str, Any] = {}
        for name, _ in SPAN_COLUMNS:
            if name in decoded:
                cols[name] = decoded[name]
            elif name in data:
                cols[name] = data[name]
            elif name == "attrs" and attrs is not None:
                cols[name] = attrs[order]
            else:
                cols[name] = np.full(n, None, dtype=object)
        return SpanColumns(**cols, name_code=name_code)

    def _decode_text(
        self, where: str, params: list[Any], hashed: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        """Hash columns back to object arrays of shared strings (None for NULL) through the distinct
        values, and the names' dictionary codes; None if two distinct strings share a hash."""
        union = " UNION ".join(f'SELECT DISTINCT "{t}" AS v FROM spans {where}' for t in hashed)
        rows = self.query(f"SELECT hash(v) AS h, v FROM ({union})", params * len(hashed)).fetchall()
        hashes = np.array([h for h, _ in rows], dtype=np.uint64)
        order = np.argsort(hashes)
        keys = hashes[order]
        if keys.size and (np.diff(keys) == 0).any():
            return None
        values = np.empty(len(rows), dtype=object)
        values[:] = [rows[i][1] for i in order.tolist()]
        codes = {t: np.searchsorted(keys, h.astype(np.uint64)) for t, h in hashed.items()}
        return {t: values[c] for t, c in codes.items()}, codes["name"].astype(np.int64)

    def samples(self, metric: str, rank: int | None = None) -> dict[str, np.ndarray]:
        """Samples of one metric: arrays `t_ns`, `value` (NaN where NULL), `device_index`, `pid`, `rank`."""
        where = "WHERE metric = ?" + (" AND rank = ?" if rank is not None else "")
        params: list[Any] = [metric] + ([rank] if rank is not None else [])
        data = self.query(
            f"SELECT rank, pid, device_index, t_ns, value FROM samples {where} ORDER BY t_ns", params
        ).fetchnumpy()
        return {k: np.asarray(v.filled(np.nan) if hasattr(v, "filled") else v) for k, v in data.items()}

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _has_nulls(data: dict[str, Any], names: tuple[str, ...]) -> bool:
    return any(
        isinstance(data.get(n), np.ma.MaskedArray) and np.ma.getmaskarray(data[n]).any() for n in names
    )


class QueryResult:
    """A query of `RunReader.query`, run (with its retries) by the fetch method called."""

    def __init__(self, reader: RunReader, sql: str, params: list[Any]) -> None:
        self._reader, self._sql, self._params = reader, sql, params

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._reader._fetch(self._sql, self._params, "fetchall")

    def fetchone(self) -> Any:
        return self._reader._fetch(self._sql, self._params, "fetchone")

    def fetchnumpy(self) -> dict[str, Any]:
        return self._reader._fetch(self._sql, self._params, "fetchnumpy")


def _unmasked(arr: Any) -> np.ndarray:
    """A fetched column as a plain array: NULL text as None (never numpy's "?" fill value)."""
    if isinstance(arr, np.ma.MaskedArray):
        return _none_filled(arr) if arr.dtype == object else np.asarray(arr.filled())
    return np.asarray(arr)


def _none_filled(arr: np.ma.MaskedArray) -> np.ndarray:
    out = np.array(arr.data, dtype=object, copy=True)
    out[np.ma.getmaskarray(arr)] = None  # masked.filled(None) would use numpy's "?" default instead
    return out


def read_writer(folder: Path, offset_ns: int = 0) -> WriterInfo:
    """One writer folder's `writer.json` as a WriterInfo. Raises RunDirError when it cannot be read."""
    try:
        data = json.loads((folder / WRITER_FILE).read_text())
        run = Run(**{k: data[k] for k in Run.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"unreadable writer record {folder / WRITER_FILE}: {exc}") from None
    version = data.get("schema_version", SCHEMA_VERSION)  # records before it was written: this schema
    if version != SCHEMA_VERSION:
        raise RunDirError(
            f"{folder.name} was written with record schema {version} by gpuwatch {run.tool_version}; "
            f"this gpuwatch reads schema {SCHEMA_VERSION}"
        )
    return WriterInfo(
        folder=folder,
        run=run,
        status=data.get("status", "running"),
        offset_ns=offset_ns,
        dropped_spans=int(data.get("dropped_spans", 0)),
        dropped_samples=int(data.get("dropped_samples", 0)),
        updated_at_unix_ns=int(data.get("updated_at_unix_ns", 0)),
        notes=data.get("notes") or {},
    )


def _fields(w: WriterInfo) -> dict[str, Any]:
    return {name: getattr(w, name) for name in WriterInfo.__dataclass_fields__}


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def segment_selects(
    w: WriterInfo,
    table: str,
    columns: tuple[tuple[str, str], ...],
    segments: list[Segment] | None = None,
    *,
    salvage: bool = False,
) -> list[str]:
    """SELECTs reading one writer's segments of `table` (all of them, or `segments`), shifting times onto
    the run's timeline. `salvage` reads damaged JSON-lines segments: lines that do not parse, or lack a
    column every row has, are skipped."""
    if segments is None:
        segments = list_segments(w.folder, table)
    time_col = "start_ns" if table == "spans" else "t_ns"
    out = []
    for fmt in ("parquet", "jsonl"):
        paths = [s.path for s in segments if s.fmt == fmt]
        if not paths:
            continue
        exprs = []
        for name, sql_type in columns:
            if name in (time_col, "end_ns"):
                exprs.append(f'CAST("{name}" AS BIGINT) + {int(w.offset_ns)} AS "{name}"')
            elif name == "attrs":
                exprs.append('CAST("attrs" AS VARCHAR) AS "attrs"')
            else:
                exprs.append(f'CAST("{name}" AS {sql_type}) AS "{name}"')
        if fmt == "parquet":
            source = f"read_parquet({_sql_list(paths)})"
        else:
            json_types = ", ".join(
                f"'{name}': '{'JSON' if name == 'attrs' else sql_type}'" for name, sql_type in columns
            )
            source = (
                f"read_json({_sql_list(paths)}, format='newline_delimited', columns={{{json_types}}}, "
                f"maximum_object_size=67108864{', ignore_errors=true' if salvage else ''})"
            )
        where = ""
        if salvage and fmt == "jsonl":
            required = [n for n, _ in columns if n in _REQUIRED[table]]
            where = " WHERE " + " AND ".join(f'"{n}" IS NOT NULL' for n in required)
        out.append(f"SELECT {', '.join(exprs)} FROM {source}{where}")
    return out


_REQUIRED = {
    "spans": ("rank", "pid", "kind", "name", "start_ns", "end_ns"),
    "samples": ("rank", "pid", "metric", "t_ns"),
}
"""Columns every row of a table has: a salvaged row without one of them is a damaged line."""


def _probe(con: Any, sql: str, table: str) -> int:
    """Read every value of one SELECT (aggregates make DuckDB parse and cast each one, not just count
    lines) and return its rows; raise when that fails or a row lacks a column every row has (a segment
    of another schema)."""
    nulls = " OR ".join(f'"{n}" IS NULL' for n in _REQUIRED[table])
    rows, bad, *_ = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {nulls}), max(length(CAST(COLUMNS(*) AS VARCHAR))) "
        f"FROM ({sql})"
    ).fetchone()
    if bad:
        raise ValueError(f"{bad} rows lack a column every row has (another schema?)")
    return int(rows)


def _rows(con: Any, selects: list[str], table: str) -> int | None:
    """Rows of these SELECTs, or None when any of them cannot be read whole."""
    try:
        return sum(_probe(con, sql, table) for sql in selects)
    except Exception:  # noqa: BLE001 - any failure of a probe means damage
        return None


def _why_unreadable(con: Any, w: WriterInfo, seg: Segment) -> str:
    """Why a segment cannot be read as it is, in one short line."""
    if not seg.path.is_file():
        return "not a readable file"
    columns = TABLE_COLUMNS[seg.table]
    try:
        for sql in segment_selects(w, seg.table, columns, [seg]):
            _probe(con, sql, seg.table)
    except Exception as exc:  # noqa: BLE001 - the reason, in DuckDB's words, shortened to one line
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        line = re.sub(r'^[A-Za-z ]*Error: | in file "[^"]*"', "", line).strip().rstrip(".")
        return line[:200]
    return "unreadable"
