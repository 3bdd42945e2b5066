"""Step detection from sampled stacks, on simulated training loops with planted step boundaries.

A loop is a list of (frames, duration, category) phases; the simulator runs it for N steps with jittered
durations, samples it the way py-spy does (a tick every 1/rate s, some ticks late or lost), merges equal
consecutive samples into intervals, and hands those to `detect_steps`. The planted step starts are known,
so boundaries, counts and confidence are checked against them. (End-to-end detection on a real trainer
is in test_attach_accuracy.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from collectors.pyspy.step_detect import detect_steps

PY = "/usr/lib/python3.11/site-packages"
TRAIN = "/home/u/train.py"
ROOT = ((TRAIN, "<module>", 90),)


def f_main(line: int) -> tuple[str, str, int]:
    return (TRAIN, "main", line)


OPT = (f"{PY}/torch/optim/sgd.py", "SGD.step", 80)
FWD = (f"{PY}/torch/nn/modules/linear.py", "Linear.forward", 120)
BWD = (f"{PY}/torch/autograd/graph.py", "_engine_run_backward", 760)
DATA = (f"{PY}/torch/utils/data/dataloader.py", "_BaseDataLoaderIter.__next__", 700)
PIL = (f"{PY}/PIL/ImageFile.py", "ImageFile.load", 300)
SAVE = (f"{PY}/torch/serialization.py", "save", 650)


def phase(line: int, ms: float, cat: str | None, *below: tuple[str, str, int], top=ROOT) -> tuple:
    return (top + (f_main(line),) + below, ms, cat)


def simulate(
    step_phases,  # noqa: ANN001 - callable(step index) -> list of phases
    steps: int,
    *,
    rate_hz: float = 100.0,
    jitter: float = 0.2,
    lost_ticks: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list, list, np.ndarray]:
    """(starts, ends, stacks, categories, true step starts) as py-spy's merged intervals would give them."""
    rng = np.random.default_rng(seed)
    edges, stacks, cats, step_starts = [0.0], [], [], []
    t = 0.0
    for i in range(steps):
        step_starts.append(t)
        for frames, ms, cat in step_phases(i):
            t += ms * 1e6 * (1 + jitter * (rng.random() - 0.5))
            edges.append(t)
            stacks.append(frames)
            cats.append(cat)
    edges_a = np.array(edges)
    ticks = np.arange(rng.random() * 1e9 / rate_hz, edges_a[-1], 1e9 / rate_hz)
    ticks = ticks[rng.random(ticks.size) >= lost_ticks]  # py-spy behind on a busy machine
    which = np.searchsorted(edges_a, ticks, side="right") - 1
    starts, ends, s_stacks, s_cats = [], [], [], []
    for tick, w in zip(ticks, which):
        if s_stacks and s_stacks[-1] == stacks[w]:  # py-spy merges equal consecutive stacks
            continue
        if starts:
            ends.append(tick)
        starts.append(tick)
        s_stacks.append(stacks[w])
        s_cats.append(cats[w])
    ends.append(ticks[-1] + 1e9 / rate_hz)
    return (
        np.array(starts, dtype=np.int64),
        np.array(ends, dtype=np.int64),
        s_stacks,
        s_cats,
        np.array(step_starts, dtype=np.int64),
    )


def plain_loop(i: int) -> list:
    """for batch in loader (30 ms) / decode (20 ms) / forward / backward / a 3 ms optimizer step / a
    checkpoint every 4th step."""
    out = [
        phase(10, 30, "data_loading", DATA),
        phase(11, 20, "cpu_preprocessing", PIL),
        phase(12, 20, "compute", FWD),
        phase(13, 25, "compute", BWD),
        phase(14, 3, "compute", OPT),
    ]
    if i % 4 == 3:
        out.append(phase(16, 100, "checkpoint_io", SAVE))
    return out


def lag_ms(detected: np.ndarray, true: np.ndarray) -> np.ndarray:
    """For each detected boundary, how long after the latest true step start it lies."""
    idx = np.searchsorted(true, detected, side="right") - 1
    return (detected - true[np.maximum(idx, 0)]) / 1e6


def test_plain_loop_steps_start_at_the_data_wait_despite_a_short_optimizer_step() -> None:
    starts, ends, stacks, cats, true = simulate(plain_loop, 60)
    det = detect_steps(starts, ends, stacks, cats, 100.0)
    assert det.confidence >= 0.8, det.reason
    assert det.marker is not None and det.marker.loop_function == "main"
    # the 3 ms optimizer line is missed by most samples: the anchor is the forward/backward block
    assert set(det.marker.anchor_lines) >= {12, 13}
    inner = true[(true >= det.boundaries_ns[0]) & (true <= det.boundaries_ns[-1])]
    assert det.steps >= 0.9 * (inner.size - 1)
    lags = lag_ms(det.boundaries_ns, true)
    assert np.median(lags) < 10.5 and np.mean(lags < 12) > 0.9, lags  # the first sample after the wrap
    # the checkpoint every 4th step makes longer steps, not 4-step cycles
    assert det.period_ms == pytest.approx(100, rel=0.2)


def test_gradient_accumulation_is_one_step_per_optimizer_update() -> None:
    def accum(i: int) -> list:
        out = [phase(10, 15, "data_loading", DATA)]
        for _ in range(4):  # micro-batches: an inner loop over lines 12-13
            out += [phase(12, 12, "compute", FWD), phase(13, 14, "compute", BWD)]
        out.append(phase(15, 25, "compute", OPT))  # a steady optimizer update
        return out

    starts, ends, stacks, cats, true = simulate(accum, 30)
    det = detect_steps(starts, ends, stacks, cats, 100.0)
    assert det.confidence >= 0.8, det.reason
    assert det.marker is not None and det.marker.anchor_lines == (15,)
    assert det.period_ms == pytest.approx(144, rel=0.15)
    assert np.median(lag_ms(det.boundaries_ns, true)) < 10.5


def test_per_step_function_with_a_short_data_line_is_found_one_level_down() -> None:
    """`for batch in loader: train_step(batch)` with a 2 ms loader: the caller's `for` line is mostly missed,
    so cutting the caller's loop would merge steps; `train_step`'s own lines wrap every step."""
    in_call = ROOT + (f_main(21),)  # line 21: `train_step(batch)`

    def caller(i: int) -> list:
        return [
            phase(20, 2, "data_loading", DATA),  # line 20: `for batch in loader`
            (in_call + ((TRAIN, "train_step", 40), FWD), 30, "compute"),
            (in_call + ((TRAIN, "train_step", 41), BWD), 40, "compute"),
            (in_call + ((TRAIN, "train_step", 42), OPT), 10, "compute"),
        ]

    starts, ends, stacks, cats, true = simulate(caller, 40)
    det = detect_steps(starts, ends, stacks, cats, 100.0)
    assert det.confidence >= 0.8, det.reason
    assert det.marker is not None and det.marker.loop_function == "train_step"
    inner = true[(true >= det.boundaries_ns[0]) & (true <= det.boundaries_ns[-1])]
    assert det.steps >= 0.9 * (inner.size - 1)


def test_no_loop_no_steps() -> None:
    """A thread that is not a training loop: one call site, spreading its time over unrelated functions."""
    rng = np.random.default_rng(1)
    funcs = [(f"{PY}/worker/{name}.py", name, 5) for name in ("handle", "serialize", "compress")]

    def serve(i: int) -> list:
        return [phase(10, 30, None, funcs[int(rng.integers(3))])]

    starts, ends, stacks, cats, _ = simulate(serve, 200)
    det = detect_steps(starts, ends, stacks, cats, 100.0)
    assert det.confidence == 0.0 and det.steps == 0
    assert "no frame holds 60%" in det.reason
    one = detect_steps(starts[:1], ends[:1], stacks[:1], cats[:1], 100.0)
    assert one.steps == 0 and "too few samples" in one.reason


def test_steps_shorter_than_the_sampling_interval_are_not_confident() -> None:
    def fast(i: int) -> list:
        return [
            phase(10, 1.5, "data_loading", DATA),
            phase(11, 2, "compute", FWD),
            phase(12, 2, "compute", BWD),
        ]

    starts, ends, stacks, cats, _ = simulate(fast, 400)
    det = detect_steps(starts, ends, stacks, cats, 100.0)
    assert det.confidence < 0.6, det.reason


def test_a_locked_marker_cuts_later_samples_the_same_way() -> None:
    starts, ends, stacks, cats, true = simulate(plain_loop, 60)
    first = detect_steps(starts[:200], ends[:200], stacks[:200], cats[:200], 100.0)
    assert first.marker is not None and first.confidence >= 0.6
    later = detect_steps(starts, ends, stacks, cats, 100.0, marker=first.marker)
    assert later.marker == first.marker
    # boundaries found on the prefix are the same ones found on the whole
    common = first.boundaries_ns[first.boundaries_ns < starts[199]]
    assert set(common[1:].tolist()) <= set(later.boundaries_ns.tolist())
