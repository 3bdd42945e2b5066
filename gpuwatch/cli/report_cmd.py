"""one offline HTML file: where the time went, what it costs, what to change

Write a self-contained HTML report of a run (from watch, attach or import): compute share, median step time
and what the idle time costs; the speed-up if each cause of idle time went away; the time budget per step and
per rank, with the rank others wait for; a timeline of a few representative steps; NVML and /proc time series
when the run has them; recommendations with their evidence; HTA's temporal breakdown and the TensorBoard
plugin's Overview. plotly.js is inside the file: it opens offline, on any machine. With two runs, the report
shows them side by side with deltas (candidate minus base).

`gpuwatch report RUN [CAND] [-o FILE] [--gpu-hour-price USD]`
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gpuwatch.cli.arguments import CommandText, price

DEFAULT_PRICE_USD = (
    2.50  # the same as reports.html.report_data.DEFAULT_GPU_HOUR_PRICE_USD (checked by a test)
)


TEXT = CommandText.from_doc(
    __doc__,
    epilog="exit codes: 0 ok, 1 unreadable or empty run / cannot write FILE, 2 not a run directory or a "
    "bad option",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="a run directory (the base run when CAND is given)")
    p.add_argument(
        "cand", metavar="CAND", nargs="?", help="a second run directory: write a diff report of RUN -> CAND"
    )
    p.add_argument(
        "-o",
        "--out",
        metavar="FILE",
        help="the HTML file to write (default: report.html, or diff.html with two runs)",
    )
    p.add_argument(
        "--gpu-hour-price",
        type=price,
        default=DEFAULT_PRICE_USD,
        metavar="USD",
        help=f"price of one GPU-hour, for what idle time costs (default: {DEFAULT_PRICE_USD:.2f})",
    )


def run(args: argparse.Namespace) -> int:
    from gpuwatch.errors import GpuwatchError, UsageError
    from gpuwatch.store.run_dir import read_run_marker

    runs = [Path(args.run_dir)] + ([Path(args.cand)] if args.cand else [])
    for path in runs:
        read_run_marker(path)  # not a run / another schema: the one-line error, before any work
    out = Path(args.out or ("diff.html" if args.cand else "report.html"))
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name the HTML file to write")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: directory {out.parent} does not exist")

    from reports.html.report_data import DEFAULT_GPU_HOUR_PRICE_USD, load_report

    reports = [load_report(path) for path in runs]
    if len(reports) == 2:
        from reports.html.diff_page import render_diff

        text = render_diff(
            *reports, gpu_hour_price_usd=args.gpu_hour_price, default_price_usd=DEFAULT_GPU_HOUR_PRICE_USD
        )
    else:
        from reports.html.page import render_report

        text = render_report(
            reports[0], gpu_hour_price_usd=args.gpu_hour_price, default_price_usd=DEFAULT_GPU_HOUR_PRICE_USD
        )
    data = text.encode("utf-8")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise GpuwatchError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"report written to {out} ({len(data) / 1e6:.1f} MB); open it in any browser", file=sys.stderr)
    return 0
