"""The importer fuzz oracle, shared by tests/unit/test_import_fuzz.py and benchmarks/import_fuzz_soak.py.

A case passes when the importer returns spans in order (end >= start >= 0) with bounded names and a sane
rank, or raises a GpuwatchError whose message is one short line; anything else (another exception, a numpy
overflow warning, a case running past its time limit) is a crash.
"""

from __future__ import annotations

import contextlib
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from trace_mutations import Case

import collectors.kineto.kineto_import as ki
from gpuwatch.errors import GpuwatchError

CASE_LIMIT_S = 10.0
"""A case taking longer than this is a hang (a typical case takes under 10 ms)."""


class CaseTimeout(BaseException):
    """Raised in the case by SIGALRM (a BaseException, so no `except Exception` in the importer eats it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"case ran past {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def import_case(path: Path) -> ki.ImportedTrace | None:
    """Import one case under the oracle: the trace, or None after a clean one-line error. Anything else
    raises (AssertionError for a bad result, the importer's own exception for a crash)."""
    try:
        with time_limit(CASE_LIMIT_S), warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy overflow/invalid-cast warnings mean garbage times
            imp = ki.import_trace(path)
    except GpuwatchError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 2000, message[:300]
        return None
    cols = imp.spans
    assert len(cols) > 0
    assert (cols.start_ns >= 0).all() and (cols.end_ns >= cols.start_ns).all(), "spans out of order"
    assert 0 <= imp.rank < imp.world_size < 2**31, (imp.rank, imp.world_size)
    assert max(map(len, cols.name.tolist())) <= 8192, "a name longer than the import cap"
    return imp


def analyse_case(tmp: Path, imp: ki.ImportedTrace) -> dict[str, Any]:
    """The in-memory analysis `gpuwatch import` keeps next to the run, without its safety net."""
    from gpuwatch.capture.trace_import import summary_of_import
    from gpuwatch.store.run_dir import run_for_process

    run = run_for_process(
        source="import",
        rank=imp.rank,
        pid=imp.pid,
        command="fuzz",
        world_size=imp.world_size,
        started_at_unix_ns=imp.anchor_unix_ns,
        meta={"event_categories": list(imp.event_categories)},
        run_id="fuzz",
    )
    with time_limit(CASE_LIMIT_S):
        return summary_of_import(tmp, "fuzz", [SimpleNamespace(folder=tmp / "w", run=run)], [imp])


def run_case(case: Case, tmp: Path, *, small_chunks: bool, analyse: bool) -> bool:
    """One case through the importer (and maybe the analysis); True when it imported."""
    for old in tmp.iterdir():
        old.unlink()
    path = case.write(tmp)
    saved = ki._CHUNK_BYTES
    if small_chunks:
        ki._CHUNK_BYTES = 512
    try:
        imp = import_case(path)
    finally:
        ki._CHUNK_BYTES = saved
    if imp is not None and analyse:
        doc = analyse_case(tmp, imp)
        assert doc["ranks"], "an imported trace analysed to no rank"
    return imp is not None
