"""Several ranks' traces imported at once, one process per core.

A million-event rank costs about 2 s of one core to import (inflate, decode, columns), and ranks are
independent until the analysis, so a job's traces are imported side by side when there are several large
ones, cores to spare and memory for them. Each worker is an interpreter of its own (not a fork: the
importing process may already run threads) that imports one file after another and writes each
`ImportedTrace` to its stdout, pickled (the string columns as codes: `SpanColumns.__reduce__`) with its numpy
columns out of band: their bytes follow the pickle as they are, and this process reads them into buffers that
become the arrays, instead of reading the pickle and then copying every column out of it. Plain child
processes, not a multiprocessing pool, whose resource tracker would outlive the import in a long-lived caller.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Generator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

from collectors.kineto.kineto_import import ImportedTrace, NotATraceError, import_trace
from gpuwatch.errors import GpuwatchError

PARALLEL_MIN_BYTES = 64 << 20
"""Below this many bytes of trace files in all, one process does it: starting a worker costs 0.3 s."""
JSON_BYTES_PER_WORKER = 2.5
"""A worker holds a trace's JSON, one chunk of its events and its columns: about twice the JSON at its peak,
so each worker is allowed 2.5 times the largest trace's JSON of the memory available."""
MAX_WORKERS = 8
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
"""glibc's allocator in a worker keeps the memory a file's import freed for the next file's, instead of
giving blocks of 128 KB and more back to the kernel and faulting fresh pages in again (about 6 us a page on
this VM). A worker's peak is its largest file either way. Three 1M-event files in one process: 0.12-0.34 s of
system time for each file after the first without it (4 runs), 0.05-0.06 s with it."""


def worker_count(files: list[Path]) -> int:
    """How many processes should import `files`: 1 unless there are several large ones, cores and memory."""
    if len(files) < 2:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        if cores < 2 or sum(f.stat().st_size for f in files) < PARALLEL_MIN_BYTES:
            return 1
        largest_json = max(_json_bytes(f) for f in files)
    except OSError:
        return 1  # the sequential import reports the unreadable file
    available = _available_memory_bytes()
    by_memory = MAX_WORKERS if available is None else int(available // (JSON_BYTES_PER_WORKER * largest_json))
    return max(1, min(cores, len(files), by_memory, MAX_WORKERS))


def import_each(files: list[Path], workers: int) -> Generator[ImportedTrace | NotATraceError, None, None]:
    """`import_trace` of each file in `workers` processes, in file order (the default rank of a trace that
    names none is its position). A file that is valid JSON but no trace comes back as its NotATraceError;
    any other failure is raised here, as the sequential import would.

    Each worker is started once and imports the next file nobody has taken until none is left: a fresh
    interpreter per file cost 0.15-0.2 s of CPU each (Python, numpy and msgspec imported again), and a
    worker that goes on reuses the memory it freed instead of faulting in new pages. A worker that cannot
    start or dies leaves its file to this process, and the next file gets a new worker."""
    futures: list[Future[ImportedTrace | NotATraceError]] = [Future() for _ in files]
    jobs = iter(list(enumerate(files)))
    take = threading.Lock()
    stop = threading.Event()
    live: list[_Worker] = []

    def serve() -> None:
        worker: _Worker | None = None
        try:
            while not stop.is_set():
                with take:
                    job = next(jobs, None)
                if job is None:
                    return
                index, path = job
                future = futures[index]
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    if worker is None:
                        worker = _Worker.start(live)
                    outcome = worker.run(path, index) if worker is not None else None
                    if outcome is None:  # no worker, or it died on this file: this process imports it
                        worker = _Worker.end(worker, live)
                        if stop.is_set():
                            raise RuntimeError("import stopped")
                        outcome = _import_here(path, index)
                    kind, value = outcome
                    if kind == "raise":
                        future.set_exception(value)
                    else:
                        future.set_result(value)
                except BaseException as exc:  # noqa: BLE001 - reaches the caller through the future
                    future.set_exception(exc)
        finally:
            _Worker.end(worker, live)

    threads = [
        threading.Thread(target=serve, name=f"gpuwatch-import-{k}", daemon=True) for k in range(workers)
    ]
    for thread in threads:
        thread.start()
    done = False
    try:
        for k, future in enumerate(futures):
            outcome = future.result()
            done = k == len(futures) - 1  # closed after the last one: the workers leave as usual
            yield outcome
    finally:
        if not done:  # a file failed the import, or the caller stopped: no more work for anyone
            stop.set()
            for future in futures:
                future.cancel()
            for worker in list(live):
                worker.kill()
        for thread in threads:
            thread.join()


class _Worker:
    """One long-lived worker process: a line (path, default rank) in, a pickle and its buffers out
    (`worker_main`)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, live: list[_Worker]) -> _Worker | None:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER, json.dumps(sys.path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**WORKER_MALLOC_ENV, **os.environ},  # the user's own settings win
            )
        except OSError:  # no interpreter to run (an embedded Python), no process slot
            return None
        worker = cls(proc)
        live.append(worker)
        return worker

    def run(self, path: Path, default_rank: int) -> tuple[str, Any] | None:
        """The worker's outcome for one file, or None when it is gone (it could not start, or died)."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps([str(path), default_rank]).encode() + b"\n")
            stdin.flush()
            reader = cast(io.BufferedReader, stdout)
            head = _read_exactly(reader, 16)
            if head is None:
                return None
            size, count = int.from_bytes(head[:8], "little"), int.from_bytes(head[8:], "little")
            payload = _read_exactly(reader, size)
            buffers = []
            for _ in range(count):
                length = _read_exactly(reader, 8)
                buffer = None if length is None else _read_exactly(reader, int.from_bytes(length, "little"))
                if buffer is None:
                    return None
                buffers.append(buffer)
            if payload is None:
                return None
            return pickle.loads(payload, buffers=buffers)  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - a broken pipe, a truncated or foreign payload
            return None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass

    @staticmethod
    def end(worker: _Worker | None, live: list[_Worker]) -> None:
        """Close `worker`'s input (it leaves when it reads the end) and reap it; None, for the caller."""
        if worker is None:
            return None
        try:
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
        except OSError:
            pass
        try:
            worker.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.proc.wait()
        if worker.proc.stdout is not None:
            worker.proc.stdout.close()
        if worker in live:
            live.remove(worker)
        return None


_WORKER = (
    "import json, sys\n"
    "sys.path[:0] = json.loads(sys.argv[1])\n"
    "from collectors.kineto.parallel_import import worker_main\n"
    "worker_main()\n"
)


def _import_here(path: Path, default_rank: int) -> tuple[str, Any]:
    try:
        return ("ok", import_trace(path, default_rank=default_rank))
    except NotATraceError as exc:
        return ("ok", exc)
    except GpuwatchError as exc:
        return ("raise", exc)


def worker_main() -> None:
    """A worker's body: for each line of stdin (a file and its default rank), the file imported and its
    result (or its error) written to stdout: the pickle's length and its number of out-of-band buffers
    (8 bytes each), the pickle, then each buffer after its length. It leaves at the end of stdin."""
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        path, default_rank = json.loads(line)
        try:
            outcome: tuple[str, object] = _import_here(Path(path), int(default_rank))
        except Exception as exc:  # noqa: BLE001 - a bug of ours: the parent reports it as one
            outcome = ("raise", RuntimeError(f"{type(exc).__name__}: {exc}"))
        buffers: list[pickle.PickleBuffer] = []
        payload = pickle.dumps(outcome, protocol=5, buffer_callback=buffers.append)
        out.write(len(payload).to_bytes(8, "little") + len(buffers).to_bytes(8, "little"))
        out.write(payload)
        for buffer in buffers:
            raw = buffer.raw()
            out.write(raw.nbytes.to_bytes(8, "little"))
            out.write(raw)
        out.flush()
        del outcome, payload, buffers


def _read_exactly(reader: io.BufferedReader, size: int) -> bytearray | None:
    """`size` bytes from `reader` in a buffer of their own, or None where the stream ends first."""
    buffer = bytearray(size)
    return buffer if reader.readinto(buffer) == size else None


def _json_bytes(path: Path) -> int:
    """The uncompressed size of a trace file: the gzip trailer's (modulo 4 GiB), else the file's."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b" or size < 18:
            return size
        fh.seek(-4, os.SEEK_END)
        return max(int.from_bytes(fh.read(4), "little"), size)


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
