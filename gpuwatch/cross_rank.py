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
from dataclasses import dataclass

import numpy as np

from gpuwatch.budget import CAT_INDEX, RankBudget
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


@dataclass(frozen=True, slots=True)
class CrossRankResult:
    splits: dict[int, RankSyncSplit]
    straggler: Straggler | None
    matched_collectives: int


def _collective_keys(cols: SpanColumns, budget: RankBudget) -> tuple[np.ndarray, list[tuple[str, str, int]]]:
    """Indices of the rank's matchable collectives and their (side, group, seq) keys."""
    is_coll = (cols.kind == SpanKind.COLLECTIVE.value) & (cols.seq >= 0)
    device = is_coll & (cols.stream >= 0)
    # On GPU ranks match device kernels (their start is when the rank really arrived); else host calls.
    pick = device if (budget.mode == "device" and device.any()) else is_coll & (cols.stream < 0)
    if budget.mode == "host":
        pick &= cols.tid == budget.training_tid
    idx = np.flatnonzero(pick)
    keys = []
    for i in idx.tolist():
        group = "0"
        raw = cols.attrs[i] if cols.attrs is not None else None
        if isinstance(raw, str) and raw:
            try:
                group = str(json.loads(raw).get("process_group", "0"))
            except ValueError:
                pass
        keys.append(("device" if cols.stream[i] >= 0 else "host", group, int(cols.seq[i])))
    return idx, keys


def analyze_cross_rank(ranks: dict[int, tuple[SpanColumns, RankBudget]]) -> CrossRankResult:
    """Split sync into wait/transfer on every rank and name the rank the others wait for."""
    arrivals: dict[tuple[str, str, int], dict[int, tuple[int, int]]] = defaultdict(dict)
    for rank, (cols, budget) in ranks.items():
        idx, keys = _collective_keys(cols, budget)
        for i, key in zip(idx.tolist(), keys, strict=True):
            arrivals[key].setdefault(rank, (int(cols.start_ns[i]), int(cols.end_ns[i])))

    wait_iv: dict[int, tuple[list[int], list[int]]] = {r: ([], []) for r in ranks}
    caused = defaultdict(int)
    caused_iv: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    matched = 0
    for per_rank in arrivals.values():
        if len(per_rank) < 2:
            continue
        matched += 1
        last_rank, (t_last, _) = max(per_rank.items(), key=lambda kv: kv[1][0])
        for r, (s, e) in per_rank.items():
            w_end = min(t_last, e)
            if r == last_rank or w_end <= s:
                continue
            wait_iv[r][0].append(s)
            wait_iv[r][1].append(w_end)
            caused[last_rank] += w_end - s
            caused_iv[last_rank][0].append(s)
            caused_iv[last_rank][1].append(w_end)

    sync_idx = CAT_INDEX[Category.SYNC.value]
    splits: dict[int, RankSyncSplit] = {}
    for rank, (_, budget) in ranks.items():
        sync_ns = int(budget.step_category_ns[:, sync_idx].sum()) if budget.step_category_ns.size else 0
        starts, ends = (np.array(x, dtype=np.int64) for x in wait_iv[rank])
        wait_ns = 0
        if starts.size and sync_ns:
            wait_ns = int(budget.timeline.category_ns_within(starts, ends)[sync_idx])
        splits[rank] = RankSyncSplit(rank, sync_ns, wait_ns, sync_ns - wait_ns)

    straggler = None
    total_wait = sum(caused.values())
    if total_wait > 0:
        worst = max(caused, key=lambda r: caused[r])
        s, e = (np.array(x, dtype=np.int64) for x in caused_iv[worst])
        doing = ranks[worst][1].timeline.category_ns_within(s, e)
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
        )
    return CrossRankResult(splits=splits, straggler=straggler, matched_collectives=matched)
