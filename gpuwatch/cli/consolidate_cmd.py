"""write a run into one DuckDB file (runs, spans, samples, steps, budget)

Write every segment of a run directory into one DuckDB file, with the documented relations runs, spans,
samples, steps (a view), budget (one row per step and rank, as `gpuwatch summary` counts it) and
gpuwatch_meta; open it with any DuckDB client or `gpuwatch sql FILE`.

`gpuwatch consolidate RUN_DIR -o run.duckdb`: a run as one DuckDB file any DuckDB client opens.
"""

from __future__ import annotations

import argparse
import sys

from gpuwatch.cli.arguments import CommandText

TEXT = CommandText.from_doc(
    __doc__,
    epilog="exit codes: 0 ok, 1 unreadable or empty run, 2 not a run directory or bad output path",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (from watch, attach, run or import)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="the .duckdb file to write (replaced)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gpuwatch.attribution.analysis import analyze_run
    from gpuwatch.attribution.budget_table import budget_columns
    from gpuwatch.store.consolidate import consolidate
    from gpuwatch.store.run_dir import read_run_marker

    run_dir = Path(args.run_dir)
    read_run_marker(run_dir)
    out = consolidate(run_dir, args.out, budget_columns(analyze_run(run_dir)))
    print(f"gpuwatch consolidate: wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0
