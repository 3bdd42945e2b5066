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
    """One rank's spans so far (arrival order, plus where each chunk sits in the reader's order) and steps."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.spans = Growing({**_SPAN_DTYPES, "name_code": np.int64})
        self.chunks: list[tuple[tuple[str, int, int], int, int]] = []
        self.steps = Growing({"tid": np.int64, "step": np.int64, "start_ns": np.int64, "end_ns": np.int64})
        self.step_tids: Counter[int] = Counter()
        self.doing: str | None = None

    def append(self, chunk: SpanChunk, cols: dict[str, np.ndarray]) -> None:
        lo = self.spans.n
        self.spans.append(cols)
        self.chunks.append(((chunk.writer, *chunk.order_key), lo, self.spans.n))
        is_step = cols["kind"] == SpanKind.STEP.value
        if is_step.any():
            self.steps.append({k: cols[k][is_step] for k in ("tid", "step", "start_ns", "end_ns")})
            self.step_tids.update(cols["tid"][is_step].tolist())
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

    def training_tid(self) -> int | None:
        return self.step_tids.most_common(1)[0][0] if self.step_tids else None

    def step_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(step ids, starts, ends) of the training thread's steps by start; ids by order where unknown."""
        tid = self.training_tid()
        on = self.steps.get("tid") == tid
        starts = self.steps.get("start_ns")[on]
        order = np.argsort(starts, kind="stable")
        ids = self.steps.get("step")[on][order]
        if (ids < 0).any():
            ids = np.arange(ids.size)
        return ids, starts[order], self.steps.get("end_ns")[on][order]

    def columns(self, rows: np.ndarray | None = None) -> SpanColumns:
        """The spans (all, or `rows` of the arrival order) in the reader's order, sorted like the reader's:
        by start, longest first, ties in segment order."""
        perm = self._reader_perm()
        if rows is not None:
            keep = np.zeros(self.spans.n, dtype=bool)
            keep[rows] = True
            perm = perm[keep[perm]]
        start, end = self.spans.get("start_ns")[perm], self.spans.get("end_ns")[perm]
        perm = perm[np.lexsort((-end, start))]
        cols = {name: self.spans.get(name)[perm] for name in SpanColumns.__dataclass_fields__}
        return SpanColumns(**cols)

    def _reader_perm(self) -> np.ndarray:
        keys = [c[0] for c in self.chunks]
        if all(a <= b for a, b in zip(keys, keys[1:], strict=False)):
            return np.arange(self.spans.n)
        return np.concatenate([np.arange(lo, hi) for _, lo, hi in sorted(self.chunks, key=lambda c: c[0])])
