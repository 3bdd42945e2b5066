"""How long one thread worked: the time it ran on a CPU plus the time it was runnable and waited for one.

A thread's CPU clock alone undercounts its work on a busy host: numpy augmentation that took 0.3 ms of CPU may
take 0.6 ms of wall time while two other processes share the core, and it is those 0.6 ms the training
thread spent on it. Linux keeps that wait per thread in /proc/self/task/TID/schedstat ("run ns, run-queue
wait ns, timeslices"). Its run figure is not used: for a thread that is running it lags by up to a scheduler
tick (4 ms at 250 Hz), which lost 4-6 points of PIL decode in a loader; the CPU clock (`clock_gettime` on the
thread's clock) is exact. The wait is added when the thread gets a core back, so a wait still in progress is
not counted yet. A sleep or a blocking read is in neither figure. Readable from any thread of the process
(~2 us); where schedstat is missing, the CPU clock alone.

A wait is not free, though: entering the kernel, arming its timer, switching out and back in cost the
waiting thread CPU time, and its wake-up may wait for a core. On this project's 2-core VM that cost also grows
with the wait: a 0.2 ms `time.sleep` costs the sleeping thread 24-43 us of its clock, a 2 ms one 43-62 us, a
5 ms one 66-97 us. A DataLoader reading sixteen items per batch with a 1.5 ms wait each then read as 2-3
points of a 40 ms step's "work" that the waits themselves did (tests/support/planted_trainer.py, slow_loader:
cpu_preprocessing 8-13% against 6-10% measured). schedstat also counts the thread's timeslices, one per wait,
so the clock takes a `WaitCost` off: so much per timeslice, and a share of the wall time (`measure_wait_cost`
fits both on this host), and the work it reads is the work between waits.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass


class ThreadWorkClock:
    """The work clock of one live thread of this process, by its native id and its `threading` ident."""

    def __init__(self, native_tid: int, ident: int, *, wait_cost: WaitCost | None = None) -> None:
        self.native_tid = native_tid
        self.wait_cost = wait_cost or NO_WAIT_COST
        """Taken off the clock from its creation on (`measure_wait_cost`); `NO_WAIT_COST` counts what
        waits cost as work."""
        self._wall0_ns = time.perf_counter_ns()
        self._slices0 = 0
        self._fd = -1
        self._cpu_clock: int | None = None
        if not _alive(ident):  # a clock of an ended thread is undefined behaviour to ask for
            return
        try:
            self._cpu_clock = time.pthread_getcpuclockid(ident)
        except (AttributeError, OSError, OverflowError):
            return
        try:
            self._fd = os.open(f"/proc/self/task/{native_tid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = -1  # no schedstat on this kernel: CPU time alone
        self._slices0 = max(self.slices(), 0)

    def ns(self) -> int:
        """Nanoseconds the thread ran or waited to run so far, less its `wait_cost`; -1 where it cannot be
        read (the thread ended, or the OS keeps no per-thread CPU clock). With a wait cost it is not
        monotonic: a wait that cost less than the estimate reads as a small step back."""
        if self._cpu_clock is None:
            return -1
        try:
            ran = time.clock_gettime_ns(self._cpu_clock)
        except OSError:
            return -1
        if self._fd < 0:
            return ran
        try:
            _run, waited, slices = os.pread(self._fd, 96, 0).split()
            cost = self.wait_cost
            if cost is NO_WAIT_COST:
                return ran + int(waited)
            waits = (int(slices) - self._slices0) * cost.per_slice_ns
            waits += int(cost.share_of_wall * (time.perf_counter_ns() - self._wall0_ns))
            return max(ran + int(waited) - waits, 0)  # never the -1 of "cannot read"
        except (OSError, ValueError):
            return -1

    def take_off(self, wait_cost: WaitCost) -> None:
        """Take `wait_cost` off the clock from now on."""
        self._wall0_ns, self._slices0 = time.perf_counter_ns(), max(self.slices(), 0)
        self.wait_cost = wait_cost

    def slices(self) -> int:
        """Timeslices the thread began so far (one per wait, and one per preemption); -1 without schedstat."""
        if self._fd < 0:
            return -1
        try:
            return int(os.pread(self._fd, 96, 0).split()[2])
        except (OSError, ValueError, IndexError):
            return -1

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _alive(ident: int) -> bool:
    return ident == threading.get_ident() or any(
        t.ident == ident and t.is_alive() for t in threading.enumerate()
    )


@dataclass(frozen=True, slots=True)
class WaitCost:
    """What a wait costs the waiting thread's work clock: `per_slice_ns` for each timeslice it begins, and
    `share_of_wall` of the time it waits (taken of all wall time: the error is that share of the work)."""

    per_slice_ns: int
    share_of_wall: float


NO_WAIT_COST = WaitCost(0, 0.0)
WAIT_PROBES = 16
"""Sleeps of each length `measure_wait_cost` takes."""
WAIT_PROBE_S = (0.00025, 0.0025)
"""Their two lengths (a read of a cached file, a read from network storage); 45 ms in all."""
WAIT_PROBE_WORK_NS = 50_000
"""CPU work before each sleep: a thread that only sleeps pays less for a wait than one that works between
waits, as a training thread does (this VM: 26-45 us against 36-50 us a wait, alternated)."""
MAX_SHARE_OF_WALL = 0.05
"""A fitted share above this is noise (a preempted probe), not the host's accounting."""


def measure_wait_cost(stop: threading.Event | None = None) -> WaitCost:
    """What a wait costs the thread that waits, on this host: for each of two sleep lengths (alternated),
    the median over `WAIT_PROBES` sleeps of the calling thread's own work clock across one, per timeslice,
    and the line through both. Takes about 45 ms of the caller's wall time and 2 ms of its CPU (call it on a
    thread of gpuwatch's own, never the training thread); `NO_WAIT_COST` where the host keeps no schedstat, or
    where `stop` is set before it is done."""
    clock = ThreadWorkClock(threading.get_native_id(), threading.get_ident())
    costs: tuple[list[float], list[float]] = ([], [])
    try:
        for _ in range(WAIT_PROBES):
            if stop is not None and stop.is_set():
                return NO_WAIT_COST
            for seconds, got in zip(WAIT_PROBE_S, costs):
                worked = time.thread_time_ns()
                while time.thread_time_ns() - worked < WAIT_PROBE_WORK_NS:
                    pass
                before, slices_before = clock.ns(), clock.slices()
                time.sleep(seconds)
                after, slices_after = clock.ns(), clock.slices()
                if before >= 0 and after >= 0 and slices_after > slices_before >= 0:
                    got.append((after - before) / (slices_after - slices_before))
    finally:
        clock.close()
    if not costs[0] or not costs[1]:
        return NO_WAIT_COST
    short_ns, long_ns = (sorted(got)[len(got) // 2] for got in costs)
    short_s, long_s = WAIT_PROBE_S
    share = min(max((long_ns - short_ns) / ((long_s - short_s) * 1e9), 0.0), MAX_SHARE_OF_WALL)
    return WaitCost(max(int(short_ns - share * short_s * 1e9), 0), share)
