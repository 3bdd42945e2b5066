"""A run as SQL: one DuckDB file per run (`gpuwatch consolidate`) and queries over a run (`gpuwatch sql`).

Both offer the same relations, so a query written against a live run directory runs unchanged against its
consolidated file, and the file opens in any DuckDB client (`duckdb run.duckdb`, DBeaver, Python):

| relation | one row per | columns |
| --- | --- | --- |
| `runs` | writing process (rank) | run_id, rank, host, pid, command, world_size, started_at_unix_ns (its clock anchor), offset_ns (added to its times to put them on the run's timeline), clock_offset_ns (how far its host's clock runs ahead of rank 0's, from matched collectives: subtract it from its times to line them up with rank 0's; 0 on one host), tool_version, source (watch, attach, import), status, dropped_spans, dropped_samples, meta (JSON) |
| `spans` | interval on a host thread or device stream | rank, pid, tid, stream, device_index, kind, category, name, start_ns, end_ns, step, bytes, correlation, seq, attrs (JSON text) — times in ns on the run's timeline |
| `samples` | gauge reading | rank, pid, device_index, metric (unit in the name), t_ns, value (NULL: not measured) |
| `steps` (view) | step of a rank | rank, step, start_ns, end_ns, wall_ns, stage, tags (JSON), from the step spans |
| `budget` | step of a rank, as `gpuwatch summary` counts it | rank, step, start_ns, end_ns, wall_ns, stage, tags (JSON), then one `<category>_ns` column per budget category (compute_ns, data_loading_ns, cpu_preprocessing_ns, sync_ns, checkpoint_io_ns, memcpy_ns, host_overhead_ns, unattributed_ns; they sum to wall_ns), sync_wait_ns (of sync, waiting for a later rank) |
| `gpuwatch_meta` | fact about the file | key, value: format, schema_version, run_id, gpuwatch_version, run_dir |

`budget` leaves out warm-up steps, as the summary does. In a consolidated file `runs`, `spans`, `samples`
and `budget` are tables (spans sorted by rank and start); `steps` stays a view over `spans`.
The store cannot compute a budget (that is attribution's, a layer above): callers hand it in as columns.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gpuwatch import __version__
from gpuwatch.errors import RunDirError, RunDirUsageError, UsageError
from gpuwatch.records import SCHEMA_VERSION
from gpuwatch.store.run_reader import RunReader

FORMAT = "gpuwatch-consolidated"
RELATIONS = ("runs", "spans", "samples", "steps", "budget", "gpuwatch_meta")
"""The relations every SQL view of a run offers (see the module docstring)."""

BudgetColumns = Mapping[str, np.ndarray]
"""The `budget` relation's columns (names as documented above), equal-length arrays; an extra
`clock_offset_ns` column (per row, its rank's) fills `runs.clock_offset_ns` instead."""

_STEPS_VIEW = """
CREATE OR REPLACE VIEW steps AS
SELECT rank, step, start_ns, end_ns, end_ns - start_ns AS wall_ns,
       last_value(json_extract_string(attrs, '$.stage') IGNORE NULLS) OVER (
           PARTITION BY rank, pid, tid ORDER BY start_ns ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
       ) AS stage,
       json_extract(attrs, '$.tags') AS tags
FROM spans WHERE kind = 'step'
"""
"""A stage persists until a later step names another (as `gw.step(stage=...)` and the summary have it)."""


def is_consolidated(path: Path) -> bool:
    """True when `path` is a file (a consolidated run), False for a directory."""
    return path.is_file()


def open_sql(path: str | os.PathLike[str], budget: Callable[[], BudgetColumns] | None, query: str) -> Any:
    """A DuckDB connection offering the documented relations of a run directory or consolidated file.

    Args:
        path: a run directory (read while it is written) or a `.duckdb` file from `consolidate`.
        budget: computes the `budget` columns of a run directory; called only when `query` names `budget`.
        query: the SQL to be run (only looked at to skip computing an unused budget).

    Raises:
        RunDirUsageError: `path` is neither (exit 2). RunDirError: the file is not a consolidated run.
    """
    import duckdb

    p = Path(path)
    if is_consolidated(p):
        try:
            con = duckdb.connect(str(p), read_only=True)
            fmt = con.execute("SELECT value FROM gpuwatch_meta WHERE key = 'format'").fetchone()
        except duckdb.Error as exc:
            raise RunDirError(f"{p} is not a consolidated gpuwatch run: {str(exc).splitlines()[0]}") from None
        if not fmt or fmt[0] != FORMAT:
            raise RunDirError(f"{p} is not a consolidated gpuwatch run (no format marker)")
        return con
    if not p.exists():
        raise RunDirUsageError(f"no run directory or consolidated file at {p}")
    reader = RunReader(p)
    con = reader.connection()
    wanted = budget is not None and re.search(r"\b(budget|clock_offset_ns)\b", query, re.I)
    _add_relations(con, reader, budget() if budget is not None and wanted else None)
    return con


def consolidate(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str], budget: BudgetColumns | None
) -> Path:
    """Write every relation of a run into one DuckDB file (atomically: a temp file, then renamed).

    Raises:
        UsageError: `out` exists and is not a file this function wrote.
    """
    import duckdb

    out_path = Path(out)
    if out_path.is_dir():
        raise UsageError(f"{out_path} is a directory; give the .duckdb file to write")
    reader = RunReader(Path(run_dir))
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        con = reader.connection()
        _add_relations(con, reader, budget)
        con.execute(f"ATTACH '{_sql_str(tmp)}' AS out")
        con.execute("CREATE TABLE out.runs AS SELECT * FROM runs ORDER BY rank, pid")
        con.execute("CREATE TABLE out.spans AS SELECT * FROM spans ORDER BY rank, start_ns")
        con.execute("CREATE TABLE out.samples AS SELECT * FROM samples ORDER BY rank, metric, t_ns")
        con.execute("CREATE TABLE out.budget AS SELECT * FROM budget ORDER BY rank, start_ns")
        con.execute("CREATE TABLE out.gpuwatch_meta AS SELECT * FROM gpuwatch_meta")
        con.execute("DETACH out")
        reader.close()
        # the view is made inside the file, so it binds to the file's own tables in any client
        file_con = duckdb.connect(str(tmp))
        try:
            file_con.execute(_STEPS_VIEW)
        finally:
            file_con.close()
        os.replace(tmp, out_path)
    except duckdb.Error as exc:
        raise RunDirError(f"cannot write {out_path}: {str(exc).splitlines()[0]}") from None
    finally:
        reader.close()
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)
    return out_path


def _add_relations(con: Any, reader: RunReader, budget: BudgetColumns | None) -> None:
    """`runs`, `steps`, `budget` and `gpuwatch_meta` beside the reader's `spans`/`samples` views."""
    offsets = budget_offsets(budget)
    rows = [
        (
            w.run.run_id,
            w.run.rank,
            w.run.host,
            w.run.pid,
            w.run.command,
            w.run.world_size,
            w.run.started_at_unix_ns,
            w.offset_ns,
            offsets.get(w.run.rank, 0),
            w.run.tool_version,
            w.run.source,
            w.status,
            w.dropped_spans,
            w.dropped_samples,
            json.dumps(w.run.meta or {}, default=str),
        )
        for w in reader.writers
    ]
    con.execute(
        "CREATE OR REPLACE TABLE runs (run_id VARCHAR, rank INTEGER, host VARCHAR, pid BIGINT, command VARCHAR, "
        "world_size INTEGER, started_at_unix_ns BIGINT, offset_ns BIGINT, clock_offset_ns BIGINT, "
        "tool_version VARCHAR, source VARCHAR, status VARCHAR, dropped_spans BIGINT, dropped_samples BIGINT, "
        "meta JSON)"
    )
    if rows:
        con.executemany("INSERT INTO runs VALUES (" + ", ".join(["?"] * 15) + ")", rows)
    con.execute(_STEPS_VIEW)
    _budget_table(con, budget)
    meta = [
        ("format", FORMAT),
        ("schema_version", str(SCHEMA_VERSION)),
        ("run_id", reader.run_id),
        ("gpuwatch_version", __version__),
        ("run_dir", str(reader.run_dir)),
    ]
    con.execute("CREATE OR REPLACE TABLE gpuwatch_meta (key VARCHAR, value VARCHAR)")
    con.executemany("INSERT INTO gpuwatch_meta VALUES (?, ?)", meta)


BUDGET_TEXT = ("stage", "tags")


def _budget_table(con: Any, budget: BudgetColumns | None) -> None:
    if budget is None:  # a query that does not name it: an empty table with the documented columns
        con.execute(
            "CREATE OR REPLACE TABLE budget AS SELECT * FROM (SELECT NULL::INTEGER AS rank) WHERE false"
        )
        return
    frame = {k: v for k, v in budget.items() if k != "clock_offset_ns"}
    con.register("gw_budget_frame", frame)
    casts = ", ".join(
        f'CAST("{k}" AS {"VARCHAR" if k in BUDGET_TEXT else "INTEGER" if k == "rank" else "BIGINT"}) AS "{k}"'
        for k in frame
    )
    con.execute(f"CREATE OR REPLACE TABLE budget AS SELECT {casts} FROM gw_budget_frame")
    con.unregister("gw_budget_frame")


def budget_offsets(budget: BudgetColumns | None) -> dict[int, int]:
    """The per-rank clock offsets handed in with the budget (`clock_offset_ns`, one value per row)."""
    if budget is None or "clock_offset_ns" not in budget or "rank" not in budget:
        return {}
    return {int(r): int(o) for r, o in zip(budget["rank"].tolist(), budget["clock_offset_ns"].tolist())}


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")
