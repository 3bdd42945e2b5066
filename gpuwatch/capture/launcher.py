"""`gpuwatch run -- COMMAND...`: start a Python job with the in-process watch in every process of it that trains.

The launcher checks the command (found, Python, able to load gpuwatch), creates the run directory, and starts
the command with `capture/bootstrap/` first on PYTHONPATH and the watch options in the environment
(`run_child.ENV_OPTIONS`); the interpreter's own start-up (`sitecustomize`) does the rest in each process
(`capture/run_child.py`). It then only waits: SIGINT and SIGTERM go on to the child (a Ctrl-C typed in the
terminal already reached it, the child being in the same foreground process group), and when the child
ends, a job that failed has every writer of the run marked `failed` with a note giving the exit status, so
`gpuwatch summary` says so. `RUN_DIR/gpuwatch-job.json` keeps the command and its exit status.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuwatch.capture.run_child import ENV_OPTIONS, ENV_RUN_DIR, ENV_WATCHED
from gpuwatch.errors import UsageError

BOOTSTRAP_DIR = Path(__file__).resolve().parent / "bootstrap"
JOB_FILE = "gpuwatch-job.json"
FAILED = "failed"
_PYTHON_NAME = re.compile(r"^(python|pypy)[0-9.]*[a-z]?(-dbg)?(\.exe)?$")
_FORWARDED = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    """What `gpuwatch run` was asked to do."""

    command: tuple[str, ...]
    """The job's command line, program first."""
    out_dir: Path | None = None
    """Run directory; None = runs/run-<time>."""
    watch: dict[str, Any] = field(default_factory=dict)
    """`gpuwatch.watch` keyword arguments for every watched process (JSON-ready values)."""


@dataclass(frozen=True, slots=True)
class LaunchResult:
    run_dir: Path
    returncode: int
    """The child's: its exit code, or minus the signal that ended it (as `subprocess`)."""
    writers: tuple[str, ...]
    """The run's writer folders (one per watched process)."""

    @property
    def signal_name(self) -> str | None:
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def default_out_dir() -> Path:
    return Path("runs") / f"run-{time.strftime('%Y%m%d-%H%M%S')}"


# ---- the command ------------------------------------------------------------------------------------------
def python_of(command: tuple[str, ...]) -> tuple[str, list[str]]:
    """The Python interpreter a command runs and that interpreter's own options.

    Raises:
        UsageError: the program is not found, or is not Python (a Python script with a `#!` line, a console
            script such as `torchrun`, or an interpreter `python...`).
    """
    if not command:
        raise UsageError("no command given: gpuwatch run [OPTIONS] -- COMMAND [ARGS...]")
    program = command[0]
    path = shutil.which(program) if os.sep not in program else program
    if path is None or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise UsageError(f"command not found: {program}")
    if _PYTHON_NAME.match(os.path.basename(path)):
        return path, list(command[1:])
    shebang = _shebang(path)
    if shebang is not None:
        interpreter, args = shebang
        if interpreter is not None and _PYTHON_NAME.match(os.path.basename(interpreter)):
            return interpreter, args
    raise UsageError(
        f"{program} is not a Python command: gpuwatch run starts Python programs (python ..., torchrun, a "
        "Python script); for anything else use `gpuwatch attach PID` on the Python trainer it starts, or "
        "the Python API (gpuwatch.watch) in the training script"
    )


def _shebang(path: str) -> tuple[str | None, list[str]] | None:
    """(interpreter, its options) from a script's `#!` line, including pip's `/bin/sh` trampoline for long
    paths; None when the file is not a script."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    lines = head.decode(errors="replace").splitlines()
    words = lines[0][2:].split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]  # `env -S python3 -u`
        if not words:
            return None
        found = shutil.which(words[0])
        return found, words[1:]
    if os.path.basename(words[0]) == "sh" and len(lines) > 1 and lines[1].startswith("'''exec'"):
        m = re.match(r"'''exec' \"?([^\"]+)\"? ", lines[1])  # pip: '''exec' "/long/path/python" "$0" "$@"
        return (m.group(1) if m else None), []
    return words[0], words[1:]


def check_python_options(args: list[str]) -> None:
    """Refuse interpreter options that skip the start-up hook (-I, -E, -S). Raises UsageError."""
    for arg in args:
        if arg == "--" or not arg.startswith("-") or arg.startswith("--") or arg == "-":
            break
        letters = arg[1:]
        for flag in letters:
            if flag in "IES":
                why = {"I": "isolated mode ignores PYTHONPATH", "E": "it ignores PYTHON* variables"}.get(
                    flag, "it skips the site module"
                )
                raise UsageError(
                    f"python -{flag}: {why}, so gpuwatch run cannot load its watch; drop -{flag} or use "
                    "gpuwatch.watch in the script"
                )
            if flag in "cmWX":
                break  # the rest of this argument is a value
        if letters[-1:] in ("c", "m"):
            break


def _check_imports(python: str, env: dict[str, str]) -> None:
    """Another interpreter than this one must be able to import gpuwatch. Raises UsageError."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return
    probe = {k: v for k, v in env.items() if k != ENV_OPTIONS}
    try:
        done = subprocess.run(
            [python, "-c", "import gpuwatch.capture.run_child"],
            env=probe,
            capture_output=True,
            timeout=120,
        )
        ok = done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        raise UsageError(
            f"the command's Python ({python}) cannot import gpuwatch: install gpuwatch there, or start "
            f"gpuwatch with that Python ({python} -m gpuwatch run ...)"
        )


# ---- the run directory --------------------------------------------------------------------------------------
def prepare_run_dir(out_dir: Path) -> Path:
    """Create a fresh run directory; returns it as an absolute path. Raises UsageError when it cannot be
    written or is not empty."""
    from gpuwatch.store.run_dir import RUN_FILE, ensure_run_dir

    out = out_dir.absolute()
    if out.exists() and not out.is_dir():
        raise UsageError(f"the run directory is a file: {out}")
    if out.is_dir() and ((out / RUN_FILE).exists() or any(out.iterdir())):
        raise UsageError(f"{out} is not empty (a run is already there?): choose another --out or remove it")
    try:
        ensure_run_dir(out)
    except OSError as exc:
        raise UsageError(f"cannot write the run directory {out}: {exc.strerror or exc}") from None
    return out


def child_env(run_dir: Path, watch: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """The job's environment: the bootstrap first on PYTHONPATH, the run's settings in GPUWATCH_RUN_*."""
    env = dict(os.environ if base is None else base)
    env.pop(ENV_WATCHED, None)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(BOOTSTRAP_DIR) + (os.pathsep + old if old else "")
    env[ENV_RUN_DIR] = str(run_dir)
    env[ENV_OPTIONS] = json.dumps({"run_dir": str(run_dir), "watch": watch})
    return env


# ---- running it -----------------------------------------------------------------------------------------------
def launch(opts: LaunchOptions, *, say: Any = None) -> LaunchResult:
    """Run the job to its end under the watch; returns its exit status and the run.

    Raises:
        UsageError: command not found, not Python, a Python that cannot load gpuwatch or skips start-up
            hooks, an unwritable or non-empty run directory.
    """
    python, py_args = python_of(opts.command)
    check_python_options(py_args)
    run_dir = (opts.out_dir or default_out_dir()).absolute()  # absolute: ranks may change directory
    env = child_env(run_dir, opts.watch)
    _check_imports(python, env)
    prepare_run_dir(run_dir)
    if say is not None:
        say(f"watching `{' '.join(opts.command)}` -> {run_dir}")
    started = time.time_ns()
    returncode = _run(list(opts.command), env)
    writers = finish_run(run_dir, list(opts.command), returncode, started)
    return LaunchResult(run_dir, returncode, tuple(writers))


def _run(command: list[str], env: dict[str, str]) -> int:
    """Start the child, forward SIGINT/SIGTERM to it, wait for it; returns its `returncode`."""
    proc: subprocess.Popen[bytes] | None = None
    pending: list[int] = []
    tty_group = _terminal_reaches_child()

    def forward(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and tty_group:
            return  # typed in the terminal: the child, in our foreground process group, got it already
        if proc is None:
            pending.append(signum)
        elif proc.poll() is None:
            proc.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        try:
            proc = subprocess.Popen(command, env=env)
        except OSError as exc:
            raise UsageError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
        for signum in pending:
            proc.send_signal(signum)
        return proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _terminal_reaches_child() -> bool:
    """Is this process in its terminal's foreground process group (so a typed Ctrl-C reaches the child)?"""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


def finish_run(run_dir: Path, command: list[str], returncode: int, started_unix_ns: int) -> list[str]:
    """Record the job's end: `gpuwatch-job.json`, and on failure every writer marked `failed` with the exit
    status in a note (the processes have exited: nothing else writes these files now)."""
    from gpuwatch.store.run_dir import WRITER_FILE, list_writer_dirs, write_json_atomic

    failed = returncode != 0
    how = (
        f"the job exited with code {returncode}"
        if returncode >= 0
        else f"the job was killed by {LaunchResult(run_dir, returncode, ()).signal_name}"
    )
    writers = []
    for folder in list_writer_dirs(run_dir):
        writers.append(folder.name)
        if not failed:
            continue
        path = folder / WRITER_FILE
        try:
            doc = json.loads(path.read_text())
            doc["status"] = FAILED
            doc.setdefault("notes", {})["job_exit"] = {
                "message": f"{how} (gpuwatch run); the run is kept up to each process's last flush",
                "count": 1,
                "t_unix_ns": time.time_ns(),
            }
            doc.setdefault("meta", {})["job_exit_code"] = returncode
            write_json_atomic(path, doc)
        except (OSError, ValueError):
            continue
    write_json_atomic(
        run_dir / JOB_FILE,
        {
            "command": command,
            "exit_code": returncode,
            "status": FAILED if failed else "ended",
            "how": how,
            "started_at_unix_ns": started_unix_ns,
            "ended_at_unix_ns": time.time_ns(),
            "writers": writers,
        },
    )
    return writers
