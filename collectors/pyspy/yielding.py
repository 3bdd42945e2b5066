"""How attach yields the CPU to the job it samples: lowest priority, a CPU budget, the rate it achieved.

Measured on this 2-core machine (`/work/tools`-style probe: a trainer with two DataLoader workers decoding
JPEGs, py-spy 0.4 at 100 Hz, 8 s, py-spy's own CPU time from wait4):
- `--subprocesses` is what costs: 17.5% of a core against 3.9% for the training process alone. Each sample
  of each followed process reads its memory, and the child list is re-scanned. Restarting py-spy every 2 s
  (chunks) adds about 2 points (its start-up parses the interpreter's symbols again).
- So attach samples the training process at the full rate and its workers with a second, sparse py-spy
  (workers only feed the worker breakdown, never the training thread's budget), the workers' py-spy and
  gpuwatch's own sampling threads at the lowest priority an unprivileged process can take (SCHED_IDLE, else
  nice 19), and lowers the rate when a py-spy run used more CPU than its budget.
- The training process's py-spy stays at normal priority, held by that budget alone: at SCHED_IDLE it samples
  only when a core is free, so on a host whose DataLoader workers saturate the cores it saw the training
  thread's CPU work late and its waits early (compute 4-15 points short of the program's own timing, 4 runs;
  within 1 point at normal priority).
- py-spy is lowered only once it says it samples: its chrometrace clock starts when the process starts, and
  its start is the anchor of every timestamp. Started at the lowest priority on a busy host, it began up to
  30 ms after `Popen` returned and every timestamp was that much early. So a thread of normal priority starts
  each py-spy and lowers it right after, and all other sampling work runs at the lowest priority.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def lowest_priority(sched_idle: bool = True) -> str:
    """Move the calling thread (and what it starts from now on) to the lowest CPU priority allowed without
    privileges: SCHED_IDLE where the kernel has it, else nice 19. Never raises; returns what was achieved
    ("SCHED_IDLE", "nice 19", or "unchanged: <why>").

    On Linux both calls act on the calling thread only, so a thread of `gpuwatch top` that runs the capture
    yields while the dashboard's own thread keeps its priority.
    """
    how = "unchanged"
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)  # Linux: the calling thread
        how = "nice 19"
    except (OSError, AttributeError) as exc:
        how = f"unchanged: {exc}"
    if not sched_idle:  # nice 19 alone: a small share that still comes round on a saturated host
        return how
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
        how = "SCHED_IDLE"
    except (OSError, AttributeError):
        pass
    return how


def call_lowered(fn: Callable[[], T]) -> T:
    """Run `fn` in a short-lived thread at the lowest priority (see `lowest_priority`) and return its result;
    threads `fn` starts inherit that priority. The calling thread keeps its own: a library caller (or the
    test runner) that calls `attach()` must not find its thread at SCHED_IDLE afterwards, which an
    unprivileged process could not undo."""
    box: dict[str, Any] = {}

    def body() -> None:
        lowest_priority()
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name="gpuwatch-lowered", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def lower_process(pid: int) -> str:
    """Move every thread of a running process (one of ours: py-spy) to the lowest priority, as
    `lowest_priority` does for the caller; threads it starts later inherit it. Never raises."""
    how = "unchanged"
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError as exc:
        return f"unchanged: {exc}"
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
            how = "nice 19" if how == "unchanged" else how
        except (OSError, AttributeError):
            pass
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
            how = "SCHED_IDLE"
        except (OSError, AttributeError):
            pass
    return how


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (its threads, not its children), or None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (IndexError, ValueError):
        return None


def host_idle_jiffies() -> int | None:
    """Idle + iowait clock ticks of all CPUs since boot (/proc/stat), or None where unreadable."""
    try:
        with open("/proc/stat", "rb") as fh:
            fields = fh.readline().split()
        return int(fields[4]) + int(fields[5])
    except (OSError, IndexError, ValueError):
        return None


def idle_cores(start_jiffies: int | None, end_jiffies: int | None, wall_s: float) -> float | None:
    """Cores the host left idle on average between two `host_idle_jiffies` readings `wall_s` apart."""
    if start_jiffies is None or end_jiffies is None or wall_s <= 0:
        return None
    return max(0.0, (end_jiffies - start_jiffies) / CLOCK_TICKS / wall_s)


SATURATED_BELOW_CORES = 0.5
"""A host that left less than this many cores idle during a py-spy run was saturated: every cycle py-spy
took was one the job wanted."""
IDLE_BUDGET_FACTOR = 4.0
"""While the host has a core to spare, py-spy may use this many times its budget: cycles nobody wanted cost
the job nothing, and the full rate keeps short stretches visible (a cap all the same, against runaways)."""


PRIOR_SAMPLE_CPU_S = 0.8e-3
"""py-spy's CPU per sample before any run has measured it, for a first run on a saturated host: 0.66-0.75 ms
on this 2-core VM for a torch trainer of 3 Python threads (`--nonblocking --idle`, 6 s runs at 20-100 Hz: 175
reads of the target's memory a sample, most of it system time), 0.1-0.2 ms on a bare-metal host."""
STARTUP_PROBE_S = 0.25
"""The shortest look at the host before the first py-spy run decides whether it starts saturated."""


@dataclass(frozen=True, slots=True)
class HostReading:
    """The host's idle ticks and this process's CPU (its reaped children's too) at one moment: two of them
    say how many cores the job left in between (`spare_cores_since`)."""

    t_s: float
    idle_jiffies: int | None
    own_cpu_s: float

    @staticmethod
    def now() -> HostReading:
        t = os.times()
        return HostReading(
            time.monotonic(), host_idle_jiffies(), t.user + t.system + t.children_user + t.children_system
        )

    def spare_cores_since(self, earlier: HostReading) -> float | None:
        """Cores left idle between `earlier` and this reading, plus what this process (and the py-spy runs
        it reaped) used meanwhile: an attach starting up must not take its own start-up for the job's."""
        wall_s = self.t_s - earlier.t_s
        idle = idle_cores(earlier.idle_jiffies, self.idle_jiffies, wall_s)
        if idle is None:
            return None
        return idle + max(0.0, self.own_cpu_s - earlier.own_cpu_s) / wall_s


def spare_cores_at_start(since: HostReading, stop: threading.Event | None = None) -> float | None:
    """The cores the job has left since `since` (taken as attach started), looking for at least
    `STARTUP_PROBE_S` in all (waits for the rest, unless `stop` is set meanwhile)."""
    left = STARTUP_PROBE_S - (time.monotonic() - since.t_s)
    if left > 0:
        if stop is not None:
            stop.wait(left)
        else:
            time.sleep(left)
    return HostReading.now().spare_cores_since(since)


@dataclass(slots=True)
class RateGovernor:
    """The sampling rate of the next py-spy run, kept inside a CPU budget.

    After each run: if py-spy used more than its allowance, the rate drops in proportion (down to `min_hz`);
    while it stays under half the allowance the rate climbs back by a quarter (up to the rate asked for). The
    allowance is `budget_cores` of one core when the host was saturated during the run (or its idle time is
    unknown), `IDLE_BUDGET_FACTOR` times that while it had a core to spare. Runs shorter than half a second
    (start-up dominated) do not move it.
    """

    asked_hz: int
    budget_cores: float
    min_hz: int = 5
    rate_hz: int = 0
    saturated_runs: int = 0
    """Runs during which the host was saturated (reported, with the rate they left)."""
    last_saturated: bool = False
    """Whether the host was saturated during the last run that counted."""

    def __post_init__(self) -> None:
        self.rate_hz = self.asked_hz

    def begin(self, spare_cores: float | None) -> int:
        """The first run's rate, before any run has measured py-spy's cost: on a host that left less than
        `SATURATED_BELOW_CORES` while attach started, what the budget allows at `PRIOR_SAMPLE_CPU_S` a
        sample (the asked rate's first run took 1.5-2 times the budget there, for a whole run); else the
        rate asked. Unknown (None) keeps the rate asked. The first run keeps the short chunk all the same
        (`last_saturated` stays False until a run is measured): a live view (`gpuwatch top --pid`) shows the
        first samples after one chunk, not after five."""
        if spare_cores is None or self.budget_cores <= 0 or spare_cores >= SATURATED_BELOW_CORES:
            return self.rate_hz
        self.rate_hz = max(self.min_hz, min(self.asked_hz, int(self.budget_cores / PRIOR_SAMPLE_CPU_S)))
        return self.rate_hz

    def after_run(self, cpu_s: float | None, wall_s: float, host_idle_cores: float | None = None) -> int:
        """Record one finished py-spy run; returns the rate for the next one."""
        if cpu_s is None or wall_s < 0.5 or self.budget_cores <= 0:
            return self.rate_hz
        saturated = host_idle_cores is None or host_idle_cores < SATURATED_BELOW_CORES
        self.saturated_runs += saturated
        self.last_saturated = saturated
        allowance = self.budget_cores * (1.0 if saturated else IDLE_BUDGET_FACTOR)
        used = cpu_s / wall_s
        if used > allowance:
            self.rate_hz = max(self.min_hz, int(self.rate_hz * allowance / used))
        elif used < allowance / 2 and self.rate_hz < self.asked_hz:
            self.rate_hz = min(self.asked_hz, max(self.rate_hz + 1, int(math.ceil(self.rate_hz * 1.25))))
        return self.rate_hz


RECURRING_SHARE_OF_STEPS = 0.1
"""A category seen in at least this many stretches per detected step is taken to recur in every step (a
checkpoint every 50 steps is not; data waits of 10-45 ms sampled every 60 ms are seen in 1 step of 5)."""


REAL_OVER_MODEL = 1.6
"""How much more py-spy's real samples err than the model of `share_uncertainty_pp` (ideal periodic samples),
which attach's reported uncertainty is multiplied by. Measured on the saturated test target (2 cores, steps of
~41 ms, data waits of ~16 ms, 35-41 Hz, 10 s, its own timing as the truth; a probe of issue 9's session): the
data share erred by -1.5, -3.7 and +0.2 points, per-step errors of 15 ms spread (2.3 points over the window
if independent, and they correlate by 0.2 from one step to the next), where ideal sampling of the same mix
spreads by 1.45 points (simulated) and the model says 1.2-1.4. Counting only the stretches seen, at a sixth
of an interval squared each (before), it said 1.0-1.4. py-spy's samples come late or fail on a busy host."""


def share_uncertainty_pp(
    runs: int, interval_s: float, window_s: float, steps: int = 0, share_pct: float | None = None
) -> float:
    """One standard error (percentage points) of a category's share estimated from periodic samples.

    A stretch of length L sampled every interval D from a random phase is counted k or k + 1 times: off by
    f (1 - f) D^2 in variance, f the fraction of D left over, at most D^2 / 4; a stretch shorter than D is
    counted once with chance L / D, off by L (D - L). Each stretch is given D^2 / 4, or L (D - L) where the
    category's mean stretch L (from `share_pct`) is under D / 2. A stretch shorter than D is often not sampled
    at all, so the stretches seen (`runs`) undercount them: a category seen in at least
    `RECURRING_SHARE_OF_STEPS` stretches per detected step (`steps`) is taken to occupy one in every step.

    Against simulated periodic sampling (tests/unit/test_yielding.py) it is within 30% of the spread, about
    20% short where the interval is twice the stretches (those missed between two samples err together).
    Real sampling errs more: see `REAL_OVER_MODEL`.
    """
    if window_s <= 0 or runs <= 0:
        return 0.0
    stretches = max(runs, steps) if runs >= RECURRING_SHARE_OF_STEPS * steps else runs
    per_stretch = interval_s * interval_s / 4.0
    if share_pct is not None:
        mean_s = share_pct / 100.0 * window_s / stretches
        if mean_s < interval_s / 2:
            per_stretch = mean_s * (interval_s - mean_s)
    return 100.0 * math.sqrt(stretches * per_stretch) / window_s
