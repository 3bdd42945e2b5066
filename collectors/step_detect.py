"""Training steps found without code: the periodic structure of the training thread's sampled stacks.

A training loop is one Python frame (the *loop frame*: `<module>`, `main`, `Trainer.fit`...) whose current
line cycles through the loop body once per step: `for batch in loader` -> forward -> backward ->
`opt.step()` -> maybe a checkpoint -> back to the top. From the stacks of the training thread:

1. The loop frame is the shallowest frame under which most of the thread's time is spent and whose line
   takes at least two values that each recur (a `<module>` that only sits on `main()` is skipped).
2. The *anchor* line is the loop line doing the optimizer update (most time in `torch/optim/` frames), or
   without one the line with the most forward/backward time: a step holds it exactly once.
3. Each loop line that recurs is a candidate *marker*; splitting the line sequence at its entries gives
   cycles. Markers whose cycles contain the anchor at least 80% of the time are steps (this rejects the lines
   of an inner loop and keeps gradient accumulation at one step per update); of these, the one with the most
   cycles wins (a checkpoint every 4 steps makes 4-step cycles, which lose), ties going to the first line of
   the loop body (`for batch in loader`), so a step starts where it waits for its data.

Confidence (0-1) is the product of: the share of cycles holding the anchor the usual number of times (a
missed marker or anchor breaks that), the samples per step (under ~6 the boundaries blur), the number of
cycles (4 or more), and how much of the thread's time is inside the loop. Steps are emitted only above a
threshold; the time budget stands without them (the whole window is then one step).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Frame = tuple[str, str, int]

MIN_LOOP_SHARE = 0.6
"""The loop frame must hold at least this share of the training thread's sampled time."""
MIN_ENTRIES = 3
"""A line must be entered this often to count as recurring (a marker, or a sign of a loop)."""
ANCHOR_HOLD = 0.8
"""Share of a marker's cycles that must contain the anchor line."""
DEFAULT_MIN_CONFIDENCE = 0.6


@dataclass(frozen=True, slots=True)
class LoopMarker:
    """A chosen loop frame and marker line, kept so later samples are cut the same way."""

    prefix: tuple[Frame, ...]
    """The frames above the loop frame, lines included (the same call site every time)."""
    loop_file: str
    loop_function: str
    line: int
    """Entering this line of the loop frame starts a step."""
    anchor_line: int
    """The loop line each step holds once (the optimizer update, or the heaviest forward/backward line)."""


@dataclass(frozen=True, slots=True)
class StepDetection:
    """What step detection found, with its confidence and, when it found nothing, why."""

    confidence: float
    """0-1; steps are used when it reaches the caller's threshold."""
    boundaries_ns: np.ndarray
    """Start times of steps (int64, the caller's clock); step i is [b[i], b[i+1]), so len-1 steps."""
    marker: LoopMarker | None
    period_ms: float | None
    """Median step duration."""
    samples_per_step: float | None
    """Median step duration times the sampling rate."""
    cycles: int
    reason: str
    """One line: what the steps are cut on, or why there are none."""

    @property
    def steps(self) -> int:
        return max(int(self.boundaries_ns.size) - 1, 0)

    def describe_marker(self) -> str | None:
        if self.marker is None:
            return None
        m = self.marker
        return f"{m.loop_function} ({m.loop_file}:{m.line})"


def _none(reason: str, marker: LoopMarker | None = None) -> StepDetection:
    return StepDetection(0.0, np.zeros(0, dtype=np.int64), marker, None, None, 0, reason)


def _is_optimizer(frames: tuple[Frame, ...], depth: int) -> bool:
    return any("torch/optim/" in f[0].replace("\\", "/") for f in frames[depth + 1 :])


def _find_loop(
    stacks: Sequence[tuple[Frame, ...]], dur: np.ndarray
) -> tuple[int, tuple[Frame, ...], str, str, float] | str:
    """(depth, prefix, file, function, share) of the loop frame, or the reason there is none."""
    total = float(dur.sum()) or 1.0
    idx = np.arange(len(stacks))
    prefix: tuple[Frame, ...] = ()
    for depth in range(256):
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i in idx:
            st = stacks[i]
            if len(st) > depth and st[:depth] == prefix:
                groups[(st[depth][0], st[depth][1])].append(int(i))
        if not groups:
            return "the training thread's stacks share no frame that could hold a loop"
        key, members = max(groups.items(), key=lambda kv: float(dur[kv[1]].sum()))
        share = float(dur[members].sum()) / total
        if share < MIN_LOOP_SHARE:
            return f"no frame holds {MIN_LOOP_SHARE:.0%} of the training thread's time (best {share:.0%})"
        lines = [stacks[i][depth][2] for i in members]
        entries: Counter[int] = Counter()
        prev = None
        for line in lines:
            if line != prev:
                entries[line] += 1
            prev = line
        if sum(1 for n in entries.values() if n >= MIN_ENTRIES) >= 2:
            return depth, prefix, key[0], key[1], share
        line_dur: Counter[int] = Counter()
        for i, line in zip(members, lines):
            line_dur[line] += float(dur[i])
        top_line = line_dur.most_common(1)[0][0]
        prefix = prefix + ((key[0], key[1], top_line),)
        idx = np.array([i for i, line in zip(members, lines) if line == top_line])
    return "stack too deep"


def detect_steps(
    starts_ns: np.ndarray,
    ends_ns: np.ndarray,
    stacks: Sequence[tuple[Frame, ...]],
    categories: Sequence[str | None],
    rate_hz: float,
    marker: LoopMarker | None = None,
) -> StepDetection:
    """Find training steps in the training thread's sampled stacks.

    Args:
        starts_ns, ends_ns: each sampled interval of the thread (any clock, ns), in time order.
        stacks: the stack of each interval, root first.
        categories: the budget category of each interval ("compute", "data_loading", ... or None).
        rate_hz: the sampling rate (for the samples-per-step part of the confidence).
        marker: reuse an earlier choice of loop frame and marker line (live runs keep their steps stable).
    """
    n = len(stacks)
    if n < 2 * MIN_ENTRIES:
        return _none("too few samples of the training thread yet", marker)
    starts = np.asarray(starts_ns, dtype=np.int64)
    dur = (np.asarray(ends_ns, dtype=np.int64) - starts).astype(np.float64)
    if marker is None:
        found = _find_loop(stacks, dur)
        if isinstance(found, str):
            return _none(found)
        depth, prefix, loop_file, loop_function, share = found
    else:
        depth, prefix = len(marker.prefix), marker.prefix
        loop_file, loop_function = marker.loop_file, marker.loop_function
        inside = [
            len(s) > depth and s[:depth] == prefix and s[depth][:2] == (loop_file, loop_function)
            for s in stacks
        ]
        share = float(dur[np.array(inside)].sum()) / (float(dur.sum()) or 1.0)

    # the loop frame's line over time, as runs: token -1 = outside the loop frame
    tokens = np.full(n, -1, dtype=np.int64)
    opt_t: Counter[int] = Counter()
    compute_t: Counter[int] = Counter()
    for i, st in enumerate(stacks):
        if (
            len(st) > depth
            and st[:depth] == prefix
            and st[depth][0] == loop_file
            and st[depth][1] == loop_function
        ):
            line = st[depth][2]
            tokens[i] = line
            if categories[i] == "compute":
                compute_t[line] += dur[i]
                if _is_optimizer(st, depth):
                    opt_t[line] += dur[i]
    change = np.flatnonzero(np.diff(tokens) != 0) + 1
    run_start = np.concatenate([[0], change])
    run_tok = tokens[run_start]
    run_t = starts[run_start]

    if marker is not None:
        anchor = marker.anchor_line
    elif opt_t:
        anchor = opt_t.most_common(1)[0][0]
    elif compute_t:
        anchor = compute_t.most_common(1)[0][0]
    else:
        return _none("no forward/backward/optimizer work seen on the training thread")

    def cycles_for(line: int) -> tuple[np.ndarray, list[int]]:
        entries = np.flatnonzero(run_tok == line)
        holds = []
        for a, b in zip(entries[:-1], entries[1:]):
            seg = run_tok[a:b]
            holds.append(int(np.count_nonzero(seg == anchor)))
        return entries, holds

    if marker is not None:
        chosen = marker.line
        entries, holds = cycles_for(chosen)
    else:
        counts = Counter(run_tok[run_tok >= 0].tolist())
        cands: list[tuple[int, int, np.ndarray, list[int]]] = []  # (cycles, line, entries, holds)
        for line, count in counts.items():
            if count < MIN_ENTRIES:
                continue
            entries, holds = cycles_for(line)
            if holds and sum(1 for h in holds if h > 0) >= ANCHOR_HOLD * len(holds):
                cands.append((len(holds), line, entries, holds))
        if not cands:
            return _none(
                f"the loop in {loop_function} ({loop_file}) has no line that recurs once per "
                f"update of line {anchor}"
            )
        most = max(c[0] for c in cands)
        # near-ties (short lines are sometimes missed between samples): the first line of the loop body
        _, chosen, entries, holds = min((c for c in cands if c[0] >= 0.9 * most), key=lambda c: c[1])
        marker = LoopMarker(prefix, loop_file, loop_function, chosen, anchor)

    if len(holds) < 1:
        return _none("fewer than two entries into the step marker yet", marker)
    boundaries = run_t[entries]
    step_ns = np.diff(boundaries).astype(np.float64)
    modal = Counter(holds).most_common(1)[0][0]
    regular = sum(1 for h in holds if h == modal) / len(holds)
    if modal == 0:
        regular = 0.0
    period_ns = float(np.median(step_ns))
    spc = period_ns * rate_hz / 1e9
    resolution = min(1.0, spc / 6.0)
    count = min(1.0, len(holds) / 4.0)
    inside = min(1.0, max(0.0, (share - 0.5) / 0.4))
    confidence = regular * resolution * count * inside
    reason = (
        f"steps start at {loop_function} ({loop_file}:{chosen}); {regular:.0%} of {len(holds)} cycles hold the "
        f"update at line {anchor} {modal}x; {spc:.1f} samples per step; loop holds {share:.0%} of the thread"
    )
    return StepDetection(
        confidence=round(confidence, 3),
        boundaries_ns=boundaries.astype(np.int64),
        marker=marker,
        period_ms=period_ns / 1e6,
        samples_per_step=spc,
        cycles=len(holds),
        reason=reason,
    )
