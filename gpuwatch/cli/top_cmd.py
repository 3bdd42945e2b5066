"""live dashboard: every rank's time budget, step by step, while the job trains

Follow a run directory while it is written (watch, attach, `gpuwatch run`) or replay a finished one: per rank
the budget over the last N steps (or the whole run) and its trend, step time, the rank the others wait for and
what it is doing, what to change, GPU (NVML) or process (/proc) gauges, and an event log. With --pid, attach
to a running trainer first.

`gpuwatch top RUN_DIR` / `gpuwatch top --pid PID [--out RUN_DIR]`: the live dashboard.

With `--pid`, this layer starts `attach` (the same sampling as `gpuwatch attach`) in a thread writing a run
directory, and hands the dashboard that directory: the dashboard itself only ever follows a run directory.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gpuwatch.cli.arguments import CommandText, pid, positive_int, refresh_s, sample_rate

EPILOG = """\
keys: p pause, r choose rank, w window (last N steps / whole run), e HTML report, q quit, ? help.

exit codes: 0 ok (also when the traced process exits while followed: the run is kept), 1 unreadable run or
attach failure (no ptrace permission, py-spy missing), 2 not a run directory / no such process / bad flag.

Examples:
  gpuwatch top runs/exp1                 # follow a run while watch, attach or `gpuwatch run` writes it
  gpuwatch top runs/exp1 --window 200    # the budget over the last 200 steps
  gpuwatch top --pid 4242                # attach to a running trainer and follow it (temporary run)
  gpuwatch top --pid 4242 --out runs/live   # ... and keep the run
"""


TEXT = CommandText.from_doc(__doc__, epilog=EPILOG, as_written=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run directory (it may not exist yet)")
    p.add_argument("--pid", type=pid, metavar="PID", help="attach to this running trainer and follow it")
    p.add_argument(
        "--out", "-o", metavar="RUN_DIR", help="with --pid: keep the run here (default: a temporary run)"
    )
    p.add_argument(
        "--rate", type=sample_rate, default=100, metavar="HZ", help="with --pid: samples per second"
    )
    p.add_argument(
        "--window", type=positive_int, default=50, metavar="N", help="steps in the live window (default 50)"
    )
    p.add_argument(
        "--refresh", type=refresh_s, default=0.5, metavar="S", help="seconds between refreshes (default 0.5)"
    )


def run(args: argparse.Namespace) -> int:
    from gpuwatch.errors import UsageError

    if (args.run_dir is None) == (args.pid is None):
        raise UsageError("give either a RUN_DIR to follow or --pid PID to attach to, not both or neither")
    if args.pid is None and args.out:
        raise UsageError("--out goes with --pid (RUN_DIR is already where the run is)")
    if args.pid is None:
        run_dir = Path(args.run_dir)
        check_run_dir(run_dir)
        _run_app(run_dir, args, None)
        return 0
    return _top_pid(args)


def check_run_dir(run_dir: Path) -> None:
    """Refuse, before the screen opens, what can never become a run: a file, a folder of other things, a run
    of another schema. A missing or empty folder is fine: the dashboard waits for the run to start."""
    from gpuwatch.errors import RunDirUsageError
    from gpuwatch.store.run_dir import RUN_FILE, read_run_marker

    if run_dir.is_file():
        raise RunDirUsageError(f"not a run directory (it is a file): {run_dir}")
    if (run_dir / RUN_FILE).exists() or (
        run_dir.is_dir() and any(not p.name.startswith(".") for p in run_dir.iterdir())
    ):
        # another schema version, or a folder of other things: the one-line error (a run that lost its
        # marker but has its writer folders is still read)
        read_run_marker(run_dir)


def _run_app(run_dir: Path, args: argparse.Namespace, progress: queue.SimpleQueue[str] | None) -> None:
    from gpuwatch.tui.app import run_top

    run_top(run_dir, window_steps=args.window, refresh_s=args.refresh, progress=progress)


class AttachFeed:
    """`attach` running in a thread into `out_dir`, its progress lines in a queue for the dashboard."""

    def __init__(self, pid: int, out_dir: Path, *, rate_hz: int = 100, chunk_s: float = 2.0) -> None:
        from gpuwatch.capture.attach import AttachOptions

        self.opts = AttachOptions(pid=pid, out_dir=out_dir, rate_hz=rate_hz, chunk_s=chunk_s)
        self.out_dir = out_dir
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.stop_event = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gpuwatch-top-attach", daemon=True)

    def _run(self) -> None:
        from gpuwatch.capture.attach import attach

        try:
            self.result = attach(self.opts, stop=self.stop_event, progress=self.lines.put)
        except BaseException as exc:  # handed to the CLI thread, which reports it in one line
            self.error = exc

    def start(self, timeout_s: float = 60.0) -> None:
        """Start attaching; return once the run directory has its writer. Raises what attach raised if it
        failed before that (no such process, not Python, no permission)."""
        from gpuwatch.errors import AttachError
        from gpuwatch.store.run_dir import list_writer_dirs

        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self.out_dir.is_dir() and list_writer_dirs(self.out_dir):
                return
            time.sleep(0.05)
        if self.error is not None:
            raise self.error
        if self._thread.is_alive():
            self.stop()
            raise AttachError(f"attach to process {self.opts.pid} did not start writing in {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop sampling: attach finishes its current chunk and closes the run."""
        self.stop_event.set()
        self._thread.join(timeout=timeout_s)


def _top_pid(args: argparse.Namespace) -> int:
    from gpuwatch.errors import GpuwatchError

    temp = None
    if args.out:
        out = Path(args.out)
        check_run_dir(out)
    else:
        temp = Path(tempfile.mkdtemp(prefix="gpuwatch-top-"))
        out = temp / "run"
    feed = AttachFeed(args.pid, out, rate_hz=args.rate)
    try:
        feed.start()
        _run_app(out, args, feed.lines)
    finally:
        feed.stop()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    say = f"gpuwatch top: process {args.pid} "
    if feed.result is not None and feed.result.status == "target_exited":
        say += "exited while followed"
    else:
        say += "no longer followed"
    say += "; temporary run removed (--out DIR keeps it)" if temp is not None else f"; run kept in {out}"
    print(say, file=sys.stderr)
    if isinstance(feed.error, GpuwatchError):
        raise feed.error
    return 0
