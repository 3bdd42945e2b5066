"""The typed Summary of a run: what every view renders (terminal, HTML, compare, the live dashboard).

`summarize(analysis)` turns the engine's `RunAnalysis` (numpy arrays, engine records) into frozen records
with unit-named fields; `Summary.to_json()` is the documented `gpuwatch summary --json` document (keys and
values as they have always been, new keys added after the old ones) and `Summary.from_json()` reads one
back, so a stored summary or a CI baseline file is as good as a run directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from gpuwatch.attribution.analysis import RunAnalysis
from gpuwatch.attribution.budget import RankBudget
from gpuwatch.attribution.cross_rank import RankSyncSplit
from gpuwatch.attribution.order_stats import median, percentile
from gpuwatch.attribution.overview import ROLES as OVERVIEW_ROLES
from gpuwatch.attribution.overview import OverviewBreakdown
from gpuwatch.attribution.recommendations import Recommendation
from gpuwatch.attribution.step_labels import TagCause
from gpuwatch.attribution.step_labels import groups as label_groups
from gpuwatch.errors import RunDirError
from gpuwatch.records import CATEGORIES

CATEGORY_NAMES: tuple[str, ...] = tuple(c.value for c in CATEGORIES)
"""The eight budget categories in their fixed order (compute first, unattributed last)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryValues:
    """One number per budget category, in the unit its holder's name says (`budget_pct`, `..._ms`)."""

    compute: float = 0.0
    data_loading: float = 0.0
    cpu_preprocessing: float = 0.0
    sync: float = 0.0
    checkpoint_io: float = 0.0
    memcpy: float = 0.0
    host_overhead: float = 0.0
    unattributed: float = 0.0

    def get(self, category: str) -> float:
        """The value of a category by its name; raises KeyError for a name that is not a category."""
        if category not in CATEGORY_NAMES:
            raise KeyError(category)
        return float(getattr(self, category))

    def items(self) -> Iterator[tuple[str, float]]:
        """(category, value) in the fixed category order."""
        for name in CATEGORY_NAMES:
            yield name, float(getattr(self, name))

    def to_json(self) -> dict[str, float]:
        return dict(self.items())

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CategoryValues:
        return cls(**{name: float(doc.get(name, 0.0)) for name in CATEGORY_NAMES})


@dataclass(frozen=True, slots=True, kw_only=True)
class StepTimeMs:
    """Wall time of a training step over the run's steps, in milliseconds (0.0 with no steps)."""

    median: float
    mean: float
    p90: float
    min: float
    max: float

    @classmethod
    def of(cls, step_ms: np.ndarray) -> StepTimeMs:
        """The statistics of these step times (ms)."""
        if not step_ms.size:
            return cls(median=0.0, mean=0.0, p90=0.0, min=0.0, max=0.0)
        return cls(
            median=median(step_ms),
            mean=float(step_ms.mean()),
            p90=percentile(step_ms, 90),
            min=float(step_ms.min()),
            max=float(step_ms.max()),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TemporalPct:
    """HTA's temporal breakdown, percent of the analysed window (0.0 when there is no device basis)."""

    idle: float
    compute: float
    non_compute: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncSplitPct:
    """`sync` split into moving data and waiting for a late rank, percent of step wall time."""

    transfer: float
    wait: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceItem:
    """A named region that made up part of a category (inclusive totals: parents and children both count)."""

    category: str
    name: str
    total_ms: float
    count: int

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EvidenceItem:
        return cls(
            category=str(doc["category"]),
            name=str(doc["name"]),
            total_ms=float(doc["total_ms"]),
            count=int(doc["count"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PerStep:
    """Every step of a rank: what compare's noise model and the charts read. Milliseconds."""

    step: tuple[int, ...]
    """Step ids, in order."""
    wall_ms: tuple[float, ...]
    """Wall time of each step."""
    category_ms: Mapping[str, tuple[float, ...]]
    """Per category (the eight names, fixed order), its time in each step; sums to `wall_ms` per step."""

    def category(self, name: str) -> tuple[float, ...]:
        return tuple(self.category_ms.get(name, ()))


@dataclass(frozen=True, slots=True, kw_only=True)
class OverviewPct:
    """The removed TensorBoard profiler plugin's Overview "Step Time Breakdown": percent of the average step
    per role (`attribution/overview.py`), summing to 100, and the average step itself."""

    kernel: float
    memcpy: float
    memset: float
    communication: float
    runtime: float
    """Runtime calls (cudaLaunchKernel...), counted as the plugin meant even where it read them as nothing."""
    dataloader: float
    cpu_exec: float
    other: float
    avg_step_us: float
    """The plugin's average step, microseconds."""

    def items(self) -> Iterator[tuple[str, float]]:
        """(role, percent) in the plugin's order, `avg_step_us` left out."""
        for name in OVERVIEW_ROLES:
            yield name, float(getattr(self, name))


@dataclass(frozen=True, slots=True, kw_only=True)
class Saving:
    """What-if: a category of idle time gone, with everything else unchanged. An upper bound: it ignores the
    critical path (time another activity would fill, a rank that would still wait for another)."""

    category: str
    rank: int | None
    """None: every rank of the run (the job); a rank: that rank alone, listed when its share of the
    category stands out from the job's."""
    step_time_ms_after: float
    """Mean step time without the category, milliseconds."""
    speedup: float
    """Mean step time now over `step_time_ms_after`."""
    gpu_hours_saved_per_1000: float
    """GPU-hours the category costs per 1,000 GPU-hours of the job (all ranks)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmupSummary:
    """A rank's warm-up steps (`attribution/warmup.py`): leading steps much slower than the rest, left out
    of the budget unless `included`. Milliseconds."""

    steps: int
    """How many (0: none found)."""
    step_ids: tuple[int, ...]
    step_ms: tuple[float, ...]
    """Wall time of each."""
    reference_step_ms: float
    """The median step they were compared with (0.0 when there was none)."""
    category_ms: CategoryValues
    """What they did: their time in each budget category, summed over the warm-up steps."""
    evidence: tuple[EvidenceItem, ...]
    included: bool
    """True when the budget kept them (`gpuwatch summary --include-warmup`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RankSummary:
    """One rank's budget and step statistics."""

    rank: int
    mode: str
    """"device" when device events exist, "host" when compute is the training thread's math."""
    steps: int
    steps_from_markers: bool
    """True when steps come from markers (gw.step, ProfilerStep); False when inferred."""
    step_time_ms: StepTimeMs
    budget_pct: CategoryValues
    """Share of all step wall time, percent; sums to 100."""
    budget_ms_per_step: CategoryValues
    """Mean milliseconds per step."""
    temporal_pct: TemporalPct
    temporal_basis: str | None
    sync_split_pct: SyncSplitPct
    training_tid: int
    evidence: tuple[EvidenceItem, ...]
    per_step: PerStep | None = None
    """None for summaries stored before per-step data was kept."""
    overview_pct: OverviewPct | None = None
    """None when the rank has no step time to split, or for summaries stored before it was computed."""
    warmup: WarmupSummary | None = None
    """None for summaries stored before warm-up was detected."""
    clock_offset_ms: float = 0.0
    """How far this rank's clock runs ahead of the reference rank's (estimated from matched collectives
    across hosts, `clock_align.py`, and taken out of every cross-rank figure); 0.0 on one host."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StragglerSummary:
    """The rank the others wait for, and what it was doing meanwhile."""

    rank: int
    caused_wait_ms: float
    share_pct: float
    """Its share of all cross-rank waiting, percent."""
    doing_ms: tuple[tuple[str, float], ...]
    """(category, milliseconds) of what it did while others waited, largest first."""
    matched_collectives: int
    tag_cause: TagCause | None = None
    """The tag value in whose steps it is waited for most (`gw.step(tags=...)`); None without tags."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupRankSummary:
    """One rank's budget over the steps of one stage or one tag value, shaped like `RankSummary`'s own."""

    rank: int
    steps: int
    step_time_ms: StepTimeMs
    budget_pct: CategoryValues
    """Share of these steps' wall time, percent; sums to 100."""
    budget_ms_per_step: CategoryValues
    """Mean milliseconds per step (over these steps); times `steps`, summed over the groups of a rank,
    gives the whole-run figure."""
    sync_split_pct: SyncSplitPct
    """Sync moving data and waiting for a later rank, percent of these steps' wall time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StageSummary:
    """A training stage (`gw.step(stage=...)`): each rank's budget over its steps."""

    stage: str
    ranks: tuple[GroupRankSummary, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TagValueSummary:
    """One value of a step tag (`gw.step(tags={key: value})`): each rank's budget over the steps with it."""

    value: str
    ranks: tuple[GroupRankSummary, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """What gpuwatch says about a run: per-rank budgets, the rank others wait for, what to change."""

    run_id: str
    run_dir: str
    ranks: tuple[RankSummary, ...]
    straggler: StragglerSummary | None
    recommendations: tuple[Recommendation, ...]
    notes: tuple[str, ...]
    savings: tuple[Saving, ...] = ()
    """What-if per idle category, largest first (`savings_of`)."""
    stages: tuple[StageSummary, ...] = ()
    """Per training stage, in order of first appearance (empty when no step named a stage)."""
    tags: Mapping[str, tuple[TagValueSummary, ...]] = dataclasses.field(default_factory=dict)
    """Per tag key, per value (sorted), each rank's budget over the steps with that value."""

    def rank(self, rank: int) -> RankSummary:
        """The summary of one rank; KeyError when the run has no such rank."""
        for r in self.ranks:
            if r.rank == rank:
                return r
        raise KeyError(rank)

    def to_json(self) -> dict[str, Any]:
        """The documented `gpuwatch summary --json` document (percentages are 0-100)."""
        return {
            "run_id": self.run_id,
            "run_dir": self.run_dir,
            "ranks": [_rank_to_json(r) for r in self.ranks],
            "straggler": None if self.straggler is None else _straggler_to_json(self.straggler),
            "recommendations": [_plain(r) for r in self.recommendations],
            "notes": list(self.notes),
            "savings": [_plain(s) for s in self.savings],
            "stages": [
                {"stage": g.stage, "ranks": [_group_to_json(r) for r in g.ranks]} for g in self.stages
            ],
            "tags": {
                key: [{"value": g.value, "ranks": [_group_to_json(r) for r in g.ranks]} for g in values]
                for key, values in self.tags.items()
            },
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Summary:
        """Read a `summary --json` document back. Raises RunDirError when it is not one."""
        try:
            s = doc.get("straggler")
            ranks = tuple(_rank_from_json(r) for r in doc["ranks"])
            return cls(
                run_id=str(doc["run_id"]),
                run_dir=str(doc.get("run_dir", "")),
                ranks=ranks,
                straggler=None
                if not s
                else StragglerSummary(
                    rank=int(s["rank"]),
                    caused_wait_ms=float(s["caused_wait_ms"]),
                    share_pct=float(s["share_pct"]),
                    doing_ms=tuple((str(k), float(v)) for k, v in s["doing_ms"].items()),
                    matched_collectives=int(s["matched_collectives"]),
                    tag_cause=None
                    if not s.get("tag_cause")
                    else TagCause(
                        **{f.name: type_of(f.type)(s["tag_cause"][f.name]) for f in fields(TagCause)}
                    ),
                ),
                recommendations=tuple(
                    Recommendation(**{f.name: r.get(f.name) for f in fields(Recommendation)})
                    for r in doc.get("recommendations", [])
                ),
                notes=tuple(str(n) for n in doc.get("notes", [])),
                savings=savings_of(ranks)
                if "savings" not in doc
                else tuple(
                    Saving(
                        category=str(v["category"]),
                        rank=None if v.get("rank") is None else int(v["rank"]),
                        step_time_ms_after=float(v["step_time_ms_after"]),
                        speedup=float(v["speedup"]),
                        gpu_hours_saved_per_1000=float(v["gpu_hours_saved_per_1000"]),
                    )
                    for v in doc["savings"]
                ),
                stages=tuple(
                    StageSummary(stage=str(g["stage"]), ranks=tuple(_group_from_json(r) for r in g["ranks"]))
                    for g in doc.get("stages", [])
                ),
                tags={
                    str(key): tuple(
                        TagValueSummary(
                            value=str(g["value"]), ranks=tuple(_group_from_json(r) for r in g["ranks"])
                        )
                        for g in values
                    )
                    for key, values in doc.get("tags", {}).items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RunDirError(
                f"not a gpuwatch summary document ({type(exc).__name__}: {exc}); "
                "expected the output of `gpuwatch summary --json`"
            ) from None


def load_summary(
    run_dir: str | os.PathLike[str],
    *,
    ranks: list[int] | None = None,
    use_cache: bool = True,
    include_warmup: bool = False,
) -> Summary:
    """The Summary of a run directory: the stored one of a finished run, else a fresh analysis (then
    stored, once every writer has ended and all ranks were asked for). Raises RunDirError / RunDirUsageError
    for a directory that is not a readable run. `include_warmup` keeps warm-up steps in the budget (never
    cached: the stored summary is the default one)."""
    from gpuwatch.attribution.analysis import analyze_run
    from gpuwatch.store import summary_cache

    path = Path(run_dir)
    default = not ranks and not include_warmup
    doc = summary_cache.load(path) if use_cache and default else None
    if doc is not None:
        return Summary.from_json(doc)
    summary = summarize(analyze_run(path, ranks=ranks, include_warmup=include_warmup))
    if default:
        summary_cache.store(path, summary.to_json())
    return summary


def summarize(analysis: RunAnalysis) -> Summary:
    """The typed summary of an analysed run."""
    offsets = analysis.cross.clock_offsets_ns
    ranks = tuple(
        dataclasses.replace(
            _rank_summary(ra.budget, ra.temporal, analysis.cross.splits.get(ra.budget.rank), ra.overview),
            clock_offset_ms=offsets.get(ra.budget.rank, 0) / 1e6,
        )
        for ra in analysis.ranks
    )
    s = analysis.cross.straggler
    stages, tags = _groups_of(analysis)
    return Summary(
        run_id=analysis.run_id,
        run_dir=str(analysis.run_dir),
        ranks=ranks,
        straggler=None
        if s is None
        else StragglerSummary(
            rank=s.rank,
            caused_wait_ms=s.caused_wait_ns / 1e6,
            share_pct=s.share_pct,
            doing_ms=tuple((c, ns / 1e6) for c, ns in s.doing_ns),
            matched_collectives=s.matched_collectives,
            tag_cause=s.tag_cause,
        ),
        recommendations=tuple(analysis.recommendations),
        notes=tuple(analysis.notes),
        savings=savings_of(ranks),
        stages=stages,
        tags=tags,
    )


def _groups_of(
    analysis: RunAnalysis,
) -> tuple[tuple[StageSummary, ...], dict[str, tuple[TagValueSummary, ...]]]:
    """The budget of every rank split by stage and by each tag's values (`step_labels.groups`)."""
    stage_rows: dict[str, list[GroupRankSummary]] = {}
    tag_rows: dict[str, dict[str, list[GroupRankSummary]]] = {}
    for ra in analysis.ranks:
        b = ra.budget
        labels = analysis.labels.get(b.rank)
        if labels is None:
            continue
        wait = analysis.cross.step_wait_ns.get(b.rank)
        split = analysis.cross.splits.get(b.rank)
        stage_masks, tag_masks = label_groups(labels)
        for stage, mask in stage_masks:
            stage_rows.setdefault(stage, []).append(_group_rank(b, mask, wait, split))
        for key, values in tag_masks.items():
            for value, mask in values:
                tag_rows.setdefault(key, {}).setdefault(value, []).append(_group_rank(b, mask, wait, split))
    stages = tuple(StageSummary(stage=k, ranks=tuple(v)) for k, v in stage_rows.items())
    tags = {
        key: tuple(TagValueSummary(value=v, ranks=tuple(rows)) for v, rows in sorted(values.items()))
        for key, values in sorted(tag_rows.items())
    }
    return stages, tags


def _group_rank(
    b: RankBudget, mask: np.ndarray, wait: np.ndarray | None, split: RankSyncSplit | None
) -> GroupRankSummary:
    """One rank's figures over the budget rows in `mask`, computed as `_rank_summary` does for all rows."""
    cat_ns = b.step_category_ns[mask]
    step_ms = b.step_ns[mask] / 1e6
    wall = float(cat_ns.sum()) or 1.0
    sync = float(cat_ns[:, CATEGORY_NAMES.index("sync")].sum())
    wait_ns = float(wait[mask].sum()) if wait is not None and wait.size == mask.size else 0.0
    return GroupRankSummary(
        rank=b.rank,
        steps=int(step_ms.size),
        step_time_ms=StepTimeMs.of(step_ms),
        budget_pct=_budget_pct(cat_ns),
        budget_ms_per_step=_budget_ms_per_step(cat_ns),
        sync_split_pct=SyncSplitPct(
            transfer=100.0 * (sync - wait_ns) / wall if split else 0.0,
            wait=100.0 * wait_ns / wall if split else 0.0,
        ),
    )


def _budget_pct(cat_ns: np.ndarray) -> CategoryValues:
    """Each category's share of the wall time of these budget rows (steps x categories, ns), percent."""
    totals = cat_ns.sum(axis=0)
    total = float(totals.sum())
    return CategoryValues(
        **{c: (100.0 * float(totals[i]) / total if total else 0.0) for i, c in enumerate(CATEGORY_NAMES)}
    )


def _budget_ms_per_step(cat_ns: np.ndarray) -> CategoryValues:
    """Each category's mean milliseconds per step over these budget rows (steps x categories, ns)."""
    n = len(cat_ns)
    return CategoryValues(
        **{c: float(cat_ns[:, i].mean() / 1e6) if n else 0.0 for i, c in enumerate(CATEGORY_NAMES)}
    )


IDLE_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORY_NAMES if c != "compute")
OUTLIER_PP = 5.0
"""A rank gets a what-if of its own when its share of a category exceeds the job's by this many points."""


def savings_of(ranks: tuple[RankSummary, ...]) -> tuple[Saving, ...]:
    """What-if for every idle category with time in it: the job's mean step time without it, and the same
    for a rank whose share of it stands out; largest saving first. Upper bounds (critical path ignored)."""
    walls = [(r, r.step_time_ms.mean * r.steps) for r in ranks if r.steps and r.step_time_ms.mean > 0]
    total_wall = sum(w for _, w in walls)
    total_steps = sum(r.steps for r, _ in walls)
    if total_wall <= 0:
        return ()
    out: list[Saving] = []
    for c in IDLE_CATEGORIES:
        total_cat = sum(r.budget_ms_per_step.get(c) * r.steps for r, _ in walls)
        if total_cat <= 0 or total_cat >= total_wall:
            continue
        before, after = total_wall / total_steps, (total_wall - total_cat) / total_steps
        out.append(_saving(c, None, before, after, 1000.0 * total_cat / total_wall))
        job_pct = 100.0 * total_cat / total_wall
        for r, _ in walls if len(walls) > 1 else ():
            cat_ms, mean = r.budget_ms_per_step.get(c), r.step_time_ms.mean
            if 100.0 * cat_ms / mean >= job_pct + OUTLIER_PP and cat_ms < mean:
                out.append(_saving(c, r.rank, mean, mean - cat_ms, 1000.0 * cat_ms * r.steps / total_wall))
    out.sort(key=lambda s: (-s.gpu_hours_saved_per_1000, s.category, -1 if s.rank is None else s.rank))
    return tuple(out)


def _saving(category: str, rank: int | None, before_ms: float, after_ms: float, saved: float) -> Saving:
    return Saving(
        category=category,
        rank=rank,
        step_time_ms_after=after_ms,
        speedup=before_ms / after_ms,
        gpu_hours_saved_per_1000=saved,
    )


def _rank_summary(
    b: RankBudget, t: Any, split: RankSyncSplit | None, overview: OverviewBreakdown | None = None
) -> RankSummary:
    step_ms = b.step_ns / 1e6
    wall = float(b.step_category_ns.sum()) or 1.0
    return RankSummary(
        rank=b.rank,
        mode=b.mode,
        steps=int(b.step_ids.size),
        steps_from_markers=b.steps_from_markers,
        step_time_ms=StepTimeMs.of(step_ms),
        budget_pct=_budget_pct(b.step_category_ns),
        budget_ms_per_step=_budget_ms_per_step(b.step_category_ns),
        temporal_pct=TemporalPct(
            idle=t.idle_pct if t else 0.0,
            compute=t.compute_pct if t else 0.0,
            non_compute=t.non_compute_pct if t else 0.0,
        ),
        temporal_basis=t.basis if t else None,
        sync_split_pct=SyncSplitPct(
            transfer=100.0 * split.transfer_ns / wall if split else 0.0,
            wait=100.0 * split.wait_ns / wall if split else 0.0,
        ),
        training_tid=b.training_tid,
        evidence=tuple(
            EvidenceItem(category=e.category, name=e.name, total_ms=e.total_ns / 1e6, count=e.count)
            for e in b.evidence
        ),
        per_step=PerStep(
            step=tuple(int(s) for s in b.step_ids),
            wall_ms=tuple(_round_ms(v) for v in step_ms),
            category_ms={
                c: tuple(_round_ms(v) for v in b.step_category_ns[:, i] / 1e6)
                for i, c in enumerate(CATEGORY_NAMES)
            },
        ),
        overview_pct=None
        if overview is None
        else OverviewPct(**overview.pct(), avg_step_us=overview.avg_step_ns / 1e3),
        warmup=_warmup_summary(b),
    )


def _warmup_summary(b: RankBudget) -> WarmupSummary:
    w = b.warmup
    if w is None:
        return WarmupSummary(
            steps=0,
            step_ids=(),
            step_ms=(),
            reference_step_ms=0.0,
            category_ms=CategoryValues(),
            evidence=(),
            included=False,
        )
    sums = w.step_category_ns.sum(axis=0) / 1e6
    return WarmupSummary(
        steps=int(w.step_ids.size),
        step_ids=tuple(int(s) for s in w.step_ids),
        step_ms=tuple(_round_ms(v) for v in w.step_ns / 1e6),
        reference_step_ms=_round_ms(w.reference_step_ns / 1e6),
        category_ms=CategoryValues(**{c: _round_ms(sums[i]) for i, c in enumerate(CATEGORY_NAMES)}),
        evidence=tuple(
            EvidenceItem(category=e.category, name=e.name, total_ms=e.total_ns / 1e6, count=e.count)
            for e in w.evidence
        ),
        included=w.included,
    )


def _round_ms(value: float) -> float:
    """Per-step figures are kept to the microsecond: exact enough for any statistic, a third the JSON."""
    return round(float(value), 3)


def _plain(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _rank_to_json(r: RankSummary) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "rank": r.rank,
        "mode": r.mode,
        "steps": r.steps,
        "steps_from_markers": r.steps_from_markers,
        "step_time_ms": _plain(r.step_time_ms),
        "budget_pct": r.budget_pct.to_json(),
        "budget_ms_per_step": r.budget_ms_per_step.to_json(),
        "temporal_pct": _plain(r.temporal_pct),
        "temporal_basis": r.temporal_basis,
        "sync_split_pct": _plain(r.sync_split_pct),
        "training_tid": r.training_tid,
        "evidence": [_plain(e) for e in r.evidence],
    }
    if r.per_step is not None:
        doc["per_step"] = {
            "step": list(r.per_step.step),
            "wall_ms": list(r.per_step.wall_ms),
            "category_ms": {c: list(r.per_step.category(c)) for c in CATEGORY_NAMES},
        }
    if r.overview_pct is not None:
        doc["overview_pct"] = _plain(r.overview_pct)
    if r.warmup is not None:
        doc["warmup"] = {
            **_plain(r.warmup),
            "step_ids": list(r.warmup.step_ids),
            "step_ms": list(r.warmup.step_ms),
            "category_ms": r.warmup.category_ms.to_json(),
            "evidence": [_plain(e) for e in r.warmup.evidence],
        }
    doc["clock_offset_ms"] = r.clock_offset_ms
    return doc


def _warmup_from_json(w: Mapping[str, Any] | None) -> WarmupSummary | None:
    if not w:
        return None
    return WarmupSummary(
        steps=int(w["steps"]),
        step_ids=tuple(int(s) for s in w.get("step_ids", ())),
        step_ms=tuple(float(v) for v in w.get("step_ms", ())),
        reference_step_ms=float(w.get("reference_step_ms", 0.0)),
        category_ms=CategoryValues.from_json(w.get("category_ms", {})),
        evidence=tuple(EvidenceItem.from_json(e) for e in w.get("evidence", [])),
        included=bool(w.get("included", False)),
    )


def _rank_from_json(d: Mapping[str, Any]) -> RankSummary:
    ps = d.get("per_step")
    return RankSummary(
        rank=int(d["rank"]),
        mode=str(d.get("mode", "device")),
        steps=int(d["steps"]),
        steps_from_markers=bool(d.get("steps_from_markers", True)),
        step_time_ms=StepTimeMs(
            **{f.name: float(d["step_time_ms"].get(f.name, 0.0)) for f in fields(StepTimeMs)}
        ),
        budget_pct=CategoryValues.from_json(d["budget_pct"]),
        budget_ms_per_step=CategoryValues.from_json(d.get("budget_ms_per_step", {})),
        temporal_pct=TemporalPct(
            **{f.name: float(d.get("temporal_pct", {}).get(f.name, 0.0)) for f in fields(TemporalPct)}
        ),
        temporal_basis=d.get("temporal_basis"),
        sync_split_pct=SyncSplitPct(
            **{f.name: float(d.get("sync_split_pct", {}).get(f.name, 0.0)) for f in fields(SyncSplitPct)}
        ),
        training_tid=int(d.get("training_tid", 0)),
        evidence=tuple(EvidenceItem.from_json(e) for e in d.get("evidence", [])),
        per_step=None
        if not ps
        else PerStep(
            step=tuple(int(s) for s in ps["step"]),
            wall_ms=tuple(float(v) for v in ps["wall_ms"]),
            category_ms={c: tuple(float(v) for v in ps["category_ms"].get(c, ())) for c in CATEGORY_NAMES},
        ),
        overview_pct=None
        if not d.get("overview_pct")
        else OverviewPct(**{f.name: float(d["overview_pct"][f.name]) for f in fields(OverviewPct)}),
        warmup=_warmup_from_json(d.get("warmup")),
        clock_offset_ms=float(d.get("clock_offset_ms", 0.0)),
    )


def _straggler_to_json(s: StragglerSummary) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "rank": s.rank,
        "caused_wait_ms": s.caused_wait_ms,
        "share_pct": s.share_pct,
        "doing_ms": dict(s.doing_ms),
        "matched_collectives": s.matched_collectives,
    }
    if s.tag_cause is not None:
        doc["tag_cause"] = {**_plain(s.tag_cause), "text": s.tag_cause.text}
    return doc


def _group_to_json(r: GroupRankSummary) -> dict[str, Any]:
    return {
        "rank": r.rank,
        "steps": r.steps,
        "step_time_ms": _plain(r.step_time_ms),
        "budget_pct": r.budget_pct.to_json(),
        "budget_ms_per_step": r.budget_ms_per_step.to_json(),
        "sync_split_pct": _plain(r.sync_split_pct),
    }


def _group_from_json(d: Mapping[str, Any]) -> GroupRankSummary:
    return GroupRankSummary(
        rank=int(d["rank"]),
        steps=int(d["steps"]),
        step_time_ms=StepTimeMs(
            **{f.name: float(d["step_time_ms"].get(f.name, 0.0)) for f in fields(StepTimeMs)}
        ),
        budget_pct=CategoryValues.from_json(d["budget_pct"]),
        budget_ms_per_step=CategoryValues.from_json(d.get("budget_ms_per_step", {})),
        sync_split_pct=SyncSplitPct(
            **{f.name: float(d.get("sync_split_pct", {}).get(f.name, 0.0)) for f in fields(SyncSplitPct)}
        ),
    )


def type_of(annotation: Any) -> Any:
    """The constructor of a field annotated "int", "float" or "str" (annotations are strings here)."""
    return {"int": int, "float": float, "str": str}[str(annotation)]
