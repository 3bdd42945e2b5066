"""serve a run's metrics to a fleet monitoring system (Prometheus)

Export a run to another system while it grows. Targets: prometheus.

`gpuwatch export prometheus RUN_DIR [--host 127.0.0.1] [--port 9464]`: a run's budget as `/metrics`.
"""

from __future__ import annotations

import argparse
import sys
import time

from gpuwatch.cli.arguments import CommandText, add_command

TEXT = CommandText.from_doc(
    __doc__,
    epilog="exit codes: 0 stopped (Ctrl-C), 1 cannot listen, 2 not a run directory or an unknown target",
)

PROMETHEUS_TEXT = CommandText(
    help="serve /metrics for Prometheus (and Grafana): budget ratios, step time, steps, drops per rank",
    description="Serve /metrics for a run while it is written: gpuwatch_budget_ratio{rank,category} (0-1, "
    "over the last --window-steps steps), gpuwatch_step_time_seconds{rank}, gpuwatch_steps_total{rank}, "
    "gpuwatch_records_dropped_total{rank}. Values are those of `gpuwatch summary --json` (per_step) over "
    "the same steps. Listens on loopback unless --host says otherwise; runs until interrupted.",
    epilog="exit codes: 0 stopped (Ctrl-C), 1 cannot listen, 2 not a run directory",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    prom = add_command(targets, "prometheus", PROMETHEUS_TEXT)
    prom.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (read while it is written)")
    prom.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    prom.add_argument("--port", type=int, default=9464, help="TCP port (default 9464; 0: any free port)")
    prom.add_argument(
        "--window-steps", type=int, default=20, metavar="N", help="recent steps per rank the ratios cover"
    )
    prom.add_argument("--rank", type=int, action="append", metavar="N", help="only these ranks (repeatable)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gpuwatch.errors import GpuwatchError, UsageError
    from gpuwatch.store.run_dir import read_run_marker

    run_dir = Path(args.run_dir)
    read_run_marker(run_dir)
    if args.window_steps < 1:
        raise UsageError("--window-steps must be at least 1")
    from reports.prometheus import serve

    try:
        server = serve(
            run_dir, host=args.host, port=args.port, window_steps=args.window_steps, ranks=args.rank
        )
    except OSError as exc:
        raise GpuwatchError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"gpuwatch export: serving {server.url} for {run_dir} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()
