"""Helpers of the `gpuwatch run` tests: the CLI around a job, and a run's budget cut at other step boundaries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from gpuwatch.attribution.budget import compute_rank_budget
from gpuwatch.records import CATEGORIES, SpanColumns, SpanKind
from gpuwatch.store.run_reader import RunReader

ROOT = Path(__file__).resolve().parents[2]


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("GPUWATCH_DEBUG", None)
    for key in [k for k in env if k.startswith("GPUWATCH_RUN")]:
        env.pop(key)
    return env


def gpuwatch_run(
    out: Path, *command: str | os.PathLike[str], flags: tuple[str, ...] = (), timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m gpuwatch run --out OUT FLAGS -- COMMAND...` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gpuwatch", "run", "--out", str(out), *flags, "--", *map(str, command)],
        cwd=ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


def rank_spans(run_dir: Path, rank: int) -> tuple[SpanColumns, int]:
    """One rank's spans as stored, and the run's anchor (unix ns) their times count from."""
    reader = RunReader(run_dir)
    try:
        return reader.span_columns(rank), reader.anchor_unix_ns
    finally:
        reader.close()


def budget_at(
    run_dir: Path, rank: int, bounds_unix_ns: list[int], *, include_warmup: bool = False
) -> dict[str, float]:
    """The budget (percent per category) of one rank of a run with its steps replaced by the steps between
    consecutive wall-clock instants `bounds_unix_ns`: what a `gw.step()` at each of them would have given
    (warm-up steps left out as `gpuwatch summary` leaves them, unless `include_warmup`)."""
    cols, anchor = rank_spans(run_dir, rank)
    is_step = cols.kind == SpanKind.STEP.value
    tid = int(cols.tid[is_step][0]) if is_step.any() else 0
    base = cols.take(~is_step)
    starts = np.asarray(bounds_unix_ns[:-1], dtype=np.int64) - anchor
    ends = np.asarray(bounds_unix_ns[1:], dtype=np.int64) - anchor
    n = starts.size
    steps = {
        "rank": np.full(n, rank),
        "pid": np.full(n, int(base.pid[0]) if len(base) else 0),
        "tid": np.full(n, tid),
        "stream": np.full(n, -1),
        "device_index": np.full(n, -1),
        "kind": np.array([SpanKind.STEP.value] * n, dtype=object),
        "category": np.array([None] * n, dtype=object),
        "name": np.array([f"step {i}" for i in range(n)], dtype=object),
        "start_ns": starts,
        "end_ns": ends,
        "step": np.arange(n),
        "bytes": np.full(n, -1),
        "correlation": np.full(n, -1),
        "seq": np.full(n, -1),
        "attrs": np.array([None] * n, dtype=object),
    }
    merged = SpanColumns(
        **{
            name: np.concatenate(
                [getattr(base, name), np.asarray(steps[name]).astype(getattr(base, name).dtype)]
            )
            for name in steps
        }
    )
    totals = compute_rank_budget(rank, merged, include_warmup=include_warmup).total_pct()
    return {c.value: totals[c] for c in CATEGORIES}


def step_extent_unix_ns(run_dir: Path, rank: int) -> tuple[int, int, int]:
    """(steps, first start, last end) of the steps one rank of a run recorded, the ends in unix ns."""
    cols, anchor = rank_spans(run_dir, rank)
    is_step = cols.kind == SpanKind.STEP.value
    return (
        int(is_step.sum()),
        int(cols.start_ns[is_step].min()) + anchor,
        int(cols.end_ns[is_step].max()) + anchor,
    )
