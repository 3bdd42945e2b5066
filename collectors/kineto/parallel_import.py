"""Several ranks' traces imported at once, one process per core.

A million-event rank costs about 3 s of one core to import (inflate, decode, columns), and ranks are
independent until the analysis, so a job's traces are imported side by side when there are several large
ones, cores to spare and memory for them. Each worker is a fresh interpreter (not a fork: the importing
process may already run threads) that imports one file and writes its `ImportedTrace` to its stdout, pickled
whole (numpy columns pickle fast; the object columns share a few hundred distinct strings, which pickle
writes once each). Plain child processes, not a multiprocessing pool, whose resource tracker would outlive
the import in a long-lived caller.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from collectors.kineto.kineto_import import ImportedTrace, NotATraceError, import_trace
from gpuwatch.errors import GpuwatchError

PARALLEL_MIN_BYTES = 64 << 20
"""Below this many bytes of trace files in all, one process does it: starting a worker costs 0.3 s."""
JSON_BYTES_PER_WORKER = 2.5
"""A worker holds a trace's JSON, one chunk of its events and its columns: about twice the JSON at its peak,
so each worker is allowed 2.5 times the largest trace's JSON of the memory available."""
MAX_WORKERS = 8


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
    any other failure is raised here, as the sequential import would."""
    with ThreadPoolExecutor(workers, thread_name_prefix="gpuwatch-import") as pool:
        futures = [pool.submit(_run_worker, path, i) for i, path in enumerate(files)]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


_WORKER = (
    "import json, pickle, sys\n"
    "sys.path[:0] = json.loads(sys.argv[1])\n"
    "from collectors.kineto.parallel_import import worker_main\n"
    "worker_main(sys.argv[2], int(sys.argv[3]))\n"
)


def _run_worker(path: Path, default_rank: int) -> ImportedTrace | NotATraceError:
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps(sys.path), str(path), str(default_rank)],
        capture_output=True,
        check=False,
    )
    try:
        kind, value = pickle.loads(proc.stdout)
    except Exception:  # noqa: BLE001 - no worker (an embedded interpreter, no memory for it): do it here
        try:
            return import_trace(path, default_rank=default_rank)
        except NotATraceError as exc:
            return exc
    if kind == "raise":
        raise value
    return value  # type: ignore[no-any-return]


def worker_main(path: str, default_rank: int) -> None:
    """A worker's body: one file imported, its result (or its error) pickled to stdout."""
    try:
        out: tuple[str, object] = ("ok", import_trace(Path(path), default_rank=default_rank))
    except NotATraceError as exc:
        out = ("ok", exc)
    except GpuwatchError as exc:
        out = ("raise", exc)
    except Exception as exc:  # noqa: BLE001 - a bug of ours: the parent reports it as one
        out = ("raise", RuntimeError(f"{type(exc).__name__}: {exc}"))
    sys.stdout.buffer.write(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.flush()


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
