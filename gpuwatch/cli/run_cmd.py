"""run a Python training job with the in-process watch in every rank, no code change

Start a Python training command (python train.py, python -m pkg, torchrun ..., a script that spawns its own
ranks) with gpuwatch's in-process collectors in every process that trains, into one run directory; `gpuwatch
summary RUN_DIR` works while it runs and after.

`gpuwatch run [--out RUN_DIR] [--profile-steps N..M] [watch options] -- COMMAND...`
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gpuwatch.cli.arguments import CommandText, hz, positive_float

EPILOG = """\
exit codes: the command's own (a command killed by a signal: gpuwatch ends by the same signal); 2 command
not found, not a Python command, a Python that cannot load gpuwatch, an unwritable or non-empty run
directory, a bad flag.

Every Python process of the job that trains is watched in-process, into one run directory: the launcher
(torchrun, python -m torch.distributed.run), DataLoader workers and helper processes are not. A process is
watched from its first DataLoader iteration or backward pass (or its own gpuwatch.watch()). Steps come from
the script's gw.step() if it calls it, else from optimizer steps, else from the repeating structure of the
training loop; `gpuwatch summary` says which. Ctrl-C and SIGTERM go to the command; a command that fails
leaves its run readable and marked failed with the exit status.

Examples:
  gpuwatch run -- python train.py --epochs 1
  gpuwatch run --out runs/ddp -- torchrun --nproc-per-node 2 train.py
  gpuwatch run --profile-steps 10..12 -- python -m mypkg.train      # plus a torch.profiler window
  gpuwatch summary runs/ddp                                        # during the run, or after
"""

TEXT = CommandText.from_doc(
    __doc__,
    usage="%(prog)s [OPTIONS] -- COMMAND [ARGS...]",
    epilog=EPILOG,
    as_written=True,
)


def parse_steps(text: str) -> list[int]:
    """`N..M` (steps N through M) or `N` (steps 1 through N) as the watch's (first, stop) pair."""
    try:
        if ".." in text:
            first, last = (int(x) for x in text.split("..", 1))
        else:
            first, last = 1, int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N..M or N, not {text!r}") from None
    if not 0 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected 0 <= N <= M, not {text!r}")
    return [first, last + 1]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", metavar="RUN_DIR", help="run directory (default: runs/run-TIME)")
    p.add_argument(
        "--profile-steps",
        type=parse_steps,
        metavar="N..M",
        help="also record torch.profiler over steps N through M (or 1 through N) in every rank",
    )
    p.add_argument(
        "--sample-hz",
        type=hz,
        default=None,
        metavar="HZ",
        help="stack samples per second of the training thread where no hook covers it (default 50; 0 = off)",
    )
    p.add_argument(
        "--system-interval",
        type=positive_float,
        default=None,
        metavar="S",
        help="seconds between NVML and /proc samples (default 1)",
    )
    p.add_argument(
        "--flush-interval",
        type=positive_float,
        default=None,
        metavar="S",
        help="seconds between writes of the run: at most what a killed rank loses (default 1)",
    )
    p.add_argument(
        "--no-system-samplers",
        dest="system_samplers",
        action="store_false",
        help="do not start the NVML and /proc samplers",
    )
    p.add_argument("--summary", action="store_true", help="print the summary when the command ends")
    p.add_argument("--quiet", "-q", action="store_true", help="no gpuwatch lines on stderr")
    p.add_argument(
        "job", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the job to run, with its arguments"
    )


def watch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `gpuwatch.watch` keyword arguments the flags ask for (the watch's defaults otherwise)."""
    opts: dict[str, Any] = {}
    if args.profile_steps is not None:
        opts["profile_steps"] = args.profile_steps
    if args.sample_hz is not None:
        opts["sample_hz"] = args.sample_hz
    if args.system_interval is not None:
        opts["system_interval_s"] = args.system_interval
    if args.flush_interval is not None:
        opts["flush_interval_s"] = args.flush_interval
    if not args.system_samplers:
        opts["system_samplers"] = False
    return opts


def run(args: argparse.Namespace) -> int:
    from gpuwatch.capture.launcher import LaunchOptions, launch

    command = list(args.job)
    if command[:1] == ["--"]:
        command = command[1:]

    def say(line: str) -> None:
        if not args.quiet:
            print(f"gpuwatch run: {line}", file=sys.stderr, flush=True)

    opts = LaunchOptions(
        command=tuple(command),
        out_dir=Path(args.out) if args.out else None,
        watch=watch_options(args),
    )
    result = launch(opts, say=say)
    how = (
        f"was killed by {result.signal_name}"
        if result.signal_name
        else f"exited with code {result.returncode}"
    )
    if result.writers:
        say(
            f"the command {how}; {len(result.writers)} process(es) watched -> gpuwatch summary {result.run_dir}"
        )
        if args.summary:
            _print_summary(result.run_dir, say)
    else:
        say(
            f"the command {how}; no process of it made a training call (DataLoader iteration, backward "
            f"pass, gpuwatch.watch()): nothing recorded in {result.run_dir}"
        )
    if result.returncode < 0:  # end as the command ended: by the same signal
        signum = -result.returncode
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        except (OSError, ValueError):
            pass
        return 128 + signum
    return result.returncode


def _print_summary(run_dir: Path, say: Any) -> None:
    from gpuwatch.attribution.summary import load_summary
    from gpuwatch.errors import RunDirError
    from reports.terminal import render_summary

    try:
        render_summary(load_summary(run_dir))
    except RunDirError as exc:
        say(f"no summary: {exc}")
