"""Across ranks: match collectives by sequence number and split exposed sync into transfer and waiting.

Every rank of a process group issues its collectives in the same order, so the n-th collective of a group
on one rank is the n-th on every other (collectors record that ordinal, or NCCL's own sequence number, as
`seq`). For one matched collective, the rank that arrives last starts it at `t_last`; every other rank r
spends `[start_r, t_last)` waiting for it, and the rest of its call moving data. Waiting that falls inside
the time the budget calls `sync` is "wait for the slowest rank"; the rest of `sync` is transfer.
The rank that others wait for is the one whose late arrivals cost them the most, and what it was doing
meanwhile comes from its own timeline (the manager-node pattern: rank 0 gathering, merging, checkpointing).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpuwatch.attribution import intervals as iv
from gpuwatch.attribution.budget import CAT_INDEX, RankBudget, launch_ns
from gpuwatch.attribution.clock_align import ClockOffsets, estimate_offsets
from gpuwatch.attribution.step_labels import StepLabels, TagCause, tag_cause
from gpuwatch.attribution.value_codes import kind_is
from gpuwatch.records import CATEGORIES, Category, SpanColumns, SpanKind


@dataclass(frozen=True, slots=True)
class RankSyncSplit:
    rank: int
    sync_ns: int
    """Exposed sync time in the budget (all steps)."""
    wait_ns: int
    """Of that, time spent waiting for a later-arriving rank."""
    transfer_ns: int
    """The rest: moving data, synchronizing with the device."""


@dataclass(frozen=True, slots=True)
class Straggler:
    rank: int
    """The rank the others wait for."""
    caused_wait_ns: int
    """Total time other ranks spent waiting for it (sum over ranks)."""
    share_pct: float
    """Its share of all waiting in the run."""
    doing_ns: tuple[tuple[str, int], ...]
    """What it was doing while others waited: (category, ns on its own timeline), largest first."""
    matched_collectives: int
    tag_cause: TagCause | None = None
    """The tag value (`gw.step(tags=...)`) in whose steps it is waited for most, when tags say it."""


@dataclass(frozen=True, slots=True)
class CrossRankResult:
    splits: dict[int, RankSyncSplit]
    straggler: Straggler | None
    matched_collectives: int
    step_wait_ns: dict[int, np.ndarray] = field(default_factory=dict)
    """Per rank, per budget row (step), the ns of its `sync` spent waiting for a later rank."""
    step_caused_ns: dict[int, np.ndarray] = field(default_factory=dict)
    """Per rank, per budget row, the ns other ranks waited for it at collectives it issued in that step."""
    clocks: ClockOffsets | None = None
    """The clock offsets taken out of each rank's times before the figures above (None: one clock)."""

    @property
    def clock_offsets_ns(self) -> dict[int, int]:
        """Per rank, how far its clock runs ahead of the reference rank's (empty: one clock)."""
        return dict(self.clocks.offsets_ns) if self.clocks is not None else {}


CollectiveKey = tuple[Any, ...]


def _collective_keys(cols: SpanColumns, budget: RankBudget) -> tuple[np.ndarray, list[CollectiveKey | None]]:
    """Indices of the rank's matchable collectives and their keys (None: cannot be matched).

    A sequence number the trace or the hook recorded (NCCL's own) is global: key (side, group, seq). One the
    importer inferred from call order (attrs `seq_source` "order") only counts collectives inside this
    trace, and profiling windows often start at different iterations on different ranks (on-demand
    profiling), so it is only trusted within a step: key (side, group, "step", step number, n-th in that
    step). Step numbers (ProfilerStep#N) are the training iteration, the same on every rank.
    """
    is_coll = kind_is(cols, SpanKind.COLLECTIVE.value) & (cols.seq >= 0)
    device = is_coll & (cols.stream >= 0)
    # On GPU ranks match device kernels (their start is when the rank really arrived); else host calls.
    pick = device if (budget.mode == "device" and device.any()) else is_coll & (cols.stream < 0)
    if budget.mode == "host":
        pick &= cols.tid == budget.training_tid
    idx = np.flatnonzero(pick)
    idx = idx[np.argsort(cols.start_ns[idx], kind="stable")]
    step_of = _step_index(cols, budget, idx)
    ordinal: dict[tuple[str, str, int], int] = defaultdict(int)
    keys: list[CollectiveKey | None] = []
    for j, i in enumerate(idx.tolist()):
        group, inferred = "0", False
        raw = cols.attrs[i] if cols.attrs is not None else None
        if isinstance(raw, str) and raw:
            try:
                attrs = json.loads(raw)
                group = str(attrs.get("process_group", "0"))
                inferred = attrs.get("seq_source") == "order"
            except (ValueError, AttributeError):
                pass
        side = "device" if cols.stream[i] >= 0 else "host"
        if not inferred or not budget.steps_from_markers:
            keys.append((side, group, int(cols.seq[i])))
        elif step_of[j] < 0:
            keys.append(None)  # outside every step: its order says nothing across ranks
        else:
            step_id = int(budget.step_ids[step_of[j]])
            ordinal[(side, group, step_id)] += 1
            keys.append((side, group, "step", step_id, ordinal[(side, group, step_id)]))
    return idx, keys


def _step_index(cols: SpanColumns, budget: RankBudget, idx: np.ndarray) -> np.ndarray:
    """Which step (row of the budget, -1 for none) each collective was issued in.

    A device kernel may start in the next step on a busy device; the host call that launched it (same
    correlation id) says when the rank issued it, so that time decides.
    """
    issued = cols.start_ns[idx]
    on_device = cols.stream[idx] >= 0
    if on_device.any():
        issued = np.where(on_device, launch_ns(cols, idx)[0], issued)
    starts, ends = budget.step_start_ns, budget.step_end_ns
    if starts.size == 0:
        return np.full(idx.size, -1, dtype=np.int64)
    row = np.searchsorted(starts, issued, side="right") - 1
    inside = (row >= 0) & (issued < ends[np.maximum(row, 0)])
    return np.where(inside, row, -1)


def analyze_cross_rank(
    ranks: dict[int, tuple[SpanColumns, RankBudget]],
    labels: dict[int, StepLabels] | None = None,
    domains: dict[int, str] | None = None,
) -> CrossRankResult:
    """Split sync into wait/transfer on every rank and name the rank the others wait for.

    `labels` (each rank's stages and tags, `step_labels.step_labels`) let the straggler say which tag value
    makes it slow (`Straggler.tag_cause`). `domains` (each rank's clock domain: its host or node) lets the
    offsets between hosts' clocks be estimated from the matched collectives and taken out first
    (`clock_align.py`); None: every rank reads one clock."""
    arrivals: dict[CollectiveKey, dict[int, tuple[int, int, int]]] = defaultdict(dict)
    for rank, (cols, budget) in ranks.items():
        idx, keys = _collective_keys(cols, budget)
        rows = _step_index(cols, budget, idx)
        for i, key, row in zip(idx.tolist(), keys, rows.tolist(), strict=True):
            if key is not None:
                arrivals[key].setdefault(rank, (int(cols.start_ns[i]), int(cols.end_ns[i]), int(row)))

    clocks = None
    if domains and len({domains.get(r, "") for r in ranks}) > 1:
        clocks = estimate_offsets(arrivals, {r: domains.get(r, "") for r in ranks})
    off = clocks.offsets_ns if clocks is not None else {}

    wait_iv: dict[int, tuple[list[int], list[int]]] = {r: ([], []) for r in ranks}
    caused: dict[int, int] = defaultdict(int)
    caused_iv: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    step_caused = {r: np.zeros(b.step_ids.size, dtype=np.int64) for r, (_, b) in ranks.items()}
    matched = 0
    for per_rank in arrivals.values():
        if len(per_rank) < 2:
            continue
        matched += 1
        # on the reference clock: each rank's times less its clock's offset
        aligned = {r: (s - off.get(r, 0), e - off.get(r, 0), row) for r, (s, e, row) in per_rank.items()}
        last_rank, (t_last, _, last_row) = max(aligned.items(), key=lambda kv: kv[1][0])
        for r, (s, e, _) in aligned.items():
            w_end = min(t_last, e)
            if r == last_rank or w_end <= s:
                continue
            wait_iv[r][0].append(s + off.get(r, 0))  # back on the waiting rank's own timeline
            wait_iv[r][1].append(w_end + off.get(r, 0))
            caused[last_rank] += w_end - s
            caused_iv[last_rank][0].append(s + off.get(last_rank, 0))  # on the late rank's timeline
            caused_iv[last_rank][1].append(w_end + off.get(last_rank, 0))
            if last_row >= 0:
                step_caused[last_rank][last_row] += w_end - s

    sync_idx = CAT_INDEX[Category.SYNC.value]
    splits: dict[int, RankSyncSplit] = {}
    step_wait: dict[int, np.ndarray] = {}
    for rank, (_, budget) in ranks.items():
        sync_ns = int(budget.step_category_ns[:, sync_idx].sum()) if budget.step_category_ns.size else 0
        starts, ends = (np.array(x, dtype=np.int64) for x in wait_iv[rank])
        wait_ns = 0
        if starts.size and sync_ns:
            wait_ns = int(budget.timeline.category_ns_within(starts, ends)[sync_idx])
        splits[rank] = RankSyncSplit(rank, sync_ns, wait_ns, sync_ns - wait_ns)
        step_wait[rank] = _sync_ns_per_step(budget, starts, ends)

    straggler = None
    total_wait = sum(caused.values())
    if total_wait > 0:
        worst = max(caused, key=lambda r: caused[r])
        c_s, c_e = (np.array(x, dtype=np.int64) for x in caused_iv[worst])
        doing = ranks[worst][1].timeline.category_ns_within(c_s, c_e)
        straggler = Straggler(
            rank=worst,
            caused_wait_ns=int(caused[worst]),
            share_pct=100.0 * caused[worst] / total_wait,
            doing_ns=tuple(
                sorted(
                    ((CATEGORIES[i].value, int(v)) for i, v in enumerate(doing) if v > 0),
                    key=lambda kv: -kv[1],
                )
            ),
            matched_collectives=matched,
            tag_cause=tag_cause(worst, labels, step_caused, step_wait) if labels else None,
        )
    return CrossRankResult(
        splits=splits,
        straggler=straggler,
        matched_collectives=matched,
        step_wait_ns=step_wait,
        step_caused_ns=step_caused,
        clocks=clocks,
    )


def _sync_ns_per_step(budget: RankBudget, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per budget row, the `sync` ns of the rank's timeline inside the union of the intervals, each piece
    of the union counted in the step it starts in."""
    out = np.zeros(budget.step_ids.size, dtype=np.int64)
    points = budget.timeline.points
    if starts.size == 0 or points.size < 2 or out.size == 0:
        return out
    u_s, u_e = iv.union(starts, ends)
    is_sync = budget.timeline.category == CAT_INDEX[Category.SYNC.value]
    cum = np.concatenate([[0], np.cumsum(np.diff(points) * is_sync)])

    def sync_before(t: np.ndarray) -> np.ndarray:  # sync ns on the timeline before each instant
        t = np.clip(t, points[0], points[-1])
        j = np.clip(np.searchsorted(points, t, side="right") - 1, 0, is_sync.size - 1)
        return cum[j] + (t - points[j]) * is_sync[j]

    inside = sync_before(u_e) - sync_before(u_s)
    row = np.searchsorted(budget.step_start_ns, u_s, side="right") - 1
    ok = (row >= 0) & (u_s < budget.step_end_ns[np.maximum(row, 0)])
    np.add.at(out, row[ok], inside[ok])
    return out
