"""Training steps found without code: the periodic structure of the training thread's sampled stacks.

A training loop is one Python frame (the *loop frame*: `<module>`, `main`, `Trainer.fit`, or a per-step
`train_step` called once per batch) whose current line runs down the loop body once per step -
`for batch in loader` -> forward -> backward -> `opt.step()` -> maybe a checkpoint - and then *wraps* back
up to a smaller line number. From the stacks of the training thread:

1. Candidate loop frames lie along the thread's dominant call chain: frames holding at least 60% of its
   sampled time whose line takes at least two values that each recur.
2. The *anchor* is what a step holds once: the optimizer update line (`torch/optim/` frames) when it is
   sampled steadily, else the block of forward/backward/optimizer lines.
3. A step ends at a wrap (a move to a smaller line of the loop frame) once the anchor has run since the last
   boundary; wraps inside an inner loop before the anchor (gradient-accumulation micro-batches) do not cut.
   Lines missed between samples do not matter, only their order. A second pass also cuts at every wrap
   back to the loop's top line (the most common target of the first pass), so a step whose anchor py-spy
   missed (it falls behind on a busy machine) is not merged into the next. The boundary is the first sample
   after the wrap (or the start of time spent outside the loop frame just before it: the caller fetching
   the next batch for a per-step function).
4. Of the candidate frames, the one giving the most steps at the required confidence wins (a two-line
   `for batch in loader: train_step(batch)` whose `for` line is too short to be seen each time merges steps;
   `train_step` below it does not).

Confidence (0-1) multiplies: the share of steps holding the anchor at most the usual number of times (a
missed wrap merges two steps and doubles it), the samples per step (under ~6 the boundaries blur), the
number of steps (4 or more), and how much of the thread's time the loop frame holds. Steps are used above a
threshold; the time budget stands without them (the whole sampled window is then one step).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Frame = tuple[str, str, int]

MIN_LOOP_SHARE = 0.6
"""A loop frame must hold at least this share of the training thread's sampled time."""
MIN_ENTRIES = 3
"""A line must be entered this often to count as recurring."""
DEFAULT_MIN_CONFIDENCE = 0.6


@dataclass(frozen=True, slots=True)
class LoopMarker:
    """A chosen loop frame and anchor line, kept so later samples are cut the same way."""

    prefix: tuple[Frame, ...]
    """The frames above the loop frame, lines included (the same call site every time)."""
    loop_file: str
    loop_function: str
    anchor_lines: tuple[int, ...]
    """The loop lines a step holds as one block: the optimizer update, or all forward/backward lines."""
    top_line: int | None = None
    """The line the loop body starts at (where steps wrap back to), once known."""


@dataclass(frozen=True, slots=True)
class StepDetection:
    """What step detection found, with its confidence and, when it found nothing, why."""

    confidence: float
    """0-1; the caller uses the steps from its threshold on."""
    boundaries_ns: np.ndarray
    """Start times of steps (int64, the caller's clock); step i is [b[i], b[i+1]), so len-1 steps."""
    marker: LoopMarker | None
    period_ms: float | None
    """Median step duration."""
    samples_per_step: float | None
    """Median step duration times the sampling rate."""
    reason: str
    """One line: what the steps are cut on, or why there are none."""

    @property
    def steps(self) -> int:
        return max(int(self.boundaries_ns.size) - 1, 0)

    def describe_marker(self) -> str | None:
        if self.marker is None:
            return None
        m = self.marker
        lines = ", ".join(map(str, m.anchor_lines))
        return f"{m.loop_function} ({m.loop_file}), one pass over line {lines} per step"


def _none(reason: str, marker: LoopMarker | None = None) -> StepDetection:
    return StepDetection(0.0, np.zeros(0, dtype=np.int64), marker, None, None, reason)


def _recurring(lines: Sequence[int]) -> int:
    """How many distinct values of a sequence are entered at least MIN_ENTRIES times."""
    entries: Counter[int] = Counter()
    prev = None
    for line in lines:
        if line != prev:
            entries[line] += 1
        prev = line
    return sum(1 for n in entries.values() if n >= MIN_ENTRIES)


def _loop_candidates(
    stacks: Sequence[tuple[Frame, ...]], dur: np.ndarray
) -> tuple[list[tuple[tuple[Frame, ...], str, str, float]], str]:
    """Candidate loop frames (prefix, file, function, share) from the root down, and a reason if none."""
    total = float(dur.sum()) or 1.0
    idx: list[int] = list(range(len(stacks)))
    prefix: tuple[Frame, ...] = ()
    out: list[tuple[tuple[Frame, ...], str, str, float]] = []
    for depth in range(256):
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i in idx:
            st = stacks[i]
            if len(st) > depth and st[:depth] == prefix:
                groups[(st[depth][0], st[depth][1])].append(i)
        if not groups:
            break
        key, members = max(groups.items(), key=lambda kv: float(dur[kv[1]].sum()))
        share = float(dur[members].sum()) / total
        if share < MIN_LOOP_SHARE:
            if not out:
                return (
                    out,
                    f"no frame holds {MIN_LOOP_SHARE:.0%} of the training thread's time (best {share:.0%})",
                )
            break
        lines = [stacks[i][depth][2] for i in members]
        if _recurring(lines) >= 2:
            out.append((prefix, key[0], key[1], share))
        line_dur: dict[int, float] = defaultdict(float)
        for i, line in zip(members, lines):
            line_dur[line] += float(dur[i])
        top_line = max(line_dur, key=line_dur.__getitem__)
        prefix = prefix + ((key[0], key[1], top_line),)
        idx = [i for i, line in zip(members, lines) if line == top_line]
    return out, "" if out else "the training thread runs no loop (no frame's line recurs)"


def _robust_spread(durations: np.ndarray) -> float:
    """Median absolute deviation over the median: 0 for a steady period, large when entries are missed."""
    med = float(np.median(durations))
    return float(np.median(np.abs(durations - med))) / med if med > 0 else float("inf")


def _pick_anchor(
    run_tok: np.ndarray, run_t: np.ndarray, opt_t: Counter[int], compute_t: Counter[int]
) -> tuple[int, ...]:
    """The optimizer line when it is sampled steadily, else every forward/backward/optimizer line.

    An optimizer step of a few milliseconds is caught by only some samples; the gaps between its entries
    are then random multiples of the step (a large spread), and cutting on it would merge steps. One line of
    the forward/backward block can be missed too (py-spy falls behind on a busy machine); the block as a
    whole is tens of milliseconds and is not.
    """
    if opt_t:
        line = opt_t.most_common(1)[0][0]
        entries = run_t[run_tok == line]
        if entries.size > MIN_ENTRIES and _robust_spread(np.diff(entries).astype(np.float64)) <= 0.3:
            return (line,)
    total = sum(compute_t.values())
    return tuple(sorted(line for line, t in compute_t.items() if t >= 0.02 * total))


def _cut(
    run_tok: np.ndarray, run_t: np.ndarray, anchor: tuple[int, ...], top: int | None
) -> tuple[list[int], list[int], list[int]]:
    """Step boundaries over the loop frame's line runs: (boundaries, anchor blocks per step, wrap targets).

    A wrap (a move to a smaller line) ends a step once the anchor ran since the last boundary, or, with
    `top`, whenever it goes back to `top` or above (the start of the loop body).
    """
    boundaries: list[int] = []
    holds: list[int] = []
    targets: list[int] = []
    held = 0
    in_anchor = False
    prev_line: int | None = None
    outside_since: int | None = None
    for tok, t in zip(run_tok.tolist(), run_t.tolist()):
        if tok < 0:
            if outside_since is None:
                outside_since = t
            continue
        if prev_line is not None and tok < prev_line and (held or (top is not None and tok <= top)):
            if boundaries:
                holds.append(held)
            boundaries.append(outside_since if outside_since is not None else t)
            targets.append(tok)
            held = 0
            in_anchor = False
        if tok in anchor:
            held += 0 if in_anchor else 1  # one block of consecutive anchor lines counts once
            in_anchor = True
        else:
            in_anchor = False
        prev_line = tok
        outside_since = None
    return boundaries, holds, targets


def _at_level(
    starts: np.ndarray,
    dur: np.ndarray,
    stacks: Sequence[tuple[Frame, ...]],
    categories: Sequence[str | None],
    rate_hz: float,
    prefix: tuple[Frame, ...],
    loop_file: str,
    loop_function: str,
    share: float,
    anchor: tuple[int, ...] | None,
    top_line: int | None = None,
) -> StepDetection:
    depth = len(prefix)
    n = len(stacks)
    tokens = np.full(n, -1, dtype=np.int64)  # the loop frame's line; -1 = outside the loop frame
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
                if any("torch/optim/" in f[0].replace("\\", "/") for f in st[depth + 1 :]):
                    opt_t[line] += dur[i]
    change = np.flatnonzero(np.diff(tokens) != 0) + 1
    run_start = np.concatenate([[0], change]).astype(np.int64)
    run_tok = tokens[run_start]
    run_t = starts[run_start]
    if anchor is None:
        if not compute_t:
            return _none("no forward/backward/optimizer work seen on the training thread")
        anchor = _pick_anchor(run_tok, run_t, opt_t, compute_t)
    marker = LoopMarker(prefix, loop_file, loop_function, anchor, top_line)

    cut = _cut(run_tok, run_t, anchor, None)
    if len(cut[2]) < 2:
        return _none(f"fewer than two steps seen in {loop_function} ({loop_file})", marker)
    # second pass: a wrap back to the top of the loop starts a step even when py-spy missed the anchor
    top = marker.top_line if marker.top_line is not None else Counter(cut[2]).most_common(1)[0][0]
    marker = LoopMarker(prefix, loop_file, loop_function, anchor, top)
    boundaries, holds, _ = _cut(run_tok, run_t, anchor, top)
    if len(boundaries) < 2:
        return _none(f"fewer than two steps seen in {loop_function} ({loop_file})", marker)
    b = np.asarray(boundaries, dtype=np.int64)
    step_ns = np.diff(b).astype(np.float64)
    modal = max(1, Counter(holds).most_common(1)[0][0])
    regular = sum(1 for h in holds if h <= modal) / len(holds)  # more: a wrap was missed, steps merged
    period_ns = float(np.median(step_ns))
    spc = period_ns * rate_hz / 1e9
    resolution = min(1.0, spc / 6.0)
    count = min(1.0, len(holds) / 4.0)
    inside = min(1.0, max(0.0, (share - 0.5) / 0.4))
    confidence = regular * resolution * count * inside
    reason = (
        f"loop in {loop_function} ({loop_file}) from line {top}; {regular:.0%} of {len(holds)} steps pass "
        f"line(s) {', '.join(map(str, anchor))} at most {modal}x; {spc:.1f} samples per step; "
        f"the loop holds {share:.0%} of the thread's time"
    )
    return StepDetection(round(confidence, 3), b, marker, period_ns / 1e6, spc, reason)


def detect_steps(
    starts_ns: np.ndarray,
    ends_ns: np.ndarray,
    stacks: Sequence[tuple[Frame, ...]],
    categories: Sequence[str | None],
    rate_hz: float,
    *,
    marker: LoopMarker | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
) -> StepDetection:
    """Find training steps in the training thread's sampled stacks.

    Args:
        starts_ns, ends_ns: each sampled interval of the thread (any clock, ns), in time order.
        stacks: the stack of each interval, root first.
        categories: the budget category of each interval ("compute", "data_loading", ... or None).
        rate_hz: the sampling rate (for the samples-per-step part of the confidence).
        marker: reuse an earlier choice of loop frame and anchor (live runs keep their steps stable).
        min_confidence: among candidate loop frames reaching it, the one with the most steps wins.
    """
    if len(stacks) < 2 * MIN_ENTRIES:
        return _none("too few samples of the training thread yet", marker)
    starts = np.asarray(starts_ns, dtype=np.int64)
    dur = (np.asarray(ends_ns, dtype=np.int64) - starts).astype(np.float64)
    total = float(dur.sum()) or 1.0
    if marker is not None:
        depth = len(marker.prefix)
        inside = [
            len(s) > depth
            and s[:depth] == marker.prefix
            and s[depth][:2] == (marker.loop_file, marker.loop_function)
            for s in stacks
        ]
        share = float(dur[np.array(inside, dtype=bool)].sum()) / total
        return _at_level(
            starts, dur, stacks, categories, rate_hz, marker.prefix, marker.loop_file, marker.loop_function,
            share, marker.anchor_lines, marker.top_line,
        )  # fmt: skip
    candidates, why = _loop_candidates(stacks, dur)
    if not candidates:
        return _none(why)
    found = [
        _at_level(starts, dur, stacks, categories, rate_hz, prefix, f, fn, share, None)
        for prefix, f, fn, share in candidates
    ]
    good = [d for d in found if d.confidence >= min_confidence]
    if good:
        return max(good, key=lambda d: d.steps)  # max() keeps the first (shallowest) of equal counts
    return max(found, key=lambda d: d.confidence)
