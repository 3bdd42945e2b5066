"""The DataLoader workers of an attached process, each sampled by a py-spy of its own.

`py-spy record --subprocesses` on the training process follows its workers, but it rescans the process tree
and samples the parent as well, whatever the rate: beside a job whose two workers kept both cores busy, it
took 3.4% of a core at 10 Hz and 1.5% at 2 Hz. One py-spy per worker, without `--subprocesses`, took 1.9% and
0.4% for the two (15 s windows, `py-spy` 0.4.3, the `saturated` target of tests/support/attach_targets.py).
So gpuwatch finds the workers itself, from the kernel's list of the target's children, and starts one
recorder per worker as it appears; a worker that exits (a new epoch's loader starts new ones) ends its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from collectors.pyspy.pyspy_sampler import PySpyRecorder, process_alive
from collectors.system.proc_sampler import child_pids

MAX_WORKERS = 64
"""Worker processes sampled at once; more (a process pool) are left out, and counted."""


class WorkerRecorders:
    """One `PySpyRecorder` per child process of the target, started by `poll()` as children appear.

    Args:
        target_pid: the attached (training) process.
        make: builds the recorder of one worker pid, given its share of the CPU budget (fraction of a core).
        budget_cores: the workers' CPU allowance in all, shared by the workers found at each poll.
    """

    def __init__(
        self, target_pid: int, make: Callable[[int, float], PySpyRecorder], budget_cores: float
    ) -> None:
        self.target_pid = target_pid
        self._make = make
        self.budget_cores = budget_cores
        self.recorders: dict[int, PySpyRecorder] = {}
        """Every worker sampled so far, by pid (those that ended too: their samples count)."""
        self.left_out = 0
        """Children beyond `MAX_WORKERS` that were not sampled."""

    def poll(self) -> int:
        """Start sampling each child not seen before; returns how many are being sampled now. Call it from
        a thread of normal priority (see `PySpyRecorder.start`)."""
        kids = child_pids(self.target_pid)
        new = [pid for pid in kids if pid not in self.recorders]
        live = [pid for pid in kids if pid in self.recorders and not self.recorders[pid].done.is_set()]
        room = MAX_WORKERS - len(live)
        self.left_out += max(0, len(new) - room)
        new = new[: max(0, room)]
        share = self.budget_cores / max(1, len(live) + len(new))
        for pid in new:
            rec = self._make(pid, share)
            self.recorders[pid] = rec
            rec.start()
        return len(live) + len(new)

    @property
    def started(self) -> bool:
        return bool(self.recorders)

    def stop(self) -> None:
        for rec in self.recorders.values():
            rec.stop()

    @property
    def error(self) -> Exception | None:
        """The first failure of a worker's sampling while that worker still runs (one that exited ended
        its py-spy: not a failure)."""
        for pid, rec in self.recorders.items():
            if rec.error is not None and not rec.target_exited and process_alive(pid):
                return rec.error
        return None

    def stats(self) -> dict[str, Any]:
        """What sampling the workers cost and achieved, over all their py-spy runs (the report's
        `sampling.workers`). CPU is the workers' py-spy CPU time in all over the longest a worker was
        sampled: workers sampled side by side add up, as they cost."""
        recs = list(self.recorders.values())
        stats = [s for rec in recs for s in rec.chunk_stats]
        rates = [(s.per_thread_hz, s.wall_s) for s in stats if s.per_thread_hz is not None]
        rated_s = sum(w for _, w in rates)
        cpu_s = sum(s.cpu_s for s in stats if s.cpu_s is not None)
        cpu_wall = max(
            (sum(s.wall_s for s in r.chunk_stats if s.cpu_s is not None) for r in recs), default=0.0
        )
        first = recs[0] if recs else None
        last_rates = [r.governor.rate_hz for r in recs if not r.done.is_set()] or [
            r.governor.rate_hz for r in recs
        ]
        return {
            "asked_hz": first.governor.asked_hz if first else None,
            "last_rate_hz": round(sum(last_rates) / len(last_rates)) if last_rates else None,
            "achieved_hz": round(sum(r * w for r, w in rates) / rated_s, 1) if rated_s > 0 else None,
            "cpu_pct_of_core": round(100.0 * cpu_s / cpu_wall, 2) if cpu_wall > 0 else None,
            "sampled_s": round(max((sum(s.wall_s for s in r.chunk_stats) for r in recs), default=0.0), 2),
            "priority": first.priority if first else "normal",
            "runs": len(stats),
            "saturated_runs": sum(r.governor.saturated_runs for r in recs),
            "processes": len(recs),
            "processes_left_out": self.left_out,
        }
