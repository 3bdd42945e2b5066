"""What the checks of `gpu_proof.py` run on: `Ctx` (the device, the work folder, the clock, and every child
process, started in a group of its own, with timeouts clipped to the proof's deadline), `Plan` (the command
lines a check will run, which the dry run parses), `Out` and `Line` (one line per assertion), `Check`, and
the small helpers the checks share to read a typed gpuwatch `Summary`.

Rehearsal (`--cpu`): every check runs on the CPU at small sizes; a line then only says whether its figure
was produced (RAN) or not (FAIL), and lines that only a GPU can produce say N/A.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = Path(__file__).resolve().with_name("gpu_proof_programs.py")
PID = "{pid}"
"""Stands for the target's process id in a planned `gpuwatch attach` command line."""


class CheckFailed(Exception):
    """A step of a check could not produce its figures; the message is one line."""


@dataclass(frozen=True, slots=True)
class Line:
    check: str
    name: str
    status: str
    """PASS, FAIL, SKIP (a documented reason, e.g. HTA absent), RAN or N/A (rehearsal on the CPU)."""
    figure: str
    expected: str

    def text(self) -> str:
        return f"{self.status:<4}  {self.name:<30} {self.figure}   [expected: {self.expected}]"


@dataclass(slots=True)
class Plan:
    """What a check will run; the dry run parses every command line with the real parsers."""

    trainer: dict[str, list[str]] = field(default_factory=dict)
    """role -> `python -m reference_trainer` arguments."""
    cli: dict[str, list[str]] = field(default_factory=dict)
    """role -> `gpuwatch` arguments (`{pid}` stands for a process id known only when it runs)."""
    programs: dict[str, list[str]] = field(default_factory=dict)
    """role -> `gpu_proof_programs.py` arguments (kind first; `--out` and `--device` are added)."""
    pyspy: bool = False


@dataclass(slots=True)
class Proc:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"


class Ctx:
    """Where a check runs: the device, the work folder, the clock, and every child process (for the
    watchdog, which kills them with all their descendants)."""

    def __init__(
        self,
        *,
        device: str,
        work: Path,
        artifacts: Path,
        env: dict[str, str],
        deadline: float,
        pyspy: str | None,
        rehearsal: bool = False,
    ) -> None:
        self.device = device
        self.rehearsal = rehearsal
        self.work = work
        self.data_root = work / "data"
        self.artifacts = artifacts
        self.env = env
        self.deadline = deadline
        self.pyspy = pyspy
        self.missing: dict[str, str] = {}
        """Modules that do not import here (found by the env check), with the reason."""
        self.optional: dict[str, bool] = {}
        """Optional modules (HTA, GPU JPEG decoders) and whether they import (found by the env check)."""
        self.procs: set[subprocess.Popen[str]] = set()
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._n = 0

    # ---- processes ---------------------------------------------------------------------------------
    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def start(self, argv: list[str]) -> subprocess.Popen[str]:
        """Start a child in its own process group (stdout piped, stderr to a log file)."""
        self._n += 1
        err = open(self.work / f"child-{self._n:03d}.stderr", "w+")  # noqa: SIM115 (closed in wait)
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )
        proc.stderr_file = err  # type: ignore[attr-defined]
        with self._lock:
            self.procs.add(proc)
        return proc

    def kill(self, proc: subprocess.Popen[str]) -> None:
        """SIGKILL a child, its process group and every descendant: torchrun's ranks and attach's py-spy
        run in sessions of their own, and would otherwise keep the pipes open and the GPU busy."""
        for pid in [proc.pid, *descendants(proc.pid)]:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def wait(self, proc: subprocess.Popen[str], argv: list[str], timeout_s: float, t0: float) -> Proc:
        """Wait for a started child (killing its group at the timeout or the global deadline)."""
        timeout = max(1.0, min(timeout_s, self.time_left() - 3))
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill(proc)
            try:
                out, _ = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:  # something unkillable holds the pipe: stop reading it
                out = ""
                if proc.stdout is not None:
                    proc.stdout.close()
                proc.wait(timeout=15)
        finally:
            with self._lock:
                self.procs.discard(proc)
        err_file = proc.stderr_file  # type: ignore[attr-defined]
        err_file.seek(0)
        err = err_file.read()
        err_file.close()
        result = Proc(argv, proc.returncode, out or "", err, time.monotonic() - t0)
        self.log.append(
            {
                "argv": [str(a) for a in argv],
                "rc": result.rc,
                "seconds": round(result.seconds, 2),
                "stderr_tail": err[-3000:],
            }
        )
        if timed_out:
            raise CheckFailed(f"{short(argv)} timed out after {timeout:.0f} s: {last_line(err)}")
        return result

    def run(self, argv: list[str], *, timeout_s: float, check: bool = True) -> Proc:
        t0 = time.monotonic()
        result = self.wait(self.start(argv), argv, timeout_s, t0)
        if check and result.rc != 0:
            raise CheckFailed(f"{short(argv)} exited {result.rc}: {last_line(result.stderr)}")
        return result

    # ---- the three kinds of command ------------------------------------------------------------------
    def trainer_argv(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "reference_trainer", *args]

    def gpuwatch_argv(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "gpuwatch", *args]

    def program_argv(self, args: list[str], out: Path) -> list[str]:
        return [sys.executable, str(PROGRAMS), *args, "--out", str(out), "--device", self.device]

    def program(self, args: list[str], *, timeout_s: float) -> dict[str, Any]:
        """Run a child program; its figures."""
        self._n += 1
        out = self.work / f"{args[0]}-{self._n:03d}.json"
        self.run(self.program_argv(args, out), timeout_s=timeout_s)
        return dict(json.loads(out.read_text()))

    def summary(self, run_dir: Path | str, *, timeout_s: float = 120) -> Any:
        """The typed Summary of a run, through `gpuwatch summary --json` as a user gets it."""
        from gpuwatch.attribution.summary import Summary

        proc = self.run(self.gpuwatch_argv(["summary", "--json", str(run_dir)]), timeout_s=timeout_s)
        return Summary.from_json(json.loads(proc.stdout))


def descendants(root: int) -> list[int]:
    """Every live descendant of a process, from /proc (read before killing: orphans lose their parent)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def short(argv: list[str]) -> str:
    text = " ".join(str(a) for a in argv[1:6] if a)
    return text.replace(str(ROOT) + "/", "")


class Out:
    """Lines of one check, printed as they come, and its figures."""

    def __init__(self, check: str, rehearsal: bool, emit: Callable[[Line], None]) -> None:
        self.check = check
        self.rehearsal = rehearsal
        self.emit = emit
        self.lines: list[Line] = []
        self.figures: dict[str, Any] = {}

    def line(self, name: str, ok: bool | None, figure: str, expected: str, *, gpu_only: bool = False) -> bool:
        """One assertion; `ok` None: the figure could not be measured."""
        if self.rehearsal:
            status = "N/A" if gpu_only else ("FAIL" if ok is None else "RAN")
        else:
            status = "PASS" if ok else "FAIL"
        self.add(Line(self.check, f"{self.check}.{name}", status, figure, expected))
        return bool(ok)

    def skip(self, name: str, figure: str, reason: str) -> None:
        self.add(Line(self.check, f"{self.check}.{name}", "SKIP", figure, reason))

    def fail(self, name: str, figure: str, expected: str) -> None:
        self.add(Line(self.check, f"{self.check}.{name}", "FAIL", figure, expected))

    def add(self, line: Line) -> None:
        self.lines.append(line)
        self.emit(line)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    title: str
    plan: Callable[[Ctx], Plan]
    run: Callable[[Ctx, Plan, Out], None]
    requires: tuple[str, ...]
    """Modules it imports (here or in its children): a missing one fails the check without running it."""


# ---------------------------------------------------------------------------------------------- helpers


def near(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol


def hook_errors(summary: Any) -> list[str]:
    return [n for n in summary.notes if "hook failed" in n]


def steady_share(rank: Any, category: str, indices: list[int]) -> tuple[float, float]:
    """(percent of wall time in `category`, wall ms) over the per-step rows `indices`."""
    ps = rank.per_step
    wall = sum(ps.wall_ms[i] for i in indices)
    cat = ps.category(category)
    return 100.0 * sum(cat[i] for i in indices) / wall, wall


def all_steps(rank: Any) -> int:
    """Steps of a rank, warm-up steps (left out of its budget) included."""
    w = rank.warmup
    return int(rank.steps) + (w.steps if w is not None and not w.included else 0)


def evidence_names(rank: Any, category: str) -> list[str]:
    return [e.name for e in rank.evidence if e.category == category]


def median_ms(rank: Any) -> float:
    return float(rank.step_time_ms.median)


def on_gpu(ctx: Ctx, gpu: Any, cpu: Any) -> Any:
    return gpu if ctx.device == "cuda" else cpu


def trainer_common(ctx: Ctx, steps: int) -> list[str]:
    return ["--device", ctx.device, "--steps", str(steps), "--data-dir", str(ctx.data_root)]


def run_dir_of(argv: list[str]) -> Path:
    return Path(argv[argv.index("--run-dir") + 1])
