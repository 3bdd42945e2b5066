"""The time-budget engine: each step of each rank split into the eight categories, summing to 100%.

DESIGN.md "The time budget" is the specification. In short:
1. Device busy is the union of device intervals; compute kernels beat communication and memory kernels.
2. Device-idle time goes to the host activity on the training thread (and, on GPU ranks, the threads that
   launch device work) by priority checkpoint_io > sync > data_loading > cpu_preprocessing > memcpy >
   host_overhead, else unattributed.
3. On a rank with no device events, compute is the training thread's math; everything else as above, so a
   collective or a DataLoader wait nested inside a forward region still counts as what it is.

Refinements (README.md, "The time budget"):
- Preprocessing inside a DataLoader wait (a loader without workers runs the Dataset on the training thread):
  a cpu_preprocessing span nested in a data_loading span of the same thread is cpu_preprocessing.
- Communication on other threads: time the rules leave unattributed (the training thread has nothing of its
  own: no span, or only spans that say "unattributed", such as a stack sampler's "waiting on another
  thread") while a collective of the same process runs on another of its threads is sync, and so is the
  whole of such a wait that a collective overlaps. The HTA-compatible view (temporal.py) does not count
  it, as HTA does not.
- Warm-up: leading steps much slower than the rest (`warmup.py`) are left out of the budget and reported on
  their own (`RankBudget.warmup`), unless `include_warmup`.

The whole rank is cut once into elementary segments at every interval boundary; each segment gets one
category by those rules, and segments are summed per step. Everything is numpy: no per-event Python loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from gpuwatch.attribution import intervals as iv
from gpuwatch.attribution.value_codes import ValueCodes, kind_is, span_categories, span_kinds
from gpuwatch.attribution.warmup import warmup_steps
from gpuwatch.records import (
    CATEGORIES,
    DEVICE_KIND_CATEGORY,
    DEVICE_KINDS,
    HOST_PRIORITY,
    Category,
    SpanColumns,
    SpanKind,
)

CAT_INDEX: dict[str, int] = {c.value: i for i, c in enumerate(CATEGORIES)}
_DEVICE_PRIORITY = (Category.COMPUTE, Category.SYNC, Category.MEMCPY)
"""Which device work counts where device spans overlap: compute hides communication, which hides copies."""
_NOT_ACTIVITY = np.array([SpanKind.STEP.value, "gpu_annotation"], dtype=object)


def name_codes(cols: SpanColumns) -> np.ndarray:
    """An int per span, equal exactly for equal names: the reader's dictionary codes when it has them."""
    if cols.name_code is not None:
        return cols.name_code
    index: dict[str, int] = {}
    return np.fromiter((index.setdefault(n, len(index)) for n in cols.name.tolist()), np.int64, len(cols))


def launch_ns(cols: SpanColumns, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """When the spans `idx` were launched: the start of the host runtime call with the same correlation id.

    Returns `(launch_ns, found)`: `found` marks the spans whose launch is in the trace (the others keep their
    own start); it is None when the trace has no runtime call with a correlation id at all.
    """
    launch = cols.start_ns[idx].copy()
    runtime = np.flatnonzero(kind_is(cols, SpanKind.RUNTIME.value) & (cols.correlation >= 0))
    if runtime.size == 0:
        return launch, None
    r_corr = cols.correlation[runtime]
    order = np.argsort(r_corr, kind="stable")
    r_corr, r_start = r_corr[order], cols.start_ns[runtime][order]
    d_corr = cols.correlation[idx]
    pos = np.clip(np.searchsorted(r_corr, d_corr), 0, r_corr.size - 1)
    found = (d_corr >= 0) & (r_corr[pos] == d_corr)
    return np.where(found, r_start[pos], launch), found


@dataclass(frozen=True, slots=True)
class Evidence:
    """One named contributor to a category on one rank: which spans, how much time."""

    category: str
    name: str
    """Span name (operator, kernel, hook, stack frame) as recorded."""
    total_ns: int
    """Time this name explains in the category, over all steps."""
    count: int
    """How many spans of that name contributed."""


@dataclass(frozen=True, slots=True)
class Timeline:
    """One rank's category at every instant of its steps: segment i is [points[i], points[i+1])."""

    points: np.ndarray
    category: np.ndarray
    """Index into CATEGORIES per segment, -1 outside any step."""

    def category_ns_within(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Time per category (array of 8, ns) inside the union of the given intervals."""
        region = iv.union(starts, ends)
        out = np.zeros(len(CATEGORIES), dtype=np.int64)
        if region[0].size == 0 or self.points.size < 2:
            return out
        seg_s, seg_e = self.points[:-1], self.points[1:]
        inside = iv.overlap(region, seg_s, seg_e)
        valid = self.category >= 0
        np.add.at(out, self.category[valid], inside[valid])
        return out


@dataclass(frozen=True, slots=True)
class Warmup:
    """The leading steps of a rank that warm-up left out of its budget: how many, how long, what they did."""

    step_ids: np.ndarray
    step_start_ns: np.ndarray
    step_end_ns: np.ndarray
    step_category_ns: np.ndarray
    """Shape (warm-up steps, 8), columns in CATEGORIES order, as the budget would have counted them."""
    other_thread_sync_ns: np.ndarray
    """Of their sync, ns per step explained only by collectives on other threads."""
    evidence: tuple[Evidence, ...]
    """What explains their time, by category (top names per category)."""
    reference_step_ns: int
    """The median step they were compared with (`warmup.warmup_steps`)."""
    included: bool
    """True when the budget kept them (`include_warmup`): then they are also the budget's first steps."""

    @property
    def step_ns(self) -> np.ndarray:
        return self.step_end_ns - self.step_start_ns


@dataclass(frozen=True, slots=True)
class RankBudget:
    """The budget of one rank: per-step nanoseconds in each category, and what explains them."""

    rank: int
    mode: str
    """"device" when the rank has device events (GPU), "host" when compute is the training thread's math."""
    training_tid: int
    step_ids: np.ndarray
    step_start_ns: np.ndarray
    step_end_ns: np.ndarray
    step_category_ns: np.ndarray
    """Shape (steps, 8), columns in CATEGORIES order; each row sums to the step's wall time."""
    evidence: tuple[Evidence, ...]
    timeline: Timeline
    steps_from_markers: bool
    """False when the trace had no step markers and the whole rank is one step."""
    other_thread_sync_ns: np.ndarray | None = None
    """Per step, the ns of `sync` explained only by collectives on other threads of the process (None: 0)."""
    warmup: Warmup | None = None
    """Leading warm-up steps (None: the run has none); left out of the arrays above unless `included`."""

    @property
    def step_ns(self) -> np.ndarray:
        return self.step_end_ns - self.step_start_ns

    def all_steps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`(step_ids, step_start_ns, step_category_ns, other_thread_sync_ns)` of every step, warm-up
        included: what the HTA-compatible view reads (HTA knows nothing of warm-up)."""
        other = self.other_thread_sync_ns
        if other is None:
            other = np.zeros(self.step_ids.size, dtype=np.int64)
        w = self.warmup
        if w is None or w.included:
            return self.step_ids, self.step_start_ns, self.step_category_ns, other
        return (
            np.concatenate([w.step_ids, self.step_ids]),
            np.concatenate([w.step_start_ns, self.step_start_ns]),
            np.concatenate([w.step_category_ns, self.step_category_ns]),
            np.concatenate([w.other_thread_sync_ns, other]),
        )

    def total_pct(self) -> dict[Category, float]:
        """Share of all steps' wall time per category, 0-100."""
        sums = self.step_category_ns.sum(axis=0)
        wall = max(int(sums.sum()), 1)
        return {c: 100.0 * float(sums[i]) / wall for i, c in enumerate(CATEGORIES)}


def pick_training_tid(
    cols: SpanColumns, kinds: ValueCodes | None = None, cats: ValueCodes | None = None
) -> int:
    """The host thread that runs the training loop: the one with step markers, else the busiest host thread.
    `kinds`, `cats`: the kind and category columns coded already (`ValueCodes`), if the caller has them."""
    kinds = kinds or span_kinds(cols)
    host = ~kinds.isin(DEVICE_KINDS) | (cols.stream < 0)
    steps = host & kinds.eq(SpanKind.STEP.value)
    if steps.any():
        tids, counts = np.unique(cols.tid[steps], return_counts=True)
        return int(tids[np.argmax(counts)])
    categorized = host & ~(cats or span_categories(cols)).eq(None)
    pick = categorized if categorized.any() else host
    if not pick.any():
        return 0
    tids, inverse = np.unique(cols.tid[pick], return_inverse=True)
    busy = np.bincount(inverse, weights=(cols.end_ns[pick] - cols.start_ns[pick]).astype(np.float64))
    return int(tids[np.argmax(busy)])


def _steps(
    cols: SpanColumns, tid: int, kinds: ValueCodes
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, np.ndarray]:
    """`(ids, starts, ends, from_markers, observed)` of the training thread's steps, in time order."""
    mask = kinds.eq(SpanKind.STEP.value) & (cols.tid == tid)
    if mask.any():
        order = np.argsort(cols.start_ns[mask], kind="stable")
        ids = cols.step[mask][order]
        starts = cols.start_ns[mask][order]
        ends = cols.end_ns[mask][order]
        # a step ends where the next one begins (markers can overlap by a few microseconds)
        ends = np.minimum(ends, np.append(starts[1:], ends[-1:]))
        ids = np.where(ids >= 0, ids, np.arange(ids.size))
        return ids, starts, ends, True, _observed(cols.attrs[mask][order])
    if len(cols) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, False, np.zeros(0, dtype=bool)
    one = np.array([0])
    return (
        one,
        cols.start_ns.min(keepdims=True),
        cols.end_ns.max(keepdims=True),
        False,
        np.ones(1, dtype=bool),
    )


def _observed(step_attrs: np.ndarray) -> np.ndarray:
    """Per step span, False where its attrs say `"observed": false` (a watch that thinned its steps,
    capture/step_pacing.py), else True. One pass over the steps' attrs, parsing only those that name it."""
    out = np.ones(step_attrs.size, dtype=bool)
    for i, text in enumerate(step_attrs.tolist()):
        if text is not None and "observed" in text:
            try:
                out[i] = json.loads(text).get("observed") is not False
            except (ValueError, AttributeError):
                pass
    return out


def _extrapolate(step_cat: np.ndarray, other_ns: np.ndarray, observed: np.ndarray, n_warm: int) -> None:
    """Give the steps the watch did not observe the observed steps' split, in place.

    In such a step only checkpoint writes were timed (capture/step_pacing.py); the rest of its wall time is
    split among the categories in the proportions the observed steps after the `n_warm` warm-up steps give
    them (a slow first step is no sample of the steps that follow), checkpoint_io left out of those
    proportions (it was measured in every step). Each row still sums to its step's wall time; the rounding
    remainder goes to the largest category. `other_ns` (sync through other threads) scales alike.
    """
    sample = observed.copy()
    sample[:n_warm] = False
    if observed.all() or not sample.any():
        return
    ckpt = CAT_INDEX[Category.CHECKPOINT_IO.value]
    seen = step_cat[sample].sum(axis=0).astype(np.float64)
    seen[ckpt] = 0.0
    total = float(seen.sum())
    if total <= 0.0:
        return
    mix = seen / total
    rows = np.flatnonzero(~observed)
    rest = step_cat[rows].sum(axis=1) - step_cat[rows, ckpt]
    split = np.floor(rest[:, None] * mix[None, :]).astype(np.int64)
    split[:, int(np.argmax(mix))] += rest - split.sum(axis=1)
    split[:, ckpt] = step_cat[rows, ckpt]
    step_cat[rows] = split
    other_ns[rows] = np.rint(rest * (float(other_ns[sample].sum()) / total)).astype(np.int64)


def compute_rank_budget(
    rank: int, cols: SpanColumns, *, evidence_per_category: int = 3, include_warmup: bool = False
) -> RankBudget:
    """The time budget of one rank from all its spans (any order).

    Args:
        rank: the rank the spans belong to.
        cols: every span of that rank (host and device), times in ns on one timeline.
        evidence_per_category: how many top contributing span names to keep per category.
        include_warmup: keep the warm-up steps in the budget (they are reported either way).
    """
    kinds, cats = span_kinds(cols), span_categories(cols)
    tid = pick_training_tid(cols, kinds, cats)
    step_ids, step_s, step_e, from_markers, observed = _steps(cols, tid, kinds)
    is_device = kinds.isin(DEVICE_KINDS) & (cols.stream >= 0)
    mode = "device" if is_device.any() else "host"

    host_tids = {tid}
    if mode == "device":  # threads that launch device work (the autograd thread runs backward launches)
        host_tids |= set(iv.unique_sorted(cols.tid[kinds.eq(SpanKind.RUNTIME.value) & ~is_device]).tolist())
    on_host = ~is_device & np.isin(cols.tid, list(host_tids)) & ~kinds.isin(_NOT_ACTIVITY.tolist())
    # a span that says "unattributed" (a thread blocked on another thread: stack samplers) is no activity
    waiting = on_host & cats.eq(Category.UNATTRIBUTED.value)
    on_host &= ~waiting

    start, end = cols.start_ns, cols.end_ns
    sets: list[tuple[int, np.ndarray]] = []  # (category index, mask) in priority order

    def add(category: Category, mask: np.ndarray) -> None:
        if mask.any():
            sets.append((CAT_INDEX[category.value], mask))

    if mode == "device":  # device spans count as their kind's category (the one import labels them with)
        for category in _DEVICE_PRIORITY:
            device_kinds = [k for k, c in DEVICE_KIND_CATEGORY.items() if c == category.value]
            add(category, is_device & kinds.isin(device_kinds))
    for category in HOST_PRIORITY:
        if category == Category.DATA_LOADING:
            add(
                Category.CPU_PREPROCESSING,
                _nested(
                    cols,
                    on_host & cats.eq(Category.CPU_PREPROCESSING.value),
                    on_host & cats.eq(category.value),
                ),
            )
        add(category, on_host & cats.eq(category.value))
    if mode == "host":
        add(Category.COMPUTE, on_host & cats.eq(Category.COMPUTE.value))
    # any other host activity on those threads is overhead (on GPU ranks, host-side math is launch overhead)
    add(Category.HOST_OVERHEAD, on_host)
    # last: the training thread has nothing of its own, a collective of the process runs on another thread
    other_set = len(sets)
    add(Category.SYNC, _other_thread_collectives(cols, kinds, cats, tid, host_tids, is_device, waiting))

    masks_union = [iv.union(start[m], end[m]) for _, m in sets]
    bounds = [step_s, step_e] + [a for u in masks_union for a in u]
    points = iv.unique_sorted(np.concatenate(bounds)) if step_s.size else np.zeros(0, dtype=np.int64)
    seg_cat = np.full(max(points.size - 1, 0), CAT_INDEX[Category.UNATTRIBUTED.value], dtype=np.int64)
    left = points[:-1]
    decided = np.zeros(left.size, dtype=bool)
    by_other = np.zeros(left.size, dtype=bool)
    for k, ((cat_idx, _), u) in enumerate(zip(sets, masks_union, strict=True)):
        hit = ~decided & iv.covered(u, left)
        seg_cat[hit] = cat_idx
        decided |= hit
        if k == other_set:
            by_other = hit
    # which step each segment belongs to (steps are disjoint and sorted)
    seg_step = np.searchsorted(step_s, left, side="right") - 1
    in_step = (seg_step >= 0) & (left < step_e[np.maximum(seg_step, 0)])
    seg_cat = np.where(in_step, seg_cat, -1)
    lengths = np.diff(points)
    n_steps = step_s.size
    n_warm, reference = warmup_steps(step_e - step_s, from_markers=from_markers)
    step_cat = np.zeros((n_steps, len(CATEGORIES)), dtype=np.int64)
    other_ns = np.zeros(n_steps, dtype=np.int64)
    if n_steps and left.size:
        flat = seg_step[in_step] * len(CATEGORIES) + seg_cat[in_step]
        step_cat = np.bincount(flat, weights=lengths[in_step], minlength=n_steps * len(CATEGORIES))
        step_cat = np.rint(step_cat).astype(np.int64).reshape(n_steps, len(CATEGORIES))
        other = in_step & by_other
        other_ns = np.rint(np.bincount(seg_step[other], weights=lengths[other], minlength=n_steps)).astype(
            np.int64
        )
        if not observed.all():
            _extrapolate(step_cat, other_ns, observed, n_warm)
            # the timeline shows what was seen: an unobserved step's unexplained time is no category
            unseen = in_step & ~observed[np.maximum(seg_step, 0)]
            seg_cat = np.where(unseen & (seg_cat == CAT_INDEX[Category.UNATTRIBUTED.value]), -1, seg_cat)

    warmup = None
    if n_warm:
        in_warm = in_step & (seg_step < n_warm)
        warm_timeline = Timeline(points=points, category=np.where(in_warm, seg_cat, -1))
        warmup = Warmup(
            step_ids=step_ids[:n_warm],
            step_start_ns=step_s[:n_warm],
            step_end_ns=step_e[:n_warm],
            step_category_ns=step_cat[:n_warm],
            other_thread_sync_ns=other_ns[:n_warm],
            evidence=_evidence(cols, sets, warm_timeline, evidence_per_category),
            reference_step_ns=reference,
            included=include_warmup,
        )
        if not include_warmup:
            seg_cat = np.where(in_warm, -1, seg_cat)
            step_ids, step_s, step_e = step_ids[n_warm:], step_s[n_warm:], step_e[n_warm:]
            step_cat, other_ns = step_cat[n_warm:], other_ns[n_warm:]
    timeline = Timeline(points=points, category=seg_cat)
    evidence = _evidence(cols, sets, timeline, evidence_per_category)
    return RankBudget(
        rank=rank,
        mode=mode,
        training_tid=tid,
        step_ids=step_ids,
        step_start_ns=step_s,
        step_end_ns=step_e,
        step_category_ns=step_cat,
        evidence=evidence,
        timeline=timeline,
        steps_from_markers=from_markers,
        other_thread_sync_ns=other_ns,
        warmup=warmup,
    )


def _nested(cols: SpanColumns, inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """The spans of `inner` that lie wholly inside the union of the spans of `outer` (nested in them)."""
    if not inner.any() or not outer.any():
        return np.zeros(inner.shape, dtype=bool)
    region = iv.union(cols.start_ns[outer], cols.end_ns[outer])
    idx = np.flatnonzero(inner)
    s, e = cols.start_ns[idx], cols.end_ns[idx]
    out = np.zeros(inner.shape, dtype=bool)
    out[idx] = iv.overlap(region, s, e) >= e - s
    return out


def _other_thread_collectives(
    cols: SpanColumns,
    kinds: ValueCodes,
    cats: ValueCodes,
    tid: int,
    host_tids: set[int],
    is_device: np.ndarray,
    waiting: np.ndarray,
) -> np.ndarray:
    """Host spans of collectives (sync, not a runtime call) on threads of the training thread's process
    other than the threads the budget reads (gloo's communication threads, a job's helper threads), and
    the training threads' waits on another thread (`waiting`) that such a collective overlaps: the whole
    wait, hand-off to and from the helper thread included, is waiting for that communication."""
    own = cols.tid == tid
    pids = iv.unique_sorted(cols.pid[own & ~is_device]) if own.any() else np.zeros(0, dtype=np.int64)
    mask = (
        ~is_device
        & cats.eq(Category.SYNC.value)
        & ~kinds.eq(SpanKind.RUNTIME.value)
        & ~np.isin(cols.tid, list(host_tids))
    )
    if pids.size:
        mask &= np.isin(cols.pid, pids)
    if mask.any() and waiting.any():
        region = iv.union(cols.start_ns[mask], cols.end_ns[mask])
        idx = np.flatnonzero(waiting)
        mask = mask.copy()
        mask[idx[iv.overlap(region, cols.start_ns[idx], cols.end_ns[idx]) > 0]] = True
    return mask


def _evidence(
    cols: SpanColumns, sets: list[tuple[int, np.ndarray]], timeline: Timeline, top: int
) -> tuple[Evidence, ...]:
    """For each category, the span names that explain most of the time the engine gave it."""
    if timeline.points.size < 2:
        return ()
    out: list[Evidence] = []
    seg_s, seg_e = timeline.points[:-1], timeline.points[1:]
    codes = name_codes(cols)
    seen: set[int] = set()
    for cat_idx, _ in sets:
        if cat_idx in seen:
            continue
        seen.add(cat_idx)
        region = iv.union(seg_s[timeline.category == cat_idx], seg_e[timeline.category == cat_idx])
        if region[0].size == 0:
            continue
        # all sets feeding this category (host_overhead has one; sync may have device and host sets)
        feed = np.zeros(len(cols), dtype=bool)
        for other_idx, other_mask in sets:
            if other_idx == cat_idx:
                feed |= other_mask
        idx = np.flatnonzero(feed)
        got = iv.overlap(region, cols.start_ns[idx], cols.end_ns[idx])
        hit = got > 0
        if not hit.any():
            continue
        hit_idx = idx[hit]
        uniq, first, inverse = iv.unique_first_inverse(codes[hit_idx])
        sums = np.bincount(inverse, weights=got[hit].astype(np.float64))
        counts = np.bincount(inverse)
        # largest first; equal times by name, so the evidence does not depend on row order
        names = [str(cols.name[hit_idx[k]]) for k in first.tolist()]
        ranked = sorted(range(len(uniq)), key=lambda j: (-sums[j], names[j]))[: 3 * top]
        for j in ranked:  # spans of one name running at once (on several threads) explain their time once
            own = hit_idx[inverse == j]
            own_s, own_e = iv.union(cols.start_ns[own], cols.end_ns[own])
            sums[j] = int(
                iv.overlap(region, own_s, own_e).sum()
            )  # = total(intersect(...)), no sort of region
        for j in sorted(ranked, key=lambda j: (-sums[j], names[j]))[:top]:
            out.append(Evidence(CATEGORIES[cat_idx].value, names[j], int(sums[j]), int(counts[j])))
    return tuple(out)
