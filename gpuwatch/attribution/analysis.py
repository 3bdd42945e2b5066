"""A whole run analysed: per-rank budgets, the HTA-compatible view, cross-rank waits, recommendations.

This is the one entry point views use (`gpuwatch summary`, the TUI, reports, compare): they never touch
the engine modules directly. `summary.summarize` turns the result into the typed `Summary` views render.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gpuwatch.attribution.budget import RankBudget, compute_rank_budget
from gpuwatch.attribution.cross_rank import CrossRankResult, analyze_cross_rank
from gpuwatch.attribution.overview import OverviewBreakdown, legacy_runtime_format, overview_breakdown
from gpuwatch.attribution.recommendations import Recommendation, recommend
from gpuwatch.attribution.step_labels import StepLabels, step_labels
from gpuwatch.attribution.temporal import TemporalBreakdown, temporal_breakdown
from gpuwatch.errors import RunDirError
from gpuwatch.records import CATEGORIES, SpanColumns
from gpuwatch.store.run_reader import RunReader, WriterInfo


@dataclass(frozen=True, slots=True)
class RankAnalysis:
    budget: RankBudget
    temporal: TemporalBreakdown | None
    writers: tuple[WriterInfo, ...]
    overview: OverviewBreakdown | None = None
    """The removed TensorBoard plugin's Overview step-time breakdown (`overview.py`)."""


@dataclass(frozen=True, slots=True)
class RunAnalysis:
    run_dir: Path
    run_id: str
    ranks: tuple[RankAnalysis, ...]
    cross: CrossRankResult
    recommendations: tuple[Recommendation, ...]
    notes: tuple[str, ...]
    """Things the user should know about the data (hook errors, dropped records, a writer still running)."""
    labels: dict[int, StepLabels] = field(default_factory=dict)
    """Each rank's step stages and tags (`gw.step(stage=..., tags=...)`), aligned with its budget rows."""


def analyze_run(
    run_dir: str | Path, *, ranks: list[int] | None = None, include_warmup: bool = False
) -> RunAnalysis:
    """Read every segment of a run and analyse it. Raises RunDirError when there is nothing to analyse.
    `include_warmup` keeps warm-up steps in the budget (`attribution/warmup.py`; reported either way)."""
    reader = RunReader(run_dir)
    try:
        return _analyze(reader, ranks, include_warmup)
    finally:
        reader.close()


def _analyze(reader: RunReader, only: list[int] | None, include_warmup: bool) -> RunAnalysis:
    rank_cols = {
        rank: reader.span_columns(rank, with_attrs=True)
        for rank in reader.ranks
        if only is None or rank in only
    }
    analysis = analyze_columns(
        reader.run_dir, reader.run_id, reader.writers, rank_cols, include_warmup=include_warmup
    )
    if reader.skipped:  # a damaged run: what could not be read comes first among the notes
        analysis = replace(analysis, notes=tuple(reader.skipped) + analysis.notes)
    return analysis


def analyze_columns(
    run_dir: str | Path,
    run_id: str,
    writers: list[WriterInfo],
    rank_cols: dict[int, SpanColumns],
    *,
    include_warmup: bool = False,
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
        budget = compute_rank_budget(rank, cols, include_warmup=include_warmup)
        per_rank[rank] = (cols, budget)
        rank_writers = tuple(w for w in writers if w.run.rank == rank)
        legacy = legacy_runtime_format(
            [c for w in rank_writers for c in (w.run.meta or {}).get("event_categories", [])]
        )
        results.append(
            RankAnalysis(
                budget=budget,
                temporal=temporal_breakdown(cols, budget),
                writers=rank_writers,
                overview=overview_breakdown(cols, stretch_steps=legacy),
            )
        )
    if not results:
        raise RunDirError(f"run {run_dir} has no spans yet (nothing recorded, or the first flush is pending)")
    labels = {rank: step_labels(cols, budget) for rank, (cols, budget) in per_rank.items()}
    domains: dict[int, str] = {}
    for w in writers:  # a rank's clock: its node's (watch records it), else its host's
        domains.setdefault(w.run.rank, str((w.run.meta or {}).get("clock_domain") or w.run.host))
    cross = analyze_cross_rank(per_rank, labels, domains)
    recs = tuple(recommend([r.budget for r in results], cross))
    return RunAnalysis(
        run_dir=Path(run_dir),
        run_id=run_id,
        ranks=tuple(results),
        cross=cross,
        recommendations=recs,
        labels=labels,
        notes=tuple(_notes(writers))
        + tuple(_warmup_notes([r.budget for r in results]))
        + tuple(_clock_notes(cross)),
    )


def _clock_notes(cross: CrossRankResult) -> list[str]:
    """One line when clocks were aligned: each other domain's offset and how well the collectives agree."""
    c = cross.clocks
    if c is None or not c.collectives:
        return []
    ref = c.domains[min(c.domains)]
    parts = []
    for domain in sorted(set(c.domains.values()) - {ref}):
        ranks = sorted(r for r, d in c.domains.items() if d == domain)
        off = c.offsets_ns[ranks[0]] / 1e6
        spread = c.spread_ns.get(domain, 0) / 1e6
        who = ", ".join(str(r) for r in ranks)
        parts.append(f"rank {who} ({domain}) {off:+.3f} ms (interquartile range {spread:.3f} ms)")
    return [
        f"clocks: ahead of rank {min(c.domains)}'s ({ref}): "
        + "; ".join(parts)
        + f"; estimated from {c.collectives} matched collectives and taken out before every cross-rank figure"
    ]


def _warmup_notes(budgets: list[RankBudget]) -> list[str]:
    """One line per rank with warm-up steps: how many, how long, what they did, and whether they count."""
    out = []
    for b in budgets:
        w = b.warmup
        if w is None:
            continue
        ids = ", ".join(str(int(s)) for s in w.step_ids)
        total_ms = float(w.step_ns.sum()) / 1e6
        ratio = float(w.step_ns.max()) / max(w.reference_step_ns, 1)
        sums = w.step_category_ns.sum(axis=0)
        doing = ", ".join(
            f"{CATEGORIES[i].value} {100 * sums[i] / max(int(sums.sum()), 1):.0f}%"
            for i in np.argsort(-sums)[:3]
            if sums[i] > 0
        )
        biggest = max(w.evidence, key=lambda e: e.total_ns, default=None)
        top = f" (top: {biggest.name[:60]})" if biggest is not None else ""
        steps = "step" if w.step_ids.size == 1 else "steps"
        fate = (
            "kept in the budget (--include-warmup)"
            if w.included
            else f"left out of the budget (gpuwatch summary --include-warmup keeps {'it' if w.step_ids.size == 1 else 'them'})"
        )
        out.append(
            f"rank {b.rank}: warm-up {steps} {ids}: {total_ms:.1f} ms, up to {ratio:.1f}x the median step "
            f"of {w.reference_step_ns / 1e6:.1f} ms; {doing or 'nothing recorded'}{top}; {fate}"
        )
    return out


def _notes(writers: list[WriterInfo]) -> list[str]:
    """One line per distinct fact; the same note from several ranks is said once, naming them."""
    grouped: dict[str, list[str]] = {}
    for w in writers:
        who = f"rank {w.run.rank} (pid {w.run.pid})"
        facts = []
        if w.dropped_spans or w.dropped_samples:
            why = "queue full or writes failed" if "writer_error" in w.notes else "queue full"
            facts.append(f"{why}, dropped {w.dropped_spans} spans and {w.dropped_samples} samples")
        for key, note in sorted(w.notes.items()):
            count = note.get("count", 1)
            more = f" (x{count})" if count > 1 else ""
            facts.append(f"{key}: {note.get('message', '')}{more}")
        if w.status == "running":
            facts.append("still running, or stopped without closing (killed): data up to its last flush")
        for fact in facts:
            grouped.setdefault(fact, []).append(who)
    return [f"{', '.join(whos)}: {fact}" for fact, whos in grouped.items()]
