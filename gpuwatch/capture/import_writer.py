"""The child processes that write an import's segments while the importing process analyses the same
columns (`trace_import.import_to_run`).

Writing starts by importing DuckDB, 0.1 s, which was most of the time an import of HTA's 216k-event trace
spent waiting for its writer. So where one large trace is read half here and half in a forked child
(`split_import`), that child stays on as the writer (`SplitWriter`): once its half is sent it imports DuckDB
while this process merges the halves and finishes the columns, takes them in through a pipe meanwhile (12
MB for that trace's 123k spans), then writes them. Otherwise (several files, a small trace, too many spans
to send) a child forked once the columns exist writes them (`fork_writer`), sharing their pages.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

SPLIT_WRITER_MAX_SPANS = 500_000
"""Above this many spans, pickling them to the split's child costs more than the DuckDB import it saves
(about 0.15 us a span each way): a child forked once the columns exist writes them instead."""


def fork_writer(write_all: Callable[[], None], failure: list[BaseException]) -> int | None:
    """Run `write_all` in a forked child; its pid, or None where this process should not fork (no
    `os.fork`, or other threads running, which a fork would leave half-copied)."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return None
    _flush_std()
    try:
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:  # the child: write, then leave without running the parent's exit handlers
        code = 1
        try:
            write_all()
            code = 1 if failure else 0
        finally:
            os._exit(code)
    return pid


def child_succeeded(pid: int) -> bool:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return False
    return os.waitstatus_to_exitcode(status) == 0


def end_child(pid: int) -> None:
    """Kill a writer child of ours that is no longer wanted, and reap it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child_succeeded(pid)


def _read_all(fd: int, into: list[bytes]) -> None:
    """Everything the pipe `fd` carries until it is closed, appended to `into` (nothing on an error)."""
    try:
        with os.fdopen(fd, "rb") as inp:
            into.append(inp.read())
    except OSError:
        pass


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()  # a buffered line must not be printed by both processes
        except (OSError, ValueError):  # a closed or broken stream: nothing of ours is waiting in it
            pass


class SplitWriter:
    """The split read's child as the import's writer (`split_import.AfterHalf`). `pid` is set when a split
    read made such a child; `send` hands it the writers and their columns, `finish` waits for it, `cancel`
    ends it unused. Its pipe is made before the split's fork, so the child has it."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self._claimed = False
        self._read_fd, self._write_fd = os.pipe()
        try:  # 1 MB instead of 64 KB: the columns pass in a dozen hand-offs, not two hundred
            import fcntl

            fcntl.fcntl(self._write_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except (ImportError, OSError):
            pass

    def claim(self) -> bool:
        """The first split read's child takes the writing; any later one (several large files read one
        after the other) leaves after its half, as without a writer."""
        claimed, self._claimed = self._claimed, True
        return not claimed and self._write_fd >= 0

    # ---- in the split's child ------------------------------------------------------------------------
    def run(self) -> int:
        """Import DuckDB while a thread takes in what arrives, then write it: 0 written, 3 nothing was sent,
        1 failed. The thread empties the pipe as it fills, so the importing process is done sending once it
        has pickled the columns, not once DuckDB is loaded here (HTA's 216k-event trace: its analysis began
        40-70 ms later where this process read the pipe only after the import)."""
        try:
            os.close(self._write_fd)
            received: list[bytes] = []
            reader = threading.Thread(target=_read_all, args=(self._read_fd, received), daemon=True)
            # each read of the 1 MB pipe waits for the GIL, which the import holds: sending the 12 MB took
            # 29-49 ms with 0.2 ms switches, 36-71 ms with the default 5 ms (6 alternated runs)
            sys.setswitchinterval(0.0002)
            reader.start()
            import duckdb  # noqa: F401 - the point: loaded before the columns are all in

            reader.join()
            payload = received[0] if received else b""
            if not payload:
                return 3
            writers, columns = pickle.loads(payload)
            del payload
            for writer, cols in zip(writers, columns, strict=True):
                writer.write_span_columns(cols)
                writer.close()
            return 0
        except BaseException:  # noqa: BLE001 - a failure, Ctrl-C: the importing process writes it all
            return 1

    # ---- in the importing process --------------------------------------------------------------------
    def forked(self, pid: int) -> None:
        self.pid = pid
        self._close("_read_fd")

    def send(self, writers: list[Any], columns: list[Any]) -> bool:
        """Hand the child the writers and their columns; False where there is no child or it is gone."""
        if self.pid is None or self._write_fd < 0:
            return False
        try:
            with os.fdopen(self._write_fd, "wb", closefd=True) as out:
                self._write_fd = -1
                pickle.dump((writers, columns), out, protocol=pickle.HIGHEST_PROTOCOL)
        except (OSError, pickle.PicklingError, TypeError):
            return False
        return True

    def finish(self) -> bool:
        """Wait for the child: True when it wrote everything."""
        return self.pid is not None and child_succeeded(self.pid)

    def cancel(self) -> None:
        """Close the pipe; end the child, if any, unused (it has written nothing) and reap it."""
        self._close("_read_fd")
        self._close("_write_fd")
        if self.pid is not None:
            end_child(self.pid)
            self.pid = None

    def _close(self, name: str) -> None:
        fd = getattr(self, name)
        if fd >= 0:
            setattr(self, name, -1)
            try:
                os.close(fd)
            except OSError:
                pass
