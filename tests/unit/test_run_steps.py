"""Steps of a loop that marks none (`gpuwatch run`'s third source): the stacks of the training thread as its
outermost hooked regions open, cut where the loop wraps back to its top; planted loops with known steps."""

from __future__ import annotations

from gpuwatch.capture.auto_steps import _LoopSteps

ROOT = (("train.py", "<module>", 90),)
MS = 1_000_000


def event(line: int, inner: str) -> tuple:
    return ROOT + (("train.py", "main", line), ("torch/x.py", inner, 1))


def planted_loop(
    steps: int, body: list[tuple[int, str, str | None]], start_ns: int = 0
) -> tuple[_LoopSteps, list[int]]:
    """A loop whose iteration opens `body` regions (line, inner frame, category) 10 ms apart; returns the
    events and the true start of every iteration."""
    loop = _LoopSteps()
    t, starts = start_ns, []
    loop.add(t, ROOT + (("train.py", "main", 10), ("torch/x.py", "build", 1)), None)  # set-up, not the loop
    t += 50 * MS
    for _ in range(steps):
        starts.append(t)
        for line, inner, category in body:
            loop.add(t, event(line, inner), category)
            t += 10 * MS
    starts.append(t)
    return loop, starts


def test_a_loop_of_fetch_forward_backward_collectives_is_cut_at_each_fetch() -> None:
    body = [(30, "__next__", "data_loading"), (32, "forward", "compute"), (33, "backward", "compute"),
            (35, "gather", None), (35, "broadcast", None)]  # fmt: skip
    loop, starts = planted_loop(12, body)
    found = loop.boundaries(starts[-1], starts[0], final=True)
    assert found[0] == starts[0]  # the first iteration starts at its first fetch (the loop start given)
    assert found == starts[: len(found)] and len(found) >= 11
    assert loop.confidence >= 0.6 and "main (train.py)" in loop.reason


def test_without_a_known_loop_start_the_first_iteration_is_left_out() -> None:
    body = [(30, "__next__", "data_loading"), (32, "forward", "compute"), (33, "backward", "compute")]
    loop, starts = planted_loop(10, body)
    found = loop.boundaries(starts[-1], None, final=True)
    assert found == starts[1 : 1 + len(found)] and len(found) >= 8


def test_once_the_loop_is_known_old_events_go_and_later_cuts_continue() -> None:
    body = [(30, "__next__", "data_loading"), (32, "forward", "compute"), (33, "backward", "compute")]
    loop, starts = planted_loop(300, body)
    first = loop.boundaries(starts[-1], starts[0], final=False)
    assert len(first) >= 298
    loop.forget_before(first[-1])
    t = starts[-1]
    more = []
    for _ in range(5):  # the job goes on
        more.append(t)
        for line, inner, category in body:
            loop.add(t, event(line, inner), category)
            t += 10 * MS
    again = loop.boundaries(t, starts[0], final=True)
    assert set(more[:4]) <= set(again)


def test_no_steps_from_a_thread_that_runs_no_loop() -> None:
    loop = _LoopSteps()
    for i in range(20):
        loop.add(i * MS, ROOT + (("train.py", "main", 10 + i), ("torch/x.py", "forward", 1)), "compute")
    assert loop.boundaries(30 * MS, None, final=True) == []
    assert loop.reason
