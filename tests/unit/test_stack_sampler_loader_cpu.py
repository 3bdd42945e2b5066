"""The stack sampler inside a DataLoader region (num_workers=0): the training thread's CPU clock, read with
each sample and as the region opens and closes, puts the work the samples did not land on where it belongs.

Planted gaps with known CPU readings go through the sampler's own tiling (`StackSampler._gap`); the spans it
emits are checked against the planted work, to the nanosecond. The end-to-end case (a real loader whose
numpy augmentation falls between sleeps) is `tests/integration/test_watch_ground_truth.py`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from collectors.hooks.hook_context import LOADER_CLOCK_MIN_NS, HookContext
from collectors.hooks.stack_classify import OWN_LABEL
from collectors.hooks.stack_sampler import StackSampler, _Signature
from gpuwatch.records import Span

MS = 1_000_000
DATA, PREP = "data_loading", "cpu_preprocessing"


class _Spans:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def emit_span(self, span: Span) -> None:
        self.spans.append(span)

    def emit_sample(self, sample: Any) -> None:
        pass

    def note(self, key: str, message: str, **fields: Any) -> None:
        pass


def _sampler() -> tuple[StackSampler, _Spans]:
    sink = _Spans()
    return StackSampler(HookContext(sink, 0, 0)), sink


def _emitted(sink: _Spans) -> list[tuple[int, int, str, str | None]]:
    return [(s.start_ns, s.end_ns, s.category or "", (s.attrs or {}).get("from")) for s in sink.spans]


def _teach(sampler: StackSampler, signature: tuple[str, str]) -> None:
    """One earlier region of this loader in which a sample saw the augmentation."""
    samples = [(10 * MS, PREP, "decode/augment (by name)", False, 1 * MS, -1)]
    sampler._gap(0, 20 * MS, signature, samples, inside_loader=True, cpu_ns=(0, 2 * MS))


def test_work_between_two_waiting_samples_is_the_loaders_usual_work() -> None:
    sampler, sink = _sampler()
    sig = ("forward end", "DataLoader.__next__")
    _teach(sampler, sig)
    sink.spans.clear()
    # 0-30 ms: samples at 5 and 15 ms saw the read; the thread used 1.2 ms of CPU between them
    samples = [
        (5 * MS, DATA, "DataLoader.__next__", False, 100_000, -1),
        (15 * MS, DATA, "x", False, 1_300_000, -1),
    ]
    sampler._gap(0, 30 * MS, sig, samples, inside_loader=True, cpu_ns=(0, 1_500_000))
    spans = _emitted(sink)
    # start -> first sample: 0.1 ms of CPU; first -> second: 1.2 ms; last -> end (collate): 0.2 ms
    assert spans == [
        (5 * MS - 100_000, 5 * MS, PREP, "thread_work_clock"),
        (15 * MS - 1_200_000, 15 * MS, PREP, "thread_work_clock"),
        (30 * MS - 200_000, 30 * MS, PREP, "thread_work_clock"),
    ]


def test_a_sample_that_saw_the_work_takes_the_cpu_time_on_its_side() -> None:
    sampler, sink = _sampler()
    sig = ("a", "b")
    samples = [
        (5 * MS, DATA, "read", False, 0, -1),
        (10 * MS, PREP, "decode/augment (by name)", False, 2 * MS, -1),  # the 2 ms before it: its work
        (15 * MS, DATA, "read", False, 3 * MS, -1),  # the 1 ms after the augmenting sample: its work too
    ]
    sampler._gap(0, 20 * MS, sig, samples, inside_loader=True, cpu_ns=(0, 3 * MS))
    assert _emitted(sink) == [(8 * MS, 10 * MS, PREP, None), (10 * MS, 11 * MS, PREP, None)]


def test_two_working_samples_without_a_timeslice_between_them_worked_all_along() -> None:
    """Between two samples that saw the decode, the thread began no timeslice: it never waited, and the 1 ms
    its clock fell short (the host took the core) is work too. Where it began one (a read between two
    decodes), the clock says how much of the stretch was work."""
    sampler, sink = _sampler()
    samples = [
        (5 * MS, PREP, "decode", False, 1 * MS, 40),
        (10 * MS, PREP, "decode", False, 5 * MS, 40),  # 4 ms of clock in 5 ms, no timeslice: all 5 ms work
        (15 * MS, PREP, "decode", False, 8 * MS, 41),  # 3 ms of clock, one timeslice: 3 ms work
    ]
    sampler._gap(4 * MS, 15 * MS, ("a", "b"), samples, inside_loader=True, cpu_ns=(0, 8 * MS))
    assert _emitted(sink) == [
        (4 * MS, 5 * MS, PREP, None),
        (5 * MS, 10 * MS, PREP, None),
        (12 * MS, 15 * MS, PREP, None),
    ]


def test_a_busy_thread_between_waiting_samples_keeps_its_loading() -> None:
    """On the CPU most of the time: the samples saw that work itself (the loader's own reading)."""
    sampler, sink = _sampler()
    sig = ("forward end", "DataLoader.__next__")
    _teach(sampler, sig)
    sink.spans.clear()
    samples = [(5 * MS, DATA, "read", False, 4 * MS, -1), (15 * MS, DATA, "read", False, 12 * MS, -1)]
    sampler._gap(0, 20 * MS, sig, samples, inside_loader=True, cpu_ns=(0, 13 * MS))
    assert [s for s in _emitted(sink) if s[0] >= 5 * MS and s[1] <= 15 * MS] == []


def test_a_thread_that_woke_between_two_waiting_samples_did_the_loaders_work_whatever_its_share() -> None:
    """Both samples saw the read, and the thread worked 8.5 of the 10 ms between them. Where it began no
    timeslice it never waited: that was its reading, and stays data_loading. Where it began one it woke from
    the first read, worked, and was in the next read by the second sample: the 8.5 ms are the loader's decode
    (a busy host gives the sampler a core when the training thread waits, so samples land in the reads)."""
    sig = ("forward end", "DataLoader.__next__")
    for woke, want in ((0, []), (1, [(6_500_000, 15 * MS, PREP, "thread_work_clock")])):
        sampler, sink = _sampler()
        _teach(sampler, sig)
        sink.spans.clear()
        samples = [(5 * MS, DATA, "read", False, 0, 7), (15 * MS, DATA, "read", False, 8_500_000, 7 + woke)]
        sampler._gap(
            5 * MS, 15 * MS, sig, samples, inside_loader=True, cpu_ns=(0, 8_500_000), slices=(7, 7 + woke)
        )
        assert _emitted(sink) == want, woke


def test_a_loader_never_seen_working_stays_loading_and_its_next_region_is_probed() -> None:
    sampler, sink = _sampler()
    samples = [(5 * MS, DATA, "read", False, 100_000, -1), (15 * MS, DATA, "read", False, 1_300_000, -1)]
    sampler._gap(0, 20 * MS, ("DataLoader.__next__", "b"), samples, inside_loader=True, cpu_ns=(0, 1_500_000))
    assert sink.spans == []
    # the thread worked between the waits, and nothing named that work: the next region gets its calls traced
    assert "DataLoader.__next__" in sampler.ctx.probe_keys


def test_a_loader_that_only_waits_is_not_probed() -> None:
    sampler, sink = _sampler()
    samples = [(5 * MS, DATA, "read", False, 0, -1), (15 * MS, DATA, "read", False, 10_000, -1)]
    sampler._gap(0, 20 * MS, ("DataLoader.__next__", "b"), samples, inside_loader=True, cpu_ns=(0, 12_000))
    assert sink.spans == [] and not sampler.ctx.probe_keys


def test_an_unsampled_region_of_a_decoding_loader_is_decode_for_its_cpu_time() -> None:
    sampler, sink = _sampler()
    sig = ("forward end", "DataLoader.__next__")
    _teach(sampler, sig)  # its samples so far: augmentation only
    sink.spans.clear()
    sampler._gap(100 * MS, 104 * MS, sig, None, inside_loader=True, cpu_ns=(50 * MS, 53 * MS))
    assert _emitted(sink) == [(101 * MS, 104 * MS, PREP, None)]


def test_a_long_gap_is_not_given_to_a_signature_of_one_edge_sample() -> None:
    """One tick got the GIL at the edge of a pure-Python gap (leaving `backward`'s wrapper: compute); the
    gaps after it, which no tick can enter, wait and their signature is probed; once the probe's samples say
    host_overhead, they go there. Short gaps, and gaps when the sampler stops, go as the signature says."""
    sampler, sink = _sampler()
    sig = ("backward", "step")
    edge = [(100_000, "compute", "torch.autograd", False, -1, -1)]
    sampler._gap(0, 4 * MS, sig, edge, inside_loader=False)
    assert [s[2] for s in _emitted(sink)] == ["compute"]  # what its one sample saw: all this gap can say
    sink.spans.clear()
    sampler._gap(10 * MS, 14 * MS, sig, None, inside_loader=False)  # long, unsampled: held
    sampler._gap(20 * MS, 20 * MS + 50_000, sig, None, inside_loader=False)  # short: as the signature says
    assert [(s.start_ns, s.end_ns, s.category) for s in sink.spans] == [
        (20 * MS, 20 * MS + 50_000, "compute")
    ]
    assert "backward" in sampler.ctx.probe_keys
    sink.spans.clear()
    probe = [
        (30 * MS + k * 250_000, "host_overhead", "loop.py:bookkeeping", False, -1, -1) for k in range(16)
    ]
    sampler._gap(30 * MS, 34 * MS, sig, probe, inside_loader=False)  # the probed gap
    sampler._drain(final=False)
    spans = sorted((s.start_ns, s.end_ns, s.category) for s in sink.spans)
    assert spans == [(10 * MS, 14 * MS, "host_overhead"), (30 * MS, 34 * MS, "host_overhead")]


def test_held_gaps_of_a_thin_signature_go_as_it_says_when_sampling_ends() -> None:
    sampler, sink = _sampler()
    sig = ("backward", "step")
    sampler._gap(0, 4 * MS, sig, [(100_000, "compute", "torch.autograd", False, -1, -1)], inside_loader=False)
    sink.spans.clear()
    sampler._gap(10 * MS, 14 * MS, sig, None, inside_loader=False)
    assert sink.spans == []
    sampler.stop()  # never started: stop drains what is held
    assert [(s.start_ns, s.end_ns, s.category) for s in sink.spans] == [(10 * MS, 14 * MS, "compute")]


def test_a_probe_asked_for_inside_a_loader_traces_the_next_loader_not_the_gap_after_one() -> None:
    """The sampler drains a region while the training thread is already in the next one: the probe it asks
    for must wait for the next region's inside, not go to the gap that opens as the current region closes
    (that gap has the loader's own key). Real `HookContext` regions, the probe start recorded."""
    sampler, _ = _sampler()
    ctx = sampler.ctx
    started: list[str] = []
    ctx.on_probe_start = lambda key: started.append(key) or False
    key = "DataLoader.__next__"

    def one_region(ask: bool) -> None:
        t0 = ctx.begin(key)
        outer = ctx.enter_loader(key)
        if ask:  # the drain of the previous region's inside, landing now
            inside = next(gap[3] for gap in ctx.closed_gaps if gap[5])  # the previous region's inside
            samples = [
                (5 * MS, DATA, "read", False, 100_000, -1),
                (15 * MS, DATA, "read", False, 1_300_000, -1),
            ]
            sampler._gap(
                0, 20 * MS, (inside, key + " end"), samples, inside_loader=True, cpu_ns=(0, 1_500_000)
            )
        ctx.leave_loader(outer, key)
        ctx.end(t0, "phase", key, DATA, key=key)
        ctx.end(ctx.begin("forward"), "phase", "forward", "compute", key="forward")

    one_region(False)
    one_region(True)
    assert started == []  # not the gap after the loader, nor the forward
    one_region(False)
    assert started == [key + " (inside)"]


def test_a_sample_of_gpuwatchs_own_code_inside_a_loader_is_dropped() -> None:
    """Inside a DataLoader region a tick can catch the training thread in the loader hook itself (a clock
    read hands the GIL over). Such samples are not the loader's work: counted, five of them outvoted the
    augmentation and sent it to host_overhead. The tick runs on this thread, whose innermost frame is this
    test calling into gpuwatch: it reads as gpuwatch's own code unless a rule matches."""
    sampler, _ = _sampler()
    ctx = sampler.ctx
    ctx.train_ident = threading.get_ident()
    t0 = ctx.begin("DataLoader.__next__")
    outer = ctx.enter_loader("DataLoader.__next__")
    sampler.classify = lambda frame, in_loader=False: ("host_overhead", OWN_LABEL)  # type: ignore[method-assign]
    assert sampler.tick() is True  # a stack was read...
    assert sampler._samples.get(ctx.gap_serial) is None  # ...and dropped
    ctx.leave_loader(outer, "DataLoader.__next__")
    ctx.end(t0, "phase", "DataLoader.__next__", DATA)
    assert sampler.tick() is True  # outside a loader, gpuwatch's own code is its own overhead, kept
    assert [s[1:3] for s in sampler._samples[ctx.gap_serial]] == [("host_overhead", OWN_LABEL)]


def test_an_unsampled_fast_loader_region_is_split_in_the_shares_its_samples_saw() -> None:
    """A loader too fast for the work clock (no readings): an unsampled region gets each category in the
    share its earlier samples saw (not all of it to the category seen most), the work at the region's end."""
    sampler, sink = _sampler()
    sig = ("DataLoader.__next__ (inside)", "DataLoader.__next__ end")
    learned = sampler._signatures[sig] = _Signature()
    learned.add(DATA, "DataLoader wait", 6)
    learned.add(PREP, "collate", 3)
    learned.add("host_overhead", "sampler.py:__iter__", 1)
    sampler._gap(0, 10 * MS, sig, None, inside_loader=True)
    assert _emitted(sink) == [(7 * MS, 10 * MS, PREP, None), (6 * MS, 7 * MS, "host_overhead", None)]
    sink.spans.clear()
    sampler._pending.append((20 * MS, 30 * MS, sig, True))  # a held one goes the same way
    sampler._retry_pending(final=True)
    assert _emitted(sink) == [(27 * MS, 30 * MS, PREP, None), (26 * MS, 27 * MS, "host_overhead", None)]


def test_the_short_region_that_ends_an_epoch_leaves_the_next_region_its_work_clock() -> None:
    """The `next` that ends an epoch (StopIteration at once) is a short region between two slow ones. The
    work clock is taken only after a slow region: the first region of the next epoch must still take it (it
    did not, and its decode went whole to one category: 6-12 ms a step off, once an epoch). Two short regions
    in a row still halve the memory of the slow one."""
    sampler, _ = _sampler()
    ctx = sampler.ctx
    key = "DataLoader.__next__"

    def region(inside_s: float) -> bool:
        t0 = ctx.begin(key)
        outer = ctx.enter_loader(key)
        serial = ctx.gap_serial  # the inside's gap
        time.sleep(inside_s)
        ctx.leave_loader(outer, key)
        ctx.end(t0, "phase", key, DATA, key=key)
        return serial in ctx.loader_clock

    assert region(0.004) is False  # the first region: nothing known yet
    remembered = ctx.last_loader_ns
    assert remembered >= 4 * MS
    for _ in range(16):  # 4 ms or more, then about half as much after each short region
        if remembered < LOADER_CLOCK_MIN_NS:
            break
        assert region(0.0) is True
        assert ctx.last_loader_ns >= remembered >> 1
        remembered = ctx.last_loader_ns
    assert region(0.0) is False
