"""Helpers for the attach tests: start a real target program, read its measured truth, cut it to a window."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import ROOT, cli_env

TARGETS = ROOT / "tests" / "support" / "attach_targets.py"


class Target:
    """A target program (tests/attach_targets.py KIND) started by the test; `pid` once it is in its loop."""

    def __init__(self, kind: str, *args: str | os.PathLike[str], truth: Path | None = None) -> None:
        cmd = [sys.executable, str(TARGETS), kind, *map(str, args)]
        if truth is not None:
            cmd += ["--truth", str(truth)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT
        )
        self.pid = self._read_pid()

    def _read_pid(self, timeout_s: float = 90.0) -> int:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip():
            self.stop()
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"target did not start: {err[-2000:]}")
        return int(line)

    def children(self) -> set[int]:
        """Live child processes of the target (DataLoader workers), from /proc."""
        kids = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                    kids.add(int(entry))
        return kids

    def stop(self) -> None:
        """Kill the target and its DataLoader workers: a worker outlives a killed parent for up to 5 s (its
        watchdog's poll), decoding on the cores the next test measures on."""
        kids = self.children() if self.proc.poll() is None else set()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for pid in kids:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)  # re-parented to pytest (its subreaper, tests/conftest.py)
            except ChildProcessError:
                pass  # not ours to reap: init does it

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def gpuwatch_cmd(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "gpuwatch", *map(str, args)]


def start_cli(*args: str | os.PathLike[str]) -> subprocess.Popen[str]:
    """The real `gpuwatch` command in the background, as a user starts it."""
    return subprocess.Popen(
        gpuwatch_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def truth_pct(path: Path, window_unix_ns: tuple[int, int], file_suffix: str = "") -> dict[str, float]:
    """Share (0-100) of the window each measured phase took: phases cut to the window exactly."""
    w0, w1 = window_unix_ns
    total: Counter[str] = Counter()
    for line in Path(str(path) + file_suffix).read_text().splitlines():
        for name, a, b in json.loads(line)["phases"]:
            total[name] += max(0, min(b, w1) - max(a, w0))
    return {name: 100.0 * ns / (w1 - w0) for name, ns in total.items()}


def steps_truth(path: Path, steps: set[int]) -> dict[str, float]:
    """Share (0-100) of the given steps' wall time each measured phase took (the steps whole, no window)."""
    total: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        if doc["step"] in steps:
            for name, a, b in doc["phases"]:
                total[name] += b - a
    return {name: 100.0 * ns / total["step"] for name, ns in total.items()}


def step_starts(path: Path) -> list[int]:
    """Wall-clock start of every step the program measured."""
    return [json.loads(line)["phases"][0][1] for line in path.read_text().splitlines()]


def run_window(run_dir: Path) -> tuple[int, int, list[int]]:
    """(first step start, last step end, step starts) in unix ns, from the run's step spans."""
    from gpuwatch.store.run_reader import RunReader

    reader = RunReader(run_dir)
    try:
        cols = reader.span_columns()
        steps = cols.kind == "step"
        starts = sorted(int(s) + reader.anchor_unix_ns for s in cols.start_ns[steps])
        end = int(cols.end_ns[steps].max()) + reader.anchor_unix_ns if starts else 0
        return (starts[0] if starts else 0), end, starts
    finally:
        reader.close()


def wait_for(predicate: Any, timeout_s: float, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False
