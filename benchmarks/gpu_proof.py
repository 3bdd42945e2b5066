"""Every GPU path of gpuwatch, checked on one real CUDA GPU in one command (issue 17).

    python benchmarks/gpu_proof.py --out gpu_proof.json            # on a GPU machine, from the repo root
    python benchmarks/gpu_proof.py --dry-run                       # anywhere: validate every check
    python benchmarks/gpu_proof.py --cpu --out /tmp/rehearsal.json # anywhere: rehearse them on the CPU

One line per assertion (PASS/FAIL/SKIP, the figure, the expected range), then a JSON file (`--out`) of every
figure, every command with its exit code, time and stderr tail, and the profiler trace beside it for an HTA
comparison elsewhere. The checks (gpu_proof_checks.py, gpu_proof_trainer_checks.py, on gpu_proof_ctx.py)
run their programs (gpu_proof_programs.py), the reference trainer and the `gpuwatch` CLI as child
processes with timeouts, each check on its own: a failing check does not stop the others. Designed to
finish in under 8 minutes on one H200; every timeout is clipped to `--limit-s` (default 540 s = 9 min),
where a watchdog also stops the proof itself, kills every child with its descendants and still writes the
figures it has.

What it needs on the GPU machine: the working tree (no network), a Python with torch (CUDA), numpy,
pillow, rich, nvidia-ml-py — and the wheels that machine lacks, carried in a folder and installed by
`--wheels DIR` into a private folder (nothing else changes there). For Python 3.12 on x86-64 Linux:
    duckdb==2.0.1 msgspec==0.23.0 py-spy==0.4.3    (gpuwatch's own dependencies)
    traceinsight==0.6.1 plotly==7.1.0               (HTA, for the temporal comparison; optional)
`--fetch-wheels DIR` downloads exactly these here (pip, where a registry is reachable).

Exit codes: 0 every line passed (SKIP allowed); 1 a line failed, a check broke, or the time limit hit;
2 no CUDA GPU here and neither --dry-run nor --cpu was given (nothing was proved); with --dry-run, 0 when
every check validated, 1 when one did not.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import gpu_proof_programs as programs  # noqa: E402
from gpu_proof_checks import CHECKS  # noqa: E402
from gpu_proof_ctx import PID, Check, CheckFailed, Ctx, Line, Out  # noqa: E402

LIMIT_S = 540.0
"""The proof stops itself here (9 minutes), whatever is running."""
TARGET_S = 480.0
"""What the checks are sized to finish within on one H200, start-up included."""
MIN_LEFT_S = 25.0
"""A check is not started with less time than this left (or a fifth of a shorter `--limit-s`)."""

WHEELS = ("duckdb==2.0.1", "msgspec==0.23.0", "py-spy==0.4.3", "traceinsight==0.6.1", "plotly==7.1.0")
WHEEL_PLATFORM = [
    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
    "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64",
]  # fmt: skip
"""The GPU machine's Python (3.12, x86-64 manylinux), as the device notes give it."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/gpu_proof.py",
        description="Run every GPU path of gpuwatch for real on one CUDA GPU and assert what must hold.",
        epilog="exit codes: 0 all passed, 1 a check failed, 2 no GPU here (without --dry-run/--cpu)",
    )
    p.add_argument(
        "--out", default="gpu_proof.json", help="JSON file of every figure (default ./gpu_proof.json)"
    )
    p.add_argument("--work", help="scratch folder for data and runs (default: a new temporary folder)")
    p.add_argument("--data-dir", help="the reference trainer's data root to reuse (default: made in --work)")
    p.add_argument("--only", help="comma-separated check names to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("--dry-run", action="store_true", help="validate every check without running it")
    p.add_argument("--cpu", action="store_true", help="rehearse every check on the CPU at small sizes")
    p.add_argument("--wheels", help="folder of wheels to install privately first (see the docstring)")
    p.add_argument("--fetch-wheels", metavar="DIR", help="download the GPU machine's wheels into DIR, exit")
    p.add_argument("--limit-s", type=float, default=LIMIT_S, help="stop everything after this many seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="dry run: one line per check")
    return p


def selected(only: str | None) -> list[Check]:
    if not only:
        return list(CHECKS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {c.name: c for c in CHECKS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"gpu_proof: unknown check(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def cuda_here() -> tuple[bool, str]:
    try:
        import torch

        if torch.cuda.is_available():
            return True, torch.cuda.get_device_name(0)
        return False, f"torch {torch.__version__} sees no CUDA device"
    except Exception as exc:
        return False, f"torch does not import ({type(exc).__name__})"


# ---------------------------------------------------------------------------------------------- dry run


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[Any, str | None]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv), None
    except SystemExit:
        return None, err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "rejected"


def validate(check: Check, ctx: Ctx) -> list[str]:
    """Why `check` would not run as planned (empty: it would): modules, and every command line it plans,
    parsed by the real parsers of the reference trainer, the gpuwatch CLI and the child programs."""
    problems = []
    for module in check.requires:
        try:
            importlib.import_module(module)
        except Exception as exc:
            problems.append(f"module {module} does not import: {type(exc).__name__}: {exc}")
    if not (callable(check.plan) and callable(check.run)):
        return [*problems, "plan/run not callable"]
    plan = check.plan(ctx)
    if plan.trainer:
        from reference_trainer.launch import build_parser as trainer_parser
        from reference_trainer.launch import config_from_args

        for role, argv in plan.trainer.items():
            args, why = _parse(trainer_parser(), argv)
            if why:
                problems.append(f"reference_trainer {role}: {why}")
                continue
            try:
                config_from_args(args)
            except ValueError as exc:
                problems.append(f"reference_trainer {role}: {exc}")
    if plan.cli:
        from gpuwatch.cli.main import build_parser as gpuwatch_parser

        for role, argv in plan.cli.items():
            argv = [a.replace(PID, str(os.getpid())) for a in argv]
            if plan.pyspy:
                argv += ["--py-spy", "py-spy"]
            why = _parse(gpuwatch_parser(), argv)[1]
            if why:
                problems.append(f"gpuwatch {role}: {why}")
    for role, argv in plan.programs.items():
        args, why = _parse(programs.build_parser(), [*argv, "--out", "x.json", "--device", ctx.device])
        if why:
            problems.append(f"program {role}: {why}")
        elif not callable(programs.PROGRAMS.get(args.kind)):
            problems.append(f"program {role}: no program {args.kind!r}")
    return problems


def dry_run(checks: list[Check], verbose: bool) -> int:
    has_gpu, what = cuda_here()
    ctx = Ctx(
        device="cuda",
        work=Path(tempfile.gettempdir()) / "gpu-proof-dry-run",
        artifacts=Path("."),
        env=dict(os.environ),
        deadline=time.monotonic() + 1e9,
        pyspy=None,
    )
    bad = {}
    for check in checks:
        try:
            problems = validate(check, ctx)
        except Exception as exc:  # a check whose plan itself breaks
            problems = [f"plan raised {type(exc).__name__}: {exc}"]
        if problems:
            bad[check.name] = problems
        if verbose or problems:
            print(f"{'OK' if not problems else 'BAD':<4}  {check.name:<10} {check.title}")
            for problem in problems:
                print(f"        {problem}")
    gpu = f"CUDA GPU here ({what})" if has_gpu else f"no CUDA GPU here ({what})"
    verdict = f"{len(checks) - len(bad)} of {len(checks)} checks validated"
    print(f"gpu_proof: {gpu}; dry run only: {verdict}" + (f", failing: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------- the run


class Proof:
    """The lines and figures so far, written out by the main thread or, at the time limit, the watchdog."""

    def __init__(self, args: argparse.Namespace, ctx: Ctx, checks: list[Check], t0: float) -> None:
        self.args, self.ctx, self.checks, self.t0 = args, ctx, checks, t0
        self.lines: list[Line] = []
        self.figures: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.current: str | None = None
        self.done: set[str] = set()
        self.lock = threading.RLock()
        self.finished = False

    def emit(self, line: Line) -> None:
        with self.lock:
            if self.finished:
                return
            self.lines.append(line)
            print(line.text(), flush=True)

    def write(self) -> int:
        failed = [ln for ln in self.lines if ln.status == "FAIL"]
        counts = {s: sum(ln.status == s for ln in self.lines) for s in ("PASS", "FAIL", "SKIP", "RAN", "N/A")}
        doc = {
            "device": self.ctx.device,
            "rehearsal": self.ctx.rehearsal,
            "seconds": round(time.monotonic() - self.t0, 1),
            "limit_s": self.args.limit_s,
            "counts": counts,
            "lines": [asdict(ln) for ln in self.lines],
            "figures": self.figures,
            "check_seconds": self.seconds,
            "errors": self.errors,
            "commands": self.ctx.log,
        }
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, default=str))
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        print(f"gpu_proof: {summary or 'no lines'} in {doc['seconds']:.0f} s; figures in {out}", flush=True)
        return 1 if failed else 0

    def on_time_limit(self) -> None:
        """The watchdog: kill every child, fail what is running and what did not run, write, exit 1."""
        with self.lock:
            for proc in list(self.ctx.procs):
                self.ctx.kill(proc)
            limit = f"stopped at the {self.args.limit_s:.0f} s limit"
            if self.current:
                self.emit(Line(self.current, f"{self.current}.time_limit", "FAIL", limit, "finish in time"))
            for check in self.checks:
                if check.name not in self.done and check.name != self.current:
                    self.emit(Line(check.name, f"{check.name}.not_run", "FAIL", limit, "run"))
            self.write()
            self.finished = True
        sys.stdout.flush()
        os._exit(1)

    def run_check(self, check: Check) -> None:
        out = Out(check.name, self.ctx.rehearsal, self.emit)
        missing = [m for m in check.requires if m in self.ctx.missing]
        if missing:
            out.fail("not_run", f"missing module(s): {', '.join(missing)}", "its modules import")
        elif self.ctx.time_left() < min(MIN_LEFT_S, self.args.limit_s / 5):
            out.fail("not_run", f"only {self.ctx.time_left():.0f} s left", "time to start it")
        else:
            self.current = check.name
            t = time.monotonic()
            try:
                check.run(self.ctx, check.plan(self.ctx), out)
            except CheckFailed as exc:
                out.fail("error", str(exc), "its commands succeed")
            except Exception as exc:  # a bug in the check, or a figure missing from a program's output
                self.errors[check.name] = traceback.format_exc()
                out.fail(
                    "error", f"{type(exc).__name__}: {str(exc)[:300]}", "no exception (traceback in JSON)"
                )
            self.seconds[check.name] = round(time.monotonic() - t, 1)
        with self.lock:
            self.figures[check.name] = out.figures
            self.done.add(check.name)
            self.current = None


def install_wheels(folder: Path, site: Path, env: dict[str, str]) -> Line:
    wheels = sorted(str(p) for p in folder.glob("*.whl"))
    if not wheels:
        return Line("setup", "setup.wheels", "FAIL", f"no wheels in {folder}", "the carried wheels")
    t = time.monotonic()
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--upgrade", "--target", str(site), *wheels]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    ok = proc.returncode == 0
    figure = f"{len(wheels)} wheels in {time.monotonic() - t:.0f} s" + (
        "" if ok else f": {proc.stderr[-300:]}"
    )
    return Line("setup", "setup.wheels", "PASS" if ok else "FAIL", figure, f"installed into {site}")


def fetch_wheels(folder: str) -> int:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *WHEEL_PLATFORM]
    cmd += ["-d", folder, *WHEELS]
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    args = build_parser().parse_args(argv)
    checks = selected(args.only)
    if args.list:
        for c in checks:
            print(f"{c.name:<10} {c.title}")
        return 0
    if args.fetch_wheels:
        return fetch_wheels(args.fetch_wheels)
    if args.dry_run:
        return dry_run(checks, args.verbose)
    has_gpu, what = cuda_here()
    if not has_gpu and not args.cpu:
        print(f"gpu_proof: no CUDA GPU here ({what}): nothing proved (--dry-run validates, --cpu rehearses)")
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-proof-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", GPUWATCH_DEBUG="1")
    site = work / "site"
    paths = ([str(site)] if args.wheels else []) + [str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if args.wheels:
        sys.path.insert(0, str(site))
    ctx = Ctx(
        device="cpu" if args.cpu else "cuda",
        work=work,
        artifacts=Path(args.out).resolve().parent,
        env=env,
        deadline=t0 + args.limit_s,
        pyspy=None,
        rehearsal=args.cpu,
    )
    if args.data_dir:
        ctx.data_root = Path(args.data_dir).resolve()
    proof = Proof(args, ctx, checks, t0)
    watchdog = threading.Timer(args.limit_s - (time.monotonic() - t0), proof.on_time_limit)
    watchdog.daemon = True
    watchdog.start()
    print(
        f"gpu_proof: {len(checks)} checks on {'the CPU (rehearsal)' if args.cpu else what}, in {work}; "
        f"sized for {TARGET_S:.0f} s, stops itself at {args.limit_s:.0f} s",
        flush=True,
    )
    if args.wheels:
        proof.emit(install_wheels(Path(args.wheels), site, env))
        importlib.invalidate_caches()
    ctx.pyspy = programs.find_pyspy()
    for check in checks:
        proof.run_check(check)
    watchdog.cancel()
    with proof.lock:
        proof.finished = False
        code = proof.write()
        proof.finished = True
    return code


if __name__ == "__main__":
    sys.exit(main())
