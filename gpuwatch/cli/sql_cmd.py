"""run SQL over a run (relations runs, spans, samples, steps, budget)

Run one SQL query over a run directory (also while it is written) or a file from `gpuwatch consolidate`.
Relations: runs, spans, samples, steps, budget, gpuwatch_meta (columns documented in
gpuwatch/store/consolidate.py and the README). Times are integer nanoseconds on the run's timeline.

`gpuwatch sql RUN "SELECT ..."`: SQL over a run directory (live) or a consolidated `.duckdb` file.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from gpuwatch.cli.arguments import CommandText
from gpuwatch.errors import RunDirError, UsageError

TEXT = CommandText.from_doc(
    __doc__,
    epilog='example: gpuwatch sql runs/exp1 "SELECT rank, avg(data_loading_ns) / 1e6 AS data_ms FROM '
    'budget GROUP BY rank"\nexit codes: 0 ok, 1 unreadable run, 2 not a run or a bad query',
    as_written=True,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run directory or a consolidated .duckdb file")
    p.add_argument("query", metavar="SQL", help="the query (one statement)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print CSV (with a header) instead of a table")
    out.add_argument("--json", action="store_true", help="print a JSON list of row objects")


def run(args: argparse.Namespace) -> int:
    import duckdb

    from gpuwatch.store.consolidate import open_sql

    def budget() -> Any:
        from gpuwatch.attribution.analysis import analyze_run
        from gpuwatch.attribution.budget_table import budget_columns

        return budget_columns(analyze_run(args.run))

    con = open_sql(args.run, budget, args.query)
    try:
        cursor = con.execute(args.query)
        columns = [d[0] for d in cursor.description or []]
        rows = cursor.fetchall() if columns else []
    except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException) as exc:
        raise UsageError(f"bad query: {str(exc).splitlines()[0]}") from None
    except duckdb.Error as exc:
        raise RunDirError(f"query failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    if args.json:
        json.dump([dict(zip(columns, r)) for r in rows], sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    elif args.csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(columns)
        w.writerows(rows)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns, show_lines=False)
        for r in rows:
            table.add_row(*("NULL" if v is None else str(v) for v in r))
        Console().print(table)
        print(f"{len(rows)} rows", file=sys.stderr)
    return 0
