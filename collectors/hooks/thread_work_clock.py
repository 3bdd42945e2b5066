"""How long one thread worked: the time it ran on a CPU plus the time it was runnable and waited for one.

Linux keeps both per thread in /proc/self/task/TID/schedstat ("run ns, run-queue wait ns, timeslices"). A
thread's CPU clock alone undercounts its work on a busy host: numpy augmentation that took 0.3 ms of CPU may
take 0.6 ms of wall time while two other processes share the core, and it is those 0.6 ms the training
thread spent on it. A sleep or a blocking read is in neither figure. Read from any thread of the process
(~2 us: one pread of a file kept open); where schedstat is missing, the thread's CPU clock stands in.
"""

from __future__ import annotations

import os
import threading
import time


class ThreadWorkClock:
    """The work clock of one thread of this process, by its native id (`threading.get_native_id()`)."""

    def __init__(self, native_tid: int, ident: int) -> None:
        self.native_tid = native_tid
        self._fd = -1
        self._cpu_clock: int | None = None
        try:
            self._fd = os.open(f"/proc/self/task/{native_tid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            # no schedstat on this kernel (or no /proc): the CPU clock of a thread that still runs (asking
            # for a clock of an ended one is undefined behaviour)
            if not os.path.exists("/proc/thread-self/schedstat") and _alive(ident):
                try:
                    self._cpu_clock = time.pthread_getcpuclockid(ident)
                except (AttributeError, OSError, OverflowError):
                    self._cpu_clock = None

    def ns(self) -> int:
        """Nanoseconds the thread ran or waited to run so far; -1 where neither clock can be read (the
        thread ended, or the OS keeps no such figures)."""
        if self._fd >= 0:
            try:
                ran, waited, _slices = os.pread(self._fd, 96, 0).split()
                return int(ran) + int(waited)
            except (OSError, ValueError):
                return -1
        if self._cpu_clock is not None:
            try:
                return time.clock_gettime_ns(self._cpu_clock)
            except OSError:
                return -1
        return -1

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _alive(ident: int) -> bool:
    return any(t.ident == ident and t.is_alive() for t in threading.enumerate())
