"""diagnose a running trainer by its pid, with no code change (py-spy, NVML, /proc)

Sample a running Python training process with py-spy (non-blocking), find its training thread, classify what
that thread does into the time budget (data loading, CPU preprocessing, sync, checkpoint I/O, compute), detect
its steps, say what its DataLoader workers spend their time on, and write a run directory while sampling, so
`gpuwatch summary RUN_DIR` works during and after. Stops at --duration, on Ctrl-C, or when the target exits;
then prints the report.

`gpuwatch attach PID [--duration S] [--out RUN_DIR] [--rate HZ] [--thread TID|NAME]`
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from gpuwatch.cli.arguments import CommandText, pid, positive_float, sample_rate

EPILOG = """\
exit codes: 0 ok (also when the target exits while attached: the run is kept), 1 no permission / Python
version py-spy cannot read / py-spy missing or failing, 2 no such process / not a Python process / bad flag.

Needs ptrace access to the target: the same user or root, CAP_SYS_PTRACE in containers, and
kernel.yama.ptrace_scope=0 when Yama restricts it. py-spy always runs --nonblocking (it never stops the
target) and --idle (waiting threads are seen); the target's child processes (DataLoader workers) are
found as they start and sampled each by a py-spy of its own, at --worker-rate and the lowest CPU priority.

Examples:
  gpuwatch attach 4242 --duration 60             # one minute, then the report
  gpuwatch attach 4242 --out runs/slow-job       # until Ctrl-C; `gpuwatch summary runs/slow-job` meanwhile
  gpuwatch attach 4242 --thread 4250             # when the training loop is not the busiest Python thread
"""


TEXT = CommandText.from_doc(__doc__, epilog=EPILOG, as_written=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pid", type=pid, metavar="PID", help="process id of the running trainer (one rank)")
    p.add_argument(
        "--duration",
        "-d",
        type=positive_float,
        metavar="S",
        help="seconds to sample (default: until Ctrl-C)",
    )
    p.add_argument("--out", "-o", metavar="RUN_DIR", help="run directory (default: runs/attach-PID-TIME)")
    p.add_argument(
        "--rate",
        "-r",
        type=sample_rate,
        default=100,
        metavar="HZ",
        help="samples per second per thread (default 100)",
    )
    p.add_argument(
        "--thread",
        "-t",
        metavar="TID|NAME",
        help="the training thread (kernel thread id or name); default: the thread running forward/backward",
    )
    p.add_argument(
        "--no-subprocesses",
        dest="subprocesses",
        action="store_false",
        help="do not follow child processes (DataLoader workers)",
    )
    p.add_argument(
        "--worker-rate",
        type=sample_rate,
        default=None,
        metavar="HZ",
        help="samples per second of the DataLoader workers, by a second py-spy (default: a tenth of --rate, "
        "at least 5): following child processes is what costs most",
    )
    p.add_argument(
        "--cpu-budget",
        type=float,
        default=2.5,  # capture.attach.DEFAULT_CPU_BUDGET_PCT (not imported: the CLI starts without it)
        metavar="PCT",
        help="what sampling may take, in percent of one core, while the host's cores are saturated (default 2.5, "
        "4x that while a core is idle): 60%% of it for the training process's py-spy, 20%% for the workers', "
        "the rest for gpuwatch's own work; a host saturated as attach starts gets first runs inside it already, "
        "a py-spy run over its share lowers the rate of the next one, and the achieved rates are reported "
        "(at 2.5 a saturated 2-core host is sampled at ~18 Hz, at 5 at ~37 Hz: raise it for steps under "
        "~100 ms); 0 = no budget",
    )
    p.add_argument(
        "--no-yield",
        dest="yield_cpu",
        action="store_false",
        help="run the workers' py-spy and gpuwatch's own threads at normal CPU priority too (default: they run "
        "at SCHED_IDLE / nice 19, so a job that keeps every core busy is not slowed by them; the training "
        "process's py-spy always runs at normal priority within --cpu-budget, since at the lowest priority it "
        "would see the training thread's CPU work late on a saturated host)",
    )
    p.add_argument("--no-gpu", dest="gpu", action="store_false", help="do not query NVML")
    p.add_argument(
        "--min-step-confidence",
        type=float,
        default=0.6,
        metavar="C",
        help="use detected steps from this confidence on (0-1, default 0.6)",
    )
    p.add_argument(
        "--chunk",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="seconds per py-spy run: how far the run directory lags behind (default 2)",
    )
    p.add_argument(
        "--py-spy", dest="pyspy", metavar="PATH", help="py-spy executable (default: found on PATH)"
    )
    p.add_argument("--json", action="store_true", help="print the report and summary as one JSON document")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from gpuwatch.capture.attach import AttachOptions, attach, default_out_dir
    from gpuwatch.errors import RunDirError, UsageError

    if not 0.0 <= args.min_step_confidence <= 1.0:
        raise UsageError(f"--min-step-confidence must be between 0 and 1, not {args.min_step_confidence}")
    out = Path(args.out) if args.out else default_out_dir(args.pid)
    opts = AttachOptions(
        pid=args.pid,
        out_dir=out,
        duration_s=args.duration,
        rate_hz=args.rate,
        thread=args.thread,
        subprocesses=args.subprocesses,
        worker_rate_hz=args.worker_rate,
        cpu_budget_pct=args.cpu_budget,
        yield_cpu=args.yield_cpu,
        pyspy=args.pyspy,
        chunk_s=args.chunk,
        min_step_confidence=args.min_step_confidence,
        gpu=args.gpu,
    )

    def say(line: str) -> None:
        if not args.quiet:
            print(f"gpuwatch attach: {line}", file=sys.stderr, flush=True)

    stop = threading.Event()
    presses = [0]

    def on_signal(signum: int, frame: Any) -> None:
        presses[0] += 1
        if presses[0] > 1:  # a second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        say("stopping: finishing the last py-spy chunk and writing the run (Ctrl-C again to abort)")
        stop.set()

    old = {}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    try:
        result = attach(opts, stop=stop, progress=say)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    if result.status == "target_exited":
        say(f"process {args.pid} exited while attached; the run is kept in {out}")
    summary: Any = None
    try:
        from gpuwatch.attribution.analysis import analyze_run
        from gpuwatch.attribution.summary import summarize

        summary = summarize(analyze_run(out))
    except RunDirError as exc:
        say(f"no budget: {exc}")
    if args.json:
        json.dump(
            {"attach": _attach_doc(result), "summary": summary and summary.to_json()}, sys.stdout, indent=1
        )
        sys.stdout.write("\n")
        return 0
    print_report(result, summary)
    return 0


def _attach_doc(result: Any) -> dict[str, Any]:
    return {"run_dir": str(result.run_dir), "status": result.status, **result.report}


def print_report(result: Any, summary: Any, console: Any = None) -> None:
    """The attach findings (training thread, steps, workers), then the summary tables."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    r = result.report
    how = "target exited" if result.status == "target_exited" else "stopped"
    console.print(
        Text(
            f"gpuwatch attach: sampled {r.get('sampled_s', 0):.1f} s ({how}) -> {result.run_dir}",
            style="bold",
        )
    )
    tr = r.get("training_thread")
    if tr:
        pct = r.get("training_thread_pct") or {}
        top = ", ".join(f"{k} {v:.0f}%" for k, v in list(pct.items())[:4])
        console.print(f"  training thread: {tr['tid']} ({tr['name'] or '?'}), {tr['how']}; {top}")
    else:
        console.print("  training thread: not found (no Python samples)")
    det = r.get("step_detection")
    if det:
        if det["used"]:
            console.print(
                f"  steps: {det['steps']} detected, median {det['median_step_ms']:.0f} ms, "
                f"confidence {det['confidence']:.2f} ({det['marker']})"
            )
        else:
            console.print(
                f"  steps: none used (confidence {det['confidence']:.2f} < {det['min_confidence']:.2f}: "
                f"{det['reason']}); the budget covers the whole window"
            )
    workers = r.get("dataloader_workers")
    if workers and workers.get("summary"):
        console.print(f"  workers: {workers['summary']}")
    gpu = r.get("gpu") or {}
    if gpu.get("nvml") and gpu.get("devices"):
        console.print(f"  GPU: devices {gpu['devices']}, compute from NVML utilization")
    if summary is not None:
        from reports.terminal import render_summary

        render_summary(summary, console)
