"""A whole run analysed: per-rank budgets, the HTA-compatible view, cross-rank waits, recommendations.

This is the one entry point views use (`gpuwatch summary`, the TUI, reports, compare): they never touch
the engine modules directly. `to_json` gives the documented `summary --json` shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpuwatch.budget import RankBudget, compute_rank_budget
from gpuwatch.cross_rank import CrossRankResult, analyze_cross_rank
from gpuwatch.errors import RunDirError
from gpuwatch.recommendations import Recommendation, recommend
from gpuwatch.records import CATEGORIES, SpanColumns
from gpuwatch.run_reader import RunReader, WriterInfo
from gpuwatch.temporal import TemporalBreakdown, temporal_breakdown


@dataclass(frozen=True, slots=True)
class RankAnalysis:
    budget: RankBudget
    temporal: TemporalBreakdown | None
    writers: tuple[WriterInfo, ...]


@dataclass(frozen=True, slots=True)
class RunAnalysis:
    run_dir: Path
    run_id: str
    ranks: tuple[RankAnalysis, ...]
    cross: CrossRankResult
    recommendations: tuple[Recommendation, ...]
    notes: tuple[str, ...]
    """Things the user should know about the data (hook errors, dropped records, a writer still running)."""


def analyze_run(run_dir: str | Path, *, ranks: list[int] | None = None) -> RunAnalysis:
    """Read every segment of a run and analyse it. Raises RunDirError when there is nothing to analyse."""
    reader = RunReader(run_dir)
    try:
        return _analyze(reader, ranks)
    finally:
        reader.close()


def _analyze(reader: RunReader, only: list[int] | None) -> RunAnalysis:
    rank_cols = {
        rank: reader.span_columns(rank, with_attrs=True)
        for rank in reader.ranks
        if only is None or rank in only
    }
    return analyze_columns(reader.run_dir, reader.run_id, reader.writers, rank_cols)


def analyze_columns(
    run_dir: str | Path, run_id: str, writers: list[WriterInfo], rank_cols: dict[int, SpanColumns]
) -> RunAnalysis:
    """Analyse spans already in memory (each rank's columns on the run's common timeline).

    `analyze_run` reads them from the store; `gpuwatch import` passes the columns it just wrote, so it
    can leave the finished summary next to the run without reading it back.
    """
    per_rank: dict[int, tuple[Any, RankBudget]] = {}
    results = []
    for rank in sorted(rank_cols):
        cols = rank_cols[rank]
        if len(cols) == 0:
            continue
        budget = compute_rank_budget(rank, cols)
        per_rank[rank] = (cols, budget)
        rank_writers = tuple(w for w in writers if w.run.rank == rank)
        results.append(
            RankAnalysis(budget=budget, temporal=temporal_breakdown(cols, budget), writers=rank_writers)
        )
    if not results:
        raise RunDirError(f"run {run_dir} has no spans yet (nothing recorded, or the first flush is pending)")
    cross = analyze_cross_rank(per_rank)
    recs = tuple(recommend([r.budget for r in results], cross))
    return RunAnalysis(
        run_dir=Path(run_dir),
        run_id=run_id,
        ranks=tuple(results),
        cross=cross,
        recommendations=recs,
        notes=tuple(_notes(writers)),
    )


def _notes(writers: list[WriterInfo]) -> list[str]:
    """One line per distinct fact; the same note from several ranks is said once, naming them."""
    grouped: dict[str, list[str]] = {}
    for w in writers:
        who = f"rank {w.run.rank} (pid {w.run.pid})"
        facts = []
        if w.dropped_spans or w.dropped_samples:
            facts.append(f"queue full, dropped {w.dropped_spans} spans and {w.dropped_samples} samples")
        for key, note in sorted(w.notes.items()):
            count = note.get("count", 1)
            more = f" (x{count})" if count > 1 else ""
            facts.append(f"{key}: {note.get('message', '')}{more}")
        if w.status == "running":
            facts.append("still running, or stopped without closing (killed): data up to its last flush")
        for fact in facts:
            grouped.setdefault(fact, []).append(who)
    return [f"{', '.join(whos)}: {fact}" for fact, whos in grouped.items()]


def _pct(values: np.ndarray) -> dict[str, float]:
    total = float(values.sum())
    return {c.value: (100.0 * float(values[i]) / total if total else 0.0) for i, c in enumerate(CATEGORIES)}


def to_json(analysis: RunAnalysis) -> dict[str, Any]:
    """The documented `gpuwatch summary --json` document (percentages are 0-100)."""
    ranks = []
    for ra in analysis.ranks:
        b = ra.budget
        step_ms = b.step_ns / 1e6
        split = analysis.cross.splits.get(b.rank)
        t = ra.temporal
        ranks.append(
            {
                "rank": b.rank,
                "mode": b.mode,
                "steps": int(b.step_ids.size),
                "steps_from_markers": b.steps_from_markers,
                "step_time_ms": {
                    "median": float(np.median(step_ms)) if step_ms.size else 0.0,
                    "mean": float(step_ms.mean()) if step_ms.size else 0.0,
                    "p90": float(np.percentile(step_ms, 90)) if step_ms.size else 0.0,
                    "min": float(step_ms.min()) if step_ms.size else 0.0,
                    "max": float(step_ms.max()) if step_ms.size else 0.0,
                },
                "budget_pct": _pct(b.step_category_ns.sum(axis=0)),
                "budget_ms_per_step": {
                    c.value: float(b.step_category_ns[:, i].mean() / 1e6) if step_ms.size else 0.0
                    for i, c in enumerate(CATEGORIES)
                },
                "temporal_pct": {
                    "idle": t.idle_pct if t else 0.0,
                    "compute": t.compute_pct if t else 0.0,
                    "non_compute": t.non_compute_pct if t else 0.0,
                },
                "temporal_basis": t.basis if t else None,
                "sync_split_pct": _split_pct(split, b),
                "training_tid": b.training_tid,
                "evidence": [
                    {"category": e.category, "name": e.name, "total_ms": e.total_ns / 1e6, "count": e.count}
                    for e in b.evidence
                ],
            }
        )
    s = analysis.cross.straggler
    return {
        "run_id": analysis.run_id,
        "run_dir": str(analysis.run_dir),
        "ranks": ranks,
        "straggler": None
        if s is None
        else {
            "rank": s.rank,
            "caused_wait_ms": s.caused_wait_ns / 1e6,
            "share_pct": s.share_pct,
            "doing_ms": {c: ns / 1e6 for c, ns in s.doing_ns},
            "matched_collectives": s.matched_collectives,
        },
        "recommendations": [
            {
                "category": r.category,
                "rank": r.rank,
                "title": r.title,
                "evidence": r.evidence,
                "change": r.change,
                "pct": r.pct,
            }
            for r in analysis.recommendations
        ],
        "notes": list(analysis.notes),
    }


def _split_pct(split: Any, budget: RankBudget) -> dict[str, float]:
    wall = float(budget.step_category_ns.sum()) or 1.0
    if split is None:
        return {"transfer": 0.0, "wait": 0.0}
    return {"transfer": 100.0 * split.transfer_ns / wall, "wait": 100.0 * split.wait_ns / wall}
