"""Recommendations: rules with thresholds over the budget, each with its evidence and the change to make.

The rules are data (`RULES`): a category, a threshold in percent of step time, a title and the concrete
change. A rule fires per rank; when it fires on every rank it is reported once with `rank` None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpuwatch.attribution.budget import Evidence, RankBudget
from gpuwatch.attribution.cross_rank import CrossRankResult
from gpuwatch.records import Category


@dataclass(frozen=True, slots=True)
class Refinement:
    """A better change when the evidence shows the usual fix is already in place."""

    evidence: str
    """Regex searched in the names of the category's top evidence on that rank."""
    change: str


@dataclass(frozen=True, slots=True)
class Rule:
    category: Category
    threshold_pct: float
    title: str
    change: str
    """What to change, concretely (and where the reference trainer shows the fix)."""
    refinements: tuple[Refinement, ...] = ()
    """Checked in order; the first whose pattern matches the evidence replaces `change`."""


RULES: list[Rule] = [
    Rule(
        Category.DATA_LOADING,
        5.0,
        "Input pipeline starves the training loop",
        "raise DataLoader num_workers (one per free core), set persistent_workers=True and prefetch_factor>=2; "
        "on GPU also pin_memory=True with .to(device, non_blocking=True) (see reference_trainer --fix data)",
        refinements=(
            Refinement(
                r"num_workers=[1-9]",
                "the DataLoader already has workers and they still cannot keep up: make each sample cheaper "
                "(decode at the size you train at, cache decoded or resized data), raise num_workers and "
                "prefetch_factor if cores are free, and check the storage read rate",
            ),
        ),
    ),
    Rule(
        Category.CPU_PREPROCESSING,
        5.0,
        "Decode and augmentation run on the training thread",
        "move decode/augmentation into the Dataset so DataLoader workers do it, decode at reduced size "
        "(PIL Image.draft, torchvision decode_jpeg at target size), or decode on the GPU "
        "(nvImageCodec, torchvision.io.decode_jpeg(device='cuda'), DALI) (see reference_trainer --fix decode)",
    ),
    Rule(
        Category.SYNC,
        10.0,
        "Ranks wait on communication and on each other",
        "replace gather-merge-broadcast on one rank with DDP all-reduce (bucketed, overlapped with backward) "
        "or FSDP2 fully_shard; keep rank-0-only work (logging, checkpoints, eval) off the step's critical path; "
        "avoid .item()/synchronize inside the step (see reference_trainer --fix sync)",
        refinements=(
            Refinement(
                r"DDP reducer wait|all_reduce|reduce_scatter",
                "gradients are already all-reduced; the exposed part is mostly waiting for the slowest rank: "
                "even out per-rank work (data loading, uneven batches, rank-0-only logging or checkpoints), "
                "let DDP overlap more (smaller bucket_cap_mb, gradient_as_bucket_view=True), or shard with "
                "FSDP2; on GPU check the interconnect",
            ),
        ),
    ),
    Rule(
        Category.CHECKPOINT_IO,
        2.0,
        "Checkpoint writes stall the loop",
        "use torch.distributed.checkpoint.async_save on a separate gloo process group and wait on it just "
        "before the next optimizer step; checkpoint less often (see reference_trainer --fix checkpoint)",
        refinements=(
            Refinement(
                r"async_save|torch\.distributed\.checkpoint \(background\)",
                "the loop already saves asynchronously; what still blocks is async_save staging the state and "
                "waiting on the previous save: checkpoint less often, keep the staging buffers between saves "
                "(a caching/pinned-memory stager), or run the upload in a separate process",
            ),
        ),
    ),
    Rule(
        Category.MEMCPY,
        5.0,
        "Exposed host-device copies",
        "pin host memory and copy with non_blocking=True; keep tensors on the device; move .cpu()/.numpy() "
        "out of the step",
    ),
    Rule(
        Category.HOST_OVERHEAD,
        15.0,
        "The host cannot keep the device busy",
        "reduce per-step Python work (logging, metrics) or make it periodic; on GPU capture the step with "
        "CUDA graphs or torch.compile(mode='reduce-overhead'); use a larger batch per step",
    ),
    Rule(
        Category.UNATTRIBUTED,
        20.0,
        "Idle time nothing explains",
        "wrap the slow region in gpuwatch.span(...), or record a torch.profiler window with "
        "gpuwatch.watch(profile_steps=...) so the cause shows up",
    ),
]


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A change to make, with the evidence that triggered it (as `Summary.recommendations` holds it)."""

    category: str
    rank: int | None
    """The rank it applies to, None when it applies to every rank."""
    title: str
    evidence: str
    change: str
    pct: float
    """The category's share of step time (the worst rank's when rank is None)."""


def recommend(budgets: list[RankBudget], cross: CrossRankResult | None = None) -> list[Recommendation]:
    """Every rule that fires, largest share first."""
    out: list[Recommendation] = []
    for rule in RULES:
        fired = []
        for b in budgets:
            pct = b.total_pct()[rule.category]
            if pct > rule.threshold_pct:
                fired.append((b, pct))
        if not fired:
            continue
        if len(fired) == len(budgets) and len(budgets) > 1:
            worst, pct = max(fired, key=lambda bp: bp[1])
            out.append(_make(rule, None, worst, pct, cross, all_ranks=len(budgets)))
        else:
            out.extend(_make(rule, b.rank, b, pct, cross) for b, pct in fired)
    out.sort(key=lambda r: -r.pct)
    return out


def _make(
    rule: Rule,
    rank: int | None,
    budget: RankBudget,
    pct: float,
    cross: CrossRankResult | None,
    all_ranks: int = 0,
) -> Recommendation:
    step_ms = float(budget.step_ns.mean()) / 1e6 if budget.step_ns.size else 0.0
    where = f"all {all_ranks} ranks, worst rank {budget.rank}" if all_ranks else f"rank {budget.rank}"
    parts = [
        f"{rule.category.value} {pct:.1f}% of step time on {where} (threshold {rule.threshold_pct:g}%; "
        f"{pct * step_ms / 100:.1f} ms of a {step_ms:.1f} ms step)"
    ]
    tops = [e for e in budget.evidence if e.category == rule.category.value]
    change = rule.change
    for refinement in rule.refinements:
        if any(re.search(refinement.evidence, e.name) for e in tops):
            change = refinement.change
            break
    if tops:
        parts.append("top: " + ", ".join(_describe(e, budget) for e in tops))
    if rule.category == Category.SYNC and cross is not None:
        split = cross.splits.get(budget.rank)
        if split and split.sync_ns:
            parts.append(f"{100 * split.wait_ns / split.sync_ns:.0f}% of it waiting for a slower rank")
        if cross.straggler is not None:
            s = cross.straggler
            doing = ", ".join(f"{c} {ns / 1e6:.0f} ms" for c, ns in s.doing_ns[:3]) or "unknown"
            parts.append(
                f"ranks wait for rank {s.rank} ({s.share_pct:.0f}% of all waiting; meanwhile it was: {doing})"
            )
            if s.tag_cause is not None:
                parts.append(s.tag_cause.text)
    return Recommendation(
        category=rule.category.value,
        rank=rank,
        title=rule.title,
        evidence="; ".join(parts),
        change=change,
        pct=pct,
    )


def _describe(e: Evidence, budget: RankBudget) -> str:
    steps = max(budget.step_ns.size, 1)
    return f"{e.name[:80]} ({e.total_ns / 1e6 / steps:.1f} ms/step, {e.count} spans)"
