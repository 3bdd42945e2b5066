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
waiting thread CPU time, and its wake-up may wait for a core. On this project's 2-core VM a 1.5 ms
`time.sleep` costs the sleeping thread 30-60 us of its clock. schedstat also counts the thread's timeslices,
one per wait (and one per preemption, or per wait for the GIL): `read` gives them with the work, and
`measure_wait_cost_ns` what one wait costs on this host, for a reader that knows which stretches were waits
(`StackSampler._loader_gap_by_cpu`). The clock itself takes nothing off: a CPU-bound loader that hands the
GIL back and forth begins many timeslices that are no wait of its own, and taking a wait's cost off each took
4-6 points of real PIL decode off a loader (tests/support/planted_imagefolder.py) in 3 runs of 8.
"""

from __future__ import annotations

import os
import threading
import time


class ThreadWorkClock:
    """The work clock of one live thread of this process, by its native id and its `threading` ident."""

    def __init__(self, native_tid: int, ident: int) -> None:
        self.native_tid = native_tid
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

    def ns(self) -> int:
        """Nanoseconds the thread ran or waited to run so far; -1 where it cannot be read (the thread
        ended, or the OS keeps no per-thread CPU clock)."""
        return self.read()[0]

    def read(self) -> tuple[int, int]:
        """(`ns()`, timeslices the thread began so far) in one read; -1 for what cannot be read."""
        if self._cpu_clock is None:
            return -1, -1
        try:
            ran = time.clock_gettime_ns(self._cpu_clock)
        except OSError:
            return -1, -1
        if self._fd < 0:
            return ran, -1
        try:
            _run, waited, slices = os.pread(self._fd, 96, 0).split()
            return ran + int(waited), int(slices)
        except (OSError, ValueError):
            return -1, -1

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


WAIT_PROBES = 24
"""Sleeps `measure_wait_cost_ns` takes."""
WAIT_PROBE_S = 0.001
"""Their length (see the module's docstring); with the work before each, about 30 ms in all."""
WAIT_PROBE_WORK_NS = 50_000
"""CPU work before each sleep: a thread that only sleeps pays less for a wait than one that works between
waits, as a training thread does (this VM: 26-45 us against 36-50 us a wait, alternated)."""


def measure_wait_cost_ns(stop: threading.Event | None = None) -> int:
    """What one wait costs the thread that waits, on this host, in ns of its work clock: the median over
    `WAIT_PROBES` sleeps of the calling thread's own clock across one, per timeslice. Takes about 30 ms of the
    caller's wall time and 1 ms of its CPU (call it on a thread of gpuwatch's own, never the training thread);
    0 where the host keeps no schedstat, or where `stop` is set before it is done."""
    clock = ThreadWorkClock(threading.get_native_id(), threading.get_ident())
    costs: list[float] = []
    try:
        for _ in range(WAIT_PROBES):
            if stop is not None and stop.is_set():
                return 0
            worked = time.thread_time_ns()
            while time.thread_time_ns() - worked < WAIT_PROBE_WORK_NS:
                pass
            before, slices_before = clock.read()
            time.sleep(WAIT_PROBE_S)
            after, slices_after = clock.read()
            if before >= 0 and after >= 0 and slices_after > slices_before >= 0:
                costs.append((after - before) / (slices_after - slices_before))
    finally:
        clock.close()
    return int(sorted(costs)[len(costs) // 2]) if costs else 0
