"""where each step's time went on every rank, and what to change

Analyse a run directory (also while it is still being written): the time budget per rank (compute,
data_loading, cpu_preprocessing, sync, checkpoint_io, memcpy, host_overhead, unattributed; summing to 100% of
step wall time), step times, HTA's idle/compute/non-compute view, the rank others wait for, and
recommendations with their evidence.

`gpuwatch summary RUN_DIR [--json]`
"""

from __future__ import annotations

import argparse
import json
import sys

from gpuwatch.cli.arguments import CommandText

TEXT = CommandText.from_doc(
    __doc__,
    epilog="exit codes: 0 ok, 1 unreadable or empty run, 2 not a run directory",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (from watch, attach or import)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document on stdout")
    p.add_argument("--rank", type=int, action="append", metavar="N", help="only these ranks (repeatable)")
    p.add_argument(
        "--include-warmup",
        action="store_true",
        help="keep warm-up steps in the budget (by default leading steps more than twice as long as the "
        "median step, at most 3 and at most a quarter of the rest, are reported apart and left out)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute even if the run has ended and its summary is stored next to it (summary-cache.json)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    run_dir = Path(args.run_dir)
    use_cache = not args.rank and not args.no_cache
    if args.json and use_cache and not args.include_warmup:
        from gpuwatch.store import summary_cache

        # the stored document as it is: no numpy, no analysis, not even the record types to import
        doc = summary_cache.load(run_dir)
        if doc is not None:
            json.dump(doc, sys.stdout, indent=1)
            sys.stdout.write("\n")
            return 0
    from gpuwatch.store.run_dir import read_run_marker

    read_run_marker(run_dir)  # not a run / another schema: the one-line error, before the analysis
    from gpuwatch.attribution.summary import load_summary

    summary = load_summary(run_dir, ranks=args.rank, use_cache=use_cache, include_warmup=args.include_warmup)
    if args.json:
        json.dump(summary.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from reports.terminal import render_summary

        render_summary(summary)
    return 0
