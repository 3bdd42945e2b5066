"""The budget as a table: one row per step of each rank, as `gpuwatch summary` counts it (warm-up steps left
out), for `gpuwatch consolidate` and `gpuwatch sql` (the `budget` relation, `store/consolidate.py`)."""

from __future__ import annotations

import json

import numpy as np

from gpuwatch.attribution.analysis import RunAnalysis
from gpuwatch.records import CATEGORIES


def budget_columns(analysis: RunAnalysis) -> dict[str, np.ndarray]:
    """Columns rank, step, start_ns, end_ns, wall_ns, stage, tags (JSON text), `<category>_ns` per budget
    category, sync_wait_ns, and clock_offset_ns (each row its rank's estimated clock offset)."""
    parts: dict[str, list[np.ndarray]] = {}

    def add(name: str, values: np.ndarray) -> None:
        parts.setdefault(name, []).append(values)

    offsets = getattr(analysis.cross, "clock_offsets_ns", {}) or {}
    for ra in analysis.ranks:
        b = ra.budget
        n = b.step_ids.size
        labels = analysis.labels.get(b.rank)
        add("rank", np.full(n, b.rank, dtype=np.int64))
        add("step", b.step_ids.astype(np.int64))
        add("start_ns", b.step_start_ns.astype(np.int64))
        add("end_ns", b.step_end_ns.astype(np.int64))
        add("wall_ns", (b.step_end_ns - b.step_start_ns).astype(np.int64))
        stage = np.full(n, None, dtype=object)
        tags = np.full(n, None, dtype=object)
        if labels is not None:
            if labels.has_stages:
                stage = labels.stage.copy()
            for row in range(n):
                row_tags = {k: v[row] for k, v in labels.tags.items() if v[row] is not None}
                tags[row] = json.dumps(row_tags) if row_tags else None
        add("stage", stage)
        add("tags", tags)
        for i, c in enumerate(CATEGORIES):
            add(f"{c.value}_ns", b.step_category_ns[:, i].astype(np.int64) if n else np.zeros(0, np.int64))
        wait = analysis.cross.step_wait_ns.get(b.rank)
        add("sync_wait_ns", wait if wait is not None and wait.size == n else np.zeros(n, dtype=np.int64))
        add("clock_offset_ns", np.full(n, int(offsets.get(b.rank, 0)), dtype=np.int64))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
