"""Clock offsets between hosts, estimated from matched collectives, so cross-rank figures line up.

Each rank records its own wall-clock anchor; ranks on one host read one clock, but two hosts' clocks differ
by whatever NTP left (often milliseconds), and every cross-rank figure (who arrived last at a collective,
how long the others waited) is off by that much. A blocking collective ends on every rank at almost the
same instant (the last data arrives everywhere within a transfer's latency), whenever each rank arrived. So
for each pair of clock domains (a host; under torchrun a node) the median over matched collectives of the
difference of their ranks' end times is the offset between their clocks. The domain of the lowest rank is
the reference; every other domain's offset is relative to it and is taken out of its ranks' times before any
cross-rank figure (`cross_rank.analyze_cross_rank`).

The median is then kept within what every collective proves: no rank leaves a collective before the last
one entered it, so a domain's offset is at least (its rank's start - the reference rank's end) and at most
(its rank's end - the reference rank's start). A recorded start is never later, nor a recorded end earlier,
than the call itself, so a busy host's scheduling delays only widen these bounds: the tightest of them hold
where the median of end times was pulled off by one side being late to record its ends. Bounds that
contradict each other (a collective matched wrongly) are not used.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuwatch.attribution.order_stats import median, percentile

MIN_COLLECTIVES = 3
"""Fewer matched collectives between two domains than this: no estimate (offset 0)."""
_FAR_NS = (-(2**62), 2**62)


@dataclass(frozen=True, slots=True)
class ClockOffsets:
    offsets_ns: dict[int, int]
    """Per rank, how far its clock runs ahead of the reference domain's, in ns (0 for the reference)."""
    domains: dict[int, str]
    """Per rank, its clock domain."""
    collectives: int
    """Matched collectives the estimate used (0: one domain, nothing to estimate)."""
    spread_ns: dict[str, int]
    """Per domain, the interquartile range of its per-collective estimates (how well they agree)."""


def estimate_offsets(
    arrivals: Mapping[Any, Mapping[int, tuple[int, int, int]]], domains: Mapping[int, str]
) -> ClockOffsets:
    """Offsets of every rank's clock from matched collectives.

    Args:
        arrivals: per matched collective, per rank, `(start_ns, end_ns, step row)` on the run's timeline.
        domains: per rank, its clock domain (ranks sharing a domain share a clock).
    """
    ranks = sorted(domains)
    if not ranks:
        return ClockOffsets({}, {}, 0, {})
    ref = domains[ranks[0]]
    diffs: dict[str, list[int]] = defaultdict(list)
    low_ns: dict[str, int] = {}
    high_ns: dict[str, int] = {}
    used = 0
    for per_rank in arrivals.values():
        ends: dict[str, list[int]] = defaultdict(list)
        starts: dict[str, list[int]] = defaultdict(list)
        for r, (s, e, _) in per_rank.items():
            if r in domains:
                ends[domains[r]].append(e)
                starts[domains[r]].append(s)
        if ref not in ends or len(ends) < 2:
            continue
        used += 1
        ref_end = median(np.asarray(ends[ref]))
        for d, values in ends.items():
            if d != ref:
                diffs[d].append(int(round(median(np.asarray(values)) - ref_end)))
                low_ns[d] = max(low_ns.get(d, _FAR_NS[0]), max(starts[d]) - min(ends[ref]))
                high_ns[d] = min(high_ns.get(d, _FAR_NS[1]), min(ends[d]) - max(starts[ref]))
    per_domain: dict[str, int] = {}
    spread: dict[str, int] = {}
    for d, values in diffs.items():
        if len(values) >= MIN_COLLECTIVES:
            arr = np.array(values, dtype=np.float64)
            per_domain[d] = int(round(median(arr)))
            if low_ns[d] <= high_ns[d]:
                per_domain[d] = min(max(per_domain[d], low_ns[d]), high_ns[d])
            q1, q3 = percentile(arr, 25), percentile(arr, 75)
            spread[d] = int(round(float(q3 - q1)))
    return ClockOffsets(
        offsets_ns={r: per_domain.get(domains[r], 0) for r in ranks},
        domains=dict(domains),
        collectives=used if per_domain else 0,
        spread_ns=spread,
    )
