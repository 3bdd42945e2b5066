"""How long one thread worked: the time it ran on a CPU plus the time it was runnable and waited for one.

A thread's CPU clock alone undercounts its work on a busy host: numpy augmentation that took 0.3 ms of CPU may
take 0.6 ms of wall time while two other processes share the core, and it is those 0.6 ms the training
thread spent on it. Linux keeps that wait per thread in /proc/self/task/TID/schedstat ("run ns, run-queue
wait ns, timeslices"). Its run figure is not used: for a thread that is running it lags by up to a scheduler
tick (4 ms at 250 Hz), which lost 4-6 points of PIL decode in a loader; the CPU clock (`clock_gettime` on the
thread's clock) is exact. The wait is added when the thread gets a core back, so a wait still in progress is
not counted yet. A sleep or a blocking read is in neither figure. Readable from any thread of the process
(~2 us); where schedstat is missing, the CPU clock alone.
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
        if self._cpu_clock is None:
            return -1
        try:
            ran = time.clock_gettime_ns(self._cpu_clock)
        except OSError:
            return -1
        if self._fd < 0:
            return ran
        try:
            _run, waited, _slices = os.pread(self._fd, 96, 0).split()
            return ran + int(waited)
        except (OSError, ValueError):
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
