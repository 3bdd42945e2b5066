"""One large trace read on two cores: this process decodes the first half of its event array, a forked child
the second half, and the child's columns come back through a pipe (`read_split`).

Decoding is most of an import (0.79 of 2.9 s a million events, with 0.68 s more turning events into columns)
and one file gives the per-file workers (`parallel_import`) nothing to share. The child is forked after the
file is inflated, so it reads the same bytes without a copy; what it sends back is its columns and name table,
a tenth of the JSON. Any trouble in the child (a cut that is not between two events, an event of an unusual
shape, memory) and the caller reads the trace in one process, which reports what is wrong with it.

Once its half is sent the child is idle while this process merges and finishes the columns: a caller may give
it more work (`AfterHalf`; `gpuwatch import` has it write the run's segments).
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
from typing import Any, Protocol

from collectors.kineto.kineto_import import (
    _Accumulator,
    _BadCut,
    _chunk_bounds,
    _event_chunks,
    _split_top,
    _WholeTrace,
)

SPLIT_MIN_BYTES = 16 << 20
"""JSON smaller than this is read in one process: forking and the pipe cost ~30 ms, the half saved 0.2 s at
16 MB (a 1M-event trace is ~300 MB)."""
TOP_KEYS = ("distributedInfo", "baseTimeNanoseconds", "deviceProperties")
"""Top-level keys that may follow the event array: the child, which reads the array's end, sends them back."""


def can_split() -> bool:
    """A fork is safe (no other thread would be left half-copied) and a second core is there to run it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return hasattr(os, "fork") and cores >= 2 and threading.active_count() == 1


class AfterHalf(Protocol):
    """More work for the split's child once it has sent its half (`read_split(after=)`): the child is a fork
    of this process with the trace's modules loaded, and idle while this one merges and finishes."""

    def claim(self) -> bool:
        """In this process, before the fork: True if this split's child should take the work (False once
        an earlier split took it: one child only, where several large files are read one by one)."""
        ...

    def run(self) -> int:
        """In the child, after its half is sent: the work, and the child's exit code. Must not raise."""
        ...

    def forked(self, pid: int) -> None:
        """In this process, when the split read succeeded: the child's pid (it runs `run` now; reaping it is
        the caller's). Not called when the read failed: the child is then ended and reaped here."""
        ...


def read_split(
    data: bytes | bytearray, after: AfterHalf | None = None
) -> tuple[_WholeTrace, _Accumulator] | None:
    """The trace's top level and its events in columns, as `kineto_import._read_events` gives them, read half
    here and half in a forked child. None where it cannot be split (no fork, one core, threads running, an
    unusual layout) or the child did not finish: the caller then reads it in one process. `after`: what the
    child does once its half is sent, instead of leaving."""
    if not can_split():
        return None
    found = _split_top(data)
    if found is None:
        return None
    top, events = found
    bounds = _chunk_bounds(events)
    if len(bounds) < 2:
        return None
    half = next(k for k, (lo, _) in enumerate(bounds) if lo >= len(events) // 2 or k == len(bounds) - 1)
    half = max(half, 1)
    if after is not None and not after.claim():
        after = None
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # no memory or process slot for a child: one process reads it
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:  # the child: the second half, pickled into the pipe, then gone without any teardown
        code = 1
        try:
            os.close(read_fd)
            acc = _Accumulator()
            for chunk in _event_chunks(events, top, bounds, range(half, len(bounds))):
                acc.add(chunk)
                del chunk
            payload = pickle.dumps((acc.compact(), [getattr(top, k) for k in TOP_KEYS]), protocol=5)
            with os.fdopen(write_fd, "wb") as out:
                out.write(payload)
            del payload, acc
            code = 0
        except BaseException:  # _BadCut, a bad event, memory, a signal: the parent reads it all itself
            os._exit(code)
        if after is not None:
            try:
                code = after.run()
            except BaseException:  # noqa: BLE001 - its own failure, reported by its exit code
                code = 1
        os._exit(code)
    os.close(write_fd)
    done = False
    with os.fdopen(read_fd, "rb") as inp:
        try:
            acc = _Accumulator()
            try:
                for chunk in _event_chunks(events, None, bounds, range(half)):
                    acc.add(chunk)
                    del chunk
            except _BadCut:
                return None
            payload = inp.read()
            reaped = after is None
            if reaped:
                _, status = os.waitpid(pid, 0)
                ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            else:  # the child goes on to `after.run()`: its half is all there when its payload is
                ok = True
            later: _Accumulator | None = None
            top_values: list[Any] = []
            if ok and payload:
                try:
                    later, top_values = pickle.loads(payload)
                except Exception:  # noqa: BLE001 - a truncated payload: the child did not finish
                    later = None
            done = reaped or later is not None
        finally:
            if not done:  # this half failed (or was interrupted): the child must not outlive it
                _end_child(pid)
    if later is None:
        return None
    if after is not None:
        after.forked(pid)
    acc.merge(later)
    for key, value in zip(TOP_KEYS, top_values):
        if value is not None:
            setattr(top, key, value)
    return top, acc


def _end_child(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
