"""import PyTorch profiler (Kineto) traces into a run directory

Import PyTorch profiler (Kineto) Chrome traces - .json or .json.gz, files or directories of per-rank files -
into a gpuwatch run directory, then read it with `gpuwatch summary`. The rank comes from the trace's
distributedInfo, else from 'rank<N>' in the file name. Events of unknown kinds are skipped and counted (shown
with --verbose).

`gpuwatch import PATH... --out RUN_DIR`
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gpuwatch.cli.arguments import CommandText

TEXT = CommandText.from_doc(
    __doc__,
    epilog="exit codes: 0 ok, 1 corrupt or unreadable trace, 2 missing path / empty directory / --out in use",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="trace files or directories holding them")
    p.add_argument("--out", "-o", required=True, metavar="RUN_DIR", help="run directory to create")
    p.add_argument("--verbose", "-v", action="store_true", help="list skipped event kinds per file")


def run(args: argparse.Namespace) -> int:
    from gpuwatch.capture.trace_preload import TracePreload

    preload = TracePreload.start(args.paths)  # inflating while the importer's modules load, next line
    from gpuwatch.capture.trace_import import import_to_run

    def progress(res: Any) -> None:
        skipped = sum(res.skipped.values())
        line = f"imported rank {res.rank}: {len(res.spans)} spans from {res.path}"
        if skipped:
            line += f" ({skipped} events of unknown kinds skipped)"
        print(line, file=sys.stderr)
        if args.verbose:
            for reason, count in sorted(res.skipped.items()):
                print(f"  skipped {count}: {reason}", file=sys.stderr)

    def on_skip(path: Any, reason: str) -> None:
        print(f"skipped {path}: not a PyTorch profiler trace", file=sys.stderr)
        if args.verbose:
            print(f"  {reason}", file=sys.stderr)

    run_id, results = import_to_run(args.paths, args.out, progress=progress, on_skip=on_skip, preload=preload)
    print(
        f"run {run_id} written to {args.out} ({len(results)} rank(s)); next: gpuwatch summary {args.out}",
        file=sys.stderr,
    )
    return 0
