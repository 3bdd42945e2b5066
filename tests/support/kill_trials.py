"""SIGKILL trials: a 2-rank watched trainer (tests/support/fault_trainer.py, gloo) killed at a random moment,
then its run read back and compared with what each rank logged before it died.

Each rank prints `step I T_UNIX` (flushed) after each step; gpuwatch writes a step span per step. After
the kill the run must be readable (`load_summary`), and on each rank every step the program logged more
than one flush interval before the kill must be in the run: `lost_s`, how long before the kill the oldest
logged step the run does not hold was done, is what the kill cost that rank (at most one flush interval,
plus the time a busy host keeps the writer thread waiting for a core).

Used by tests/integration/test_kills.py (a few trials) and benchmarks/kill_soak.py (50).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "tests" / "support" / "fault_trainer.py"
FLUSH_INTERVAL_S = 0.1
"""Short, so a few seconds hold dozens of flushes and a compaction (every 64 segments) or two."""


@dataclass(frozen=True)
class RankOutcome:
    rank: int
    logged: int
    """Steps the program logged as done before it was killed."""
    recorded: int
    """Step spans the run holds."""
    lost_s: float
    """Kill time minus the logged time of the oldest step the program logged but the run does not hold
    (0 when it holds every logged step): how far back the kill reached."""


@dataclass(frozen=True)
class Trial:
    kill_after_s: float
    ranks: tuple[RankOutcome, ...]
    readable: bool
    error: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(rank: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GPUWATCH_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "tests" / "support"), env.get("PYTHONPATH", "")]
    )
    env.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


def kill_trial(tmp: Path, rng: random.Random, *, kill_window_s: tuple[float, float] = (1.0, 4.0)) -> Trial:
    """Start both ranks, SIGKILL both at a random moment of `kill_window_s` after both stepped, read the run."""
    run_dir = tmp / "run"
    port = _free_port()
    procs = []
    for rank in (0, 1):
        args = [sys.executable, str(PROGRAM), "--world", "2", "--run-dir", str(run_dir), "--steps", "100000"]
        args += ["--progress", "--step-ms", "8", "--flush-interval", str(FLUSH_INTERVAL_S)]
        procs.append(
            subprocess.Popen(
                args,
                cwd=tmp,
                env=_env(rank, port),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    logs: list[list[tuple[int, float]]] = [[], []]
    started = threading.Barrier(3)

    def follow(rank: int) -> None:
        out = procs[rank].stdout
        assert out is not None
        first = True
        for line in out:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "step":
                logs[rank].append((int(parts[1]), float(parts[2])))
                if first:
                    first = False
                    started.wait(timeout=300)
        if first:  # died before its first step: release the waiter
            started.abort()

    readers = [threading.Thread(target=follow, args=(r,), daemon=True) for r in (0, 1)]
    for t in readers:
        t.start()
    kill_after = rng.uniform(*kill_window_s)
    try:
        started.wait(timeout=300)
        time.sleep(kill_after)
    except threading.BrokenBarrierError:
        pass
    finally:
        kill_unix = time.time()
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait(timeout=60)
        for t in readers:
            t.join(timeout=30)
    return _read_back(run_dir, logs, kill_unix, kill_after)


def _read_back(
    run_dir: Path, logs: list[list[tuple[int, float]]], kill_unix: float, kill_after: float
) -> Trial:
    from gpuwatch.attribution.summary import load_summary
    from gpuwatch.errors import GpuwatchError
    from gpuwatch.store.run_reader import RunReader

    try:
        load_summary(run_dir, use_cache=False)
        reader = RunReader(run_dir)
        try:
            rows = reader.query(
                "SELECT rank, count(*) FROM spans WHERE kind = 'step' GROUP BY rank"
            ).fetchall()
        finally:
            reader.close()
    except GpuwatchError as exc:
        return Trial(kill_after, (), False, str(exc))
    recorded = {int(r): int(n) for r, n in rows}
    outcomes = []
    for rank in (0, 1):
        got = recorded.get(rank, 0)
        log = logs[rank]
        lost_s = kill_unix - log[got][1] if got < len(log) else 0.0
        outcomes.append(RankOutcome(rank, len(log), got, lost_s))
    return Trial(kill_after, tuple(outcomes), True)
