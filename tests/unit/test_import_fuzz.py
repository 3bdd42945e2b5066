"""Importer fuzzing: pieces of the real shared traces, damaged the way files go wrong and the way a hostile
file would be written (tests/support/trace_mutations.py), must each end in a run or in one clear error.

About 10,000 cases per run, cheap by design (about two minutes on two cores):
- 8,000 seeded cases call the importer in-process (`import_trace`), each under a time limit; a tenth of
  them decode in tiny chunks (the chunked path and its fallback), and one imported case in eight is also
  analysed in memory (budget, HTA view, cross-rank, recommendations), as `gpuwatch import` does;
- 2,000 hypothesis cases do the same (a failure shrinks to a small case and prints `@reproduce_failure`);
- 40 cases go the whole way through the store (`import_to_run`, then the summary read back from the
  segments, which must equal the one the import kept);
- 16 cases go through the real command line in a subprocess: exit 0 with a run, or exit 1/2 with exactly
  one line on stderr and nothing on stdout.

The oracle: the importer returns spans that are in order (end >= start >= 0) with bounded names, or raises
a GpuwatchError whose message is one line. Anything else - another exception, a hang past the time limit,
a traceback - is a crash. `GPUWATCH_FUZZ_SEED` replays (or varies) the seeded cases;
`benchmarks/import_fuzz_soak.py` runs many more.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import HTA_TRACES, ROOT, cli_env
from fuzz_oracle import CASE_LIMIT_S, CaseTimeout, analyse_case, import_case, run_case, time_limit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trace_mutations import Base, Case, damaged_traces, load_corpus, random_trace

from gpuwatch.errors import GpuwatchError

SEEDED_CASES = 8_000
SEEDED_CHUNKS = 8  # the seeded cases run as this many tests, so a failure names a smaller range
HYPOTHESIS_CASES = 2_000
STORE_CASES = 40
CLI_CASES = 16
BASE_SEED = int(os.environ.get("GPUWATCH_FUZZ_SEED", "15"))


@pytest.fixture(scope="module")
def corpus() -> list[Base]:
    if not HTA_TRACES.is_dir():
        pytest.skip(f"real traces not found: {HTA_TRACES}")
    return load_corpus(HTA_TRACES)


@pytest.mark.parametrize("chunk", range(SEEDED_CHUNKS))
def test_seeded_damaged_traces(corpus: list[Base], tmp_path: Path, chunk: int) -> None:
    per_chunk = SEEDED_CASES // SEEDED_CHUNKS
    failures: list[str] = []
    imported = 0
    for i in range(chunk * per_chunk, (chunk + 1) * per_chunk):
        case = random_trace(random.Random(BASE_SEED * 1_000_003 + i), corpus)
        try:
            imported += run_case(case, tmp_path, small_chunks=i % 10 == 0, analyse=i % 8 == 0)
        except (Exception, CaseTimeout) as exc:
            failures.append(
                f"case {i} (GPUWATCH_FUZZ_SEED={BASE_SEED}) {case.steps}: {type(exc).__name__}: {exc}"
            )
    assert not failures, f"{len(failures)} of {per_chunk} cases crashed:\n" + "\n".join(failures[:20])
    # the mutations must leave most traces importable, or the deeper paths go untested
    assert imported > per_chunk // 4, imported


@settings(
    max_examples=HYPOTHESIS_CASES,
    deadline=None,  # time_limit is the per-case limit; hypothesis's deadline would flake on a busy host
    database=None,  # nothing written into the checkout; a failure prints @reproduce_failure instead
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(data=st.data())
def test_hypothesis_damaged_traces(
    corpus: list[Base], tmp_path_factory: pytest.TempPathFactory, data: Any
) -> None:
    case = data.draw(damaged_traces(corpus), label="case")
    tmp = _case_dir(tmp_path_factory)
    run_case(case, tmp, small_chunks=data.draw(st.integers(0, 9), label="chunks") == 0, analyse=False)


_DIRS: dict[int, Path] = {}


def _case_dir(factory: pytest.TempPathFactory) -> Path:
    """One scratch folder for all hypothesis cases (a fresh tmp_path per example costs more than a case)."""
    key = id(factory)
    if key not in _DIRS:
        _DIRS[key] = factory.mktemp("hypothesis-case")
    return _DIRS[key]


def test_through_the_store(corpus: list[Base], tmp_path: Path) -> None:
    """Imported for real (Parquet segments, writer records) and read back: the summary from the store is
    the one the import computed in memory and kept."""
    from gpuwatch.attribution.summary import load_summary
    from gpuwatch.capture.trace_import import import_to_run
    from gpuwatch.store import summary_cache

    runs = 0
    for i in range(STORE_CASES):
        case = random_trace(random.Random(BASE_SEED * 7_000_003 + i), corpus)
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        path = case.write(folder)
        try:
            with time_limit(3 * CASE_LIMIT_S):
                import_to_run([str(path)], folder / "run")
        except GpuwatchError:
            continue
        runs += 1
        kept = summary_cache.load(folder / "run")
        with time_limit(3 * CASE_LIMIT_S):
            fresh = load_summary(folder / "run", use_cache=False).to_json()
        assert kept == fresh, (i, case.steps)
    assert runs >= STORE_CASES // 4


def test_through_the_command_line(corpus: list[Base], tmp_path: Path) -> None:
    """A sample through `gpuwatch import` in a subprocess, as a user runs it: exit 0 and a run, or exit 1
    or 2 with exactly one line on stderr, no traceback, nothing on stdout; never a hang."""
    cases: list[tuple[Path, Case, bool]] = []
    want = {True: CLI_CASES // 2, False: CLI_CASES - CLI_CASES // 2}  # half import, half fail
    rng = random.Random(BASE_SEED)
    while any(want.values()):
        case = random_trace(random.Random(rng.getrandbits(64)), corpus)
        folder = tmp_path / f"case{len(cases)}"
        folder.mkdir(exist_ok=True)
        ok = run_case(case, folder, small_chunks=False, analyse=False)  # what the importer says in-process
        if want[ok]:
            want[ok] -= 1
            cases.append((folder, case, ok))

    def cli(item: tuple[Path, Case, bool]) -> tuple[Path, Case, bool, subprocess.CompletedProcess[str]]:
        folder, case, ok = item
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpuwatch",
                "import",
                str(folder / case.file_name),
                "--out",
                str(folder / "run"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        return folder, case, ok, proc

    with ThreadPoolExecutor(max_workers=2) as pool:
        for folder, case, ok, proc in pool.map(cli, cases):
            where = f"{case.steps}: rc={proc.returncode} stderr={proc.stderr[-2000:]!r}"
            assert "Traceback" not in proc.stderr + proc.stdout and "internal error" not in proc.stderr, where
            assert proc.stdout == "", where
            if ok:
                assert proc.returncode == 0 and (folder / "run" / "gpuwatch-run.json").exists(), where
            else:
                assert proc.returncode in (1, 2), where
                assert len(proc.stderr.splitlines()) == 1, where
                assert proc.stderr.startswith("gpuwatch import: "), where


def _trace(events: list[dict[str, Any]], **header: Any) -> bytes:
    import json

    return json.dumps({**header, "traceEvents": events}).encode()


_OP = {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 100, "dur": 10}

# What the fuzzing found, each once as a plain case: (what it was, the file's bytes, what must happen).
FOUND: dict[str, tuple[bytes, str]] = {
    # msgspec raises RecursionError, not one of its own errors, past Python's recursion limit
    "deeply nested args": (
        _trace([_OP]).replace(b'"dur": 10', b'"dur": 10, "args": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000),
        "error",
    ),
    # np.full(n, rank, dtype=int32) overflowed
    "rank past int32": (_trace([_OP], distributedInfo={"rank": 2**53 + 1, "world_size": 8}), "rank 0 of 8"),
    "negative world size": (_trace([_OP], distributedInfo={"rank": 1, "world_size": -4}), "rank 1 of 2"),
    # the step number went into an int64 array
    "huge ProfilerStep number": (
        _trace([_OP, {**_OP, "cat": "user_annotation", "name": "ProfilerStep#99999999999999999999999"}]),
        "ok",
    ),
    # message sizes and sequence numbers past int64
    "huge collective sizes": (
        _trace(
            [
                _OP,
                {
                    **_OP,
                    "name": "record_param_comms",
                    "args": {"In msg nelems": 2**62, "dtype": "Float", "Seq": 2**70},
                },
                {**_OP, "cat": "gpu_memcpy", "pid": 0, "tid": 7, "args": {"bytes": 2**64}},
            ]
        ),
        "ok",
    ),
    # times that do not fit int64 nanoseconds became garbage (a numpy invalid-cast warning), now skipped
    "timestamps out of range": (_trace([_OP, {**_OP, "ts": 1e300}, {**_OP, "dur": 9e15}]), "ok"),
    # a 2 MB name cost seconds in each name rule (a regular expression over the whole name)
    "enormous name": (_trace([{**_OP, "name": "x" * 2_000_000}]), "ok"),
}


@pytest.mark.parametrize("what", sorted(FOUND))
def test_what_fuzzing_found(tmp_path: Path, what: str) -> None:
    data, want = FOUND[what]
    path = tmp_path / "found.json"
    path.write_bytes(data)
    imp = import_case(path)
    if want == "error":
        assert imp is None
    else:
        assert imp is not None
        if want.startswith("rank"):
            assert f"rank {imp.rank} of {imp.world_size}" == want
        assert analyse_case(tmp_path, imp)["ranks"]


def test_a_lying_gzip_trailer_allocates_no_gigabytes(tmp_path: Path) -> None:
    """The last four bytes of a gzip file say how big it inflates; a damaged one said 4 GB, and the importer
    allocated that much before finding out (seconds, and gigabytes of memory)."""
    import gzip
    import resource

    packed = gzip.compress(_trace([_OP]))
    path = tmp_path / "lying.json.gz"
    path.write_bytes(packed[:-4] + (2**32 - 1).to_bytes(4, "little"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert import_case(path) is None  # the size check fails: corrupt gzip
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
