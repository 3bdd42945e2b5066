"""Readers and writers together: 8 writing processes (the real segment writer, flushing every 50 ms and
compacting every 64 segments; tests/support/rw_writer.py) while `summary` (RunReader), `top`'s reader
(RunTail) and `report` read the run over and over. No reader fails or sees a torn or damaged segment, the
incremental reader ends with exactly the rows every writer wrote (none twice, none missing across
compactions), and the writers keep their pace and drop nothing.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, run_cli

from gpuwatch.attribution.summary import load_summary
from gpuwatch.errors import RunDirError
from gpuwatch.store.run_tail import RunTail

WRITERS = 8
ALONE_S = 2.0  # once every writer has flushed, this long without readers gives their pace alone
READING_S = 6.0  # then the readers read this long while the writers write
WRITER_ARGS = ("--seconds", "600", "--flush-interval", "0.05", "--spans-per-step", "10", "--step-ms", "10")
"""About 100 steps a second per writer; a compaction every 3.2 s per writer and table."""


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """The 8 writing processes (they write until `tmp_path/stop` exists; stopped at the end either way)."""
    program = ROOT / "tests" / "support" / "rw_writer.py"
    stop_file = tmp_path / "stop"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(program),
                str(tmp_path / "run"),
                str(rank),
                "--until",
                str(stop_file),
                *WRITER_ARGS,
            ],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(WRITERS)
    ]
    yield procs
    stop_file.touch()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_summary_top_and_report_read_while_eight_writers_write(
    tmp_path: Path, writers: list[subprocess.Popen[str]]
) -> None:
    run = tmp_path / "run"
    stop_file = tmp_path / "stop"
    t_start = time.monotonic()
    stop = threading.Event()
    failures: list[str] = []
    reads: Counter[str] = Counter()
    tail_rows: Counter[str] = Counter()

    def summaries() -> None:
        while not stop.is_set():
            try:
                s = load_summary(run, use_cache=False)
                bad = [n for n in s.notes if "segment" in n or "skipped" in n or "damaged" in n]
                if bad:
                    failures.append(f"summary saw damage: {bad}")
                reads["summary"] += 1
            except RunDirError as exc:
                if "no spans yet" not in str(exc) and "no data yet" not in str(exc):
                    failures.append(f"summary: {exc}")
            except Exception as exc:  # noqa: BLE001 - any crash of a reader is the failure we look for
                failures.append(f"summary crashed: {type(exc).__name__}: {exc}")
            stop.wait(0.2)  # a user re-running `gpuwatch summary`, not a spin (two shared cores)

    tail = RunTail(run)

    def follow() -> None:
        while True:
            last = stop.is_set()
            try:
                batch = tail.poll()
                for chunk in batch.chunks:
                    tail_rows[chunk.writer] += len(chunk.spans)
                for w in batch.writers:
                    if any(k.startswith("segment") for k in w.notes):
                        failures.append(f"top saw damage: {w.notes}")
                reads["top"] += 1
            except RunDirError as exc:
                failures.append(f"top: {exc}")
            except Exception as exc:  # noqa: BLE001
                failures.append(f"top crashed: {type(exc).__name__}: {exc}")
            if last:
                return
            time.sleep(0.1)  # top's refresh pace

    deadline = time.monotonic() + 300
    while len(list(run.glob("rank*/spans-*"))) < WRITERS or len(list(run.glob("rank*"))) < WRITERS:
        assert time.monotonic() < deadline and all(p.poll() is None for p in writers), "writers did not start"
        time.sleep(0.05)
    time.sleep(ALONE_S)
    readers_from = time.time()

    def report() -> None:  # the whole report of a run being written (it may finish after the writers)
        proc = run_cli("report", run, "-o", tmp_path / "report.html", timeout=600)
        reads["report"] += proc.returncode == 0
        if proc.returncode != 0:
            failures.append(f"report: {proc.stderr}")

    threads = [threading.Thread(target=f) for f in (summaries, follow, report)]
    for t in threads:
        t.start()
    time.sleep(READING_S)
    stop_file.touch()
    results = []
    for proc in writers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    threads[2].join(timeout=600)
    stop.set()  # `follow` polls once more: everything the closed writers wrote
    for t in threads[:2]:
        t.join(timeout=120)
    tail.close()
    elapsed = time.monotonic() - t_start

    assert not failures, failures[:10]
    assert reads["summary"] >= 2 and reads["top"] >= 10 and reads["report"] == 1, reads
    # every writer kept up: nothing dropped, no write failed
    for r in results:
        assert r["dropped"] == 0 and r["notes"] == [], r
    # the incremental reader holds exactly what each writer wrote
    by_rank = {r["rank"]: r for r in results}
    got = {int(name[4:8]): n for name, n in tail_rows.items()}
    assert got == {rank: r["emitted"] for rank, r in by_rank.items()}
    final = load_summary(run, use_cache=False).to_json()
    assert {r["rank"]: r["steps"] + r["warmup"]["steps"] for r in final["ranks"]} == {
        rank: r["steps"] for rank, r in by_rank.items()
    }
    # the writers' pace with readers running against their pace alone (loose: readers share two cores)
    paced = []
    for r in results:
        alone = [s for s, t in zip(r["step_s"], r["step_unix"]) if t < readers_from]
        read = [s for s, t in zip(r["step_s"], r["step_unix"]) if t >= readers_from]
        assert len(alone) >= 20 and len(read) >= 20, (len(alone), len(read))
        paced.append(statistics.median(read) / statistics.median(alone))
    print(
        f"\n{WRITERS} writers, {elapsed:.1f} s in all: reads {dict(reads)}; writer step time "
        f"with readers / alone: median {statistics.median(paced):.2f}, max {max(paced):.2f}"
    )
    assert statistics.median(paced) < 2.0, paced
