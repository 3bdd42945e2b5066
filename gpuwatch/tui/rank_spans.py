"""One rank's spans so far, held column-wise in growing arrays, with its steps: what the follower windows."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from gpuwatch.records import SPAN_COLUMNS, SpanColumns, SpanKind
from gpuwatch.store.run_tail import SpanChunk


class Growing:
    """Columns that grow by appending, amortized (capacity doubles), with a view of the filled part."""

    def __init__(self, dtypes: dict[str, Any]) -> None:
        self.n = 0
        self.cols = {k: np.empty(64, dtype=t) for k, t in dtypes.items()}

    def append(self, new: dict[str, np.ndarray]) -> None:
        m = len(next(iter(new.values())))
        need = self.n + m
        cap = len(next(iter(self.cols.values())))
        if need > cap:
            cap = max(need, 2 * cap)
            for k, arr in self.cols.items():
                grown = np.empty(cap, dtype=arr.dtype)
                grown[: self.n] = arr[: self.n]
                self.cols[k] = grown
        for k, arr in self.cols.items():
            arr[self.n : need] = new[k]
        self.n = need

    def get(self, name: str) -> np.ndarray:
        return self.cols[name][: self.n]


_SPAN_DTYPES = {
    name: (object if name in ("kind", "category", "name", "attrs") else np.int64) for name, _ in SPAN_COLUMNS
}


class RankSpans:
    """One rank's spans so far (arrival order, plus where each chunk sits in the reader's order) and steps.

    Each appended chunk keeps its row range and time bounds, so a window finds its rows by looking at the
    chunks that overlap it, not at every span of a 10,000-step run.
    """

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.spans = Growing({**_SPAN_DTYPES, "name_code": np.int64})
        self.chunks: list[tuple[tuple[str, int, int], int, int]] = []
        self.bounds = Growing({"lo": np.int64, "hi": np.int64, "start_ns": np.int64, "end_ns": np.int64})
        """Per chunk: its rows [lo, hi) and the earliest start and latest end among them."""
        self.in_order = True
        """Chunks arrived in the reader's order (the usual case: one writer per rank, one format)."""
        self.steps = Growing({"tid": np.int64, "step": np.int64, "start_ns": np.int64, "end_ns": np.int64})
        self.step_tids: Counter[int] = Counter()
        self.doing: str | None = None
        self._step_table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def append(self, chunk: SpanChunk, cols: dict[str, np.ndarray]) -> None:
        lo = self.spans.n
        self.spans.append(cols)
        key = (chunk.writer, *chunk.order_key)
        self.in_order = self.in_order and (not self.chunks or self.chunks[-1][0] <= key)
        self.chunks.append((key, lo, self.spans.n))
        self.bounds.append(
            {
                "lo": np.array([lo]),
                "hi": np.array([self.spans.n]),
                "start_ns": np.array([cols["start_ns"].min()]),
                "end_ns": np.array([cols["end_ns"].max()]),
            }
        )
        is_step = cols["kind"] == SpanKind.STEP.value
        if is_step.any():
            self.steps.append({k: cols[k][is_step] for k in ("tid", "step", "start_ns", "end_ns")})
            self.step_tids.update(cols["tid"][is_step].tolist())
            self._step_table = None
        tid = self.training_tid()
        mine = np.flatnonzero((cols["tid"] == tid) & ~is_step & (cols["stream"] < 0))
        if tid is not None and mine.size:
            last = mine[np.argmax(cols["end_ns"][mine])]
            category = cols["category"][last]
            self.doing = f"{cols['name'][last]}" + (f" ({category})" if category else "")

    def shift(self, delta_ns: int) -> None:
        for name in ("start_ns", "end_ns"):
            self.spans.get(name)[:] += delta_ns
            self.steps.get(name)[:] += delta_ns
            self.bounds.get(name)[:] += delta_ns
        self._step_table = None

    def training_tid(self) -> int | None:
        return self.step_tids.most_common(1)[0][0] if self.step_tids else None

    def step_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(step ids, starts, ends) of the training thread's steps by start; ids by order where unknown."""
        if self._step_table is None:
            tid = self.training_tid()
            on = self.steps.get("tid") == tid
            starts = self.steps.get("start_ns")[on]
            order = np.argsort(starts, kind="stable")
            ids = self.steps.get("step")[on][order]
            if (ids < 0).any():
                ids = np.arange(ids.size)
            self._step_table = (ids, starts[order], self.steps.get("end_ns")[on][order])
        return self._step_table

    def rows_overlapping(self, t0: int, t1: int) -> np.ndarray:
        """Rows (arrival order) of the spans that overlap [t0, t1), found through the chunks' bounds."""
        hit = np.flatnonzero((self.bounds.get("end_ns") > t0) & (self.bounds.get("start_ns") < t1))
        if hit.size == 0:
            return np.zeros(0, dtype=np.int64)
        los, his = self.bounds.get("lo")[hit], self.bounds.get("hi")[hit]
        rows = np.concatenate([np.arange(lo, hi) for lo, hi in zip(los.tolist(), his.tolist(), strict=True)])
        s, e = self.spans.get("start_ns")[rows], self.spans.get("end_ns")[rows]
        return rows[(e > t0) & (s < t1)]

    def columns(self, rows: np.ndarray | None = None) -> SpanColumns:
        """The spans (all, or `rows` of the arrival order) in the reader's order, sorted like the reader's:
        by start, longest first, ties in segment order."""
        if self.in_order:  # arrival order is the reader's: rows stay as they are
            perm = np.arange(self.spans.n) if rows is None else np.sort(rows)
        else:
            perm = self._reader_perm()
            if rows is not None:
                keep = np.zeros(self.spans.n, dtype=bool)
                keep[rows] = True
                perm = perm[keep[perm]]
        start, end = self.spans.get("start_ns")[perm], self.spans.get("end_ns")[perm]
        perm = perm[np.lexsort((-end, start))]
        cols = {name: self.spans.get(name)[perm] for name in self.spans.cols}  # optional codes left None
        return SpanColumns(**cols)

    def _reader_perm(self) -> np.ndarray:
        return np.concatenate([np.arange(lo, hi) for _, lo, hi in sorted(self.chunks, key=lambda c: c[0])])
