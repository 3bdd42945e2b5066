"""The budget engine against a brute-force oracle: random spans on a small nanosecond grid, every nanosecond
classified by DESIGN.md's rules written out literally (one nanosecond at a time), compared exactly."""

from __future__ import annotations

import numpy as np
import pytest

from gpuwatch.attribution import intervals as iv
from gpuwatch.attribution.budget import compute_rank_budget
from gpuwatch.records import CATEGORIES, SpanColumns

T_MAX = 3_000
TRAIN, LAUNCH, OTHER = 100, 200, 300
HOST_CATS = [None, "compute", "data_loading", "cpu_preprocessing", "sync", "checkpoint_io", "memcpy"]
DEVICE_KINDS = ["kernel", "collective", "memcpy", "memset"]
PRIORITY = ["checkpoint_io", "sync", "data_loading", "cpu_preprocessing", "memcpy"]


def random_rank(rng: np.random.Generator, *, device: bool, overlap_steps: bool) -> list[dict]:
    spans: list[dict] = []
    bounds = np.sort(rng.choice(np.arange(100, T_MAX - 100), size=2, replace=False))
    edges = [int(rng.integers(0, 100)), int(bounds[0]), int(bounds[1]), T_MAX - int(rng.integers(0, 100))]
    for k in range(3):
        end = edges[k + 1] + (int(rng.integers(0, 30)) if overlap_steps and k < 2 else 0)
        spans.append(dict(kind="step", tid=TRAIN, start=edges[k], end=end, category=None, step=k + 5))

    def rand_iv(max_len: int) -> tuple[int, int]:
        s = int(rng.integers(0, T_MAX))
        return s, min(T_MAX, s + int(rng.integers(0, max_len)))  # zero-length spans happen too

    for _ in range(int(rng.integers(5, 40))):  # the training thread, nested and overlapping at random
        s, e = rand_iv(600)
        spans.append(dict(kind="cpu_op", tid=TRAIN, start=s, end=e, category=rng.choice(HOST_CATS)))
    for _ in range(int(rng.integers(0, 10))):  # another thread: only its collectives, when nothing else is
        s, e = rand_iv(800)
        spans.append(dict(kind="cpu_op", tid=OTHER, start=s, end=e, category=rng.choice(HOST_CATS)))
    if device:
        for _ in range(int(rng.integers(0, 8))):  # a launching thread (autograd): counts on GPU ranks
            s, e = rand_iv(300)
            spans.append(
                dict(kind="runtime", tid=LAUNCH, start=s, end=e, category=rng.choice([None, "sync"]))
            )
        for _ in range(int(rng.integers(1, 30))):
            s, e = rand_iv(400)
            kind = str(rng.choice(DEVICE_KINDS))
            spans.append(
                dict(kind=kind, tid=0, stream=int(rng.integers(7, 9)), start=s, end=e, category=None)
            )
    return spans


def to_columns(spans: list[dict], rng: np.random.Generator) -> SpanColumns:
    n = len(spans)
    device_cat = {"kernel": "compute", "collective": "sync", "memcpy": "memcpy", "memset": "memcpy"}
    order = rng.permutation(n).tolist()
    sp = [spans[i] for i in order]  # the engine must not depend on input order
    return SpanColumns(
        rank=np.zeros(n, dtype=np.int32),
        pid=np.full(n, 1, dtype=np.int64),
        tid=np.array([s["tid"] for s in sp], dtype=np.int64),
        stream=np.array([s.get("stream", -1) for s in sp], dtype=np.int64),
        device_index=np.array([0 if "stream" in s else -1 for s in sp], dtype=np.int32),
        kind=np.array([s["kind"] for s in sp], dtype=object),
        category=np.array([device_cat.get(s["kind"], s["category"]) for s in sp], dtype=object),
        name=np.array([f"{s['kind']}:{s['category']}" for s in sp], dtype=object),
        start_ns=np.array([s["start"] for s in sp], dtype=np.int64),
        end_ns=np.array([s["end"] for s in sp], dtype=np.int64),
        step=np.array([s.get("step", -1) for s in sp], dtype=np.int64),
        bytes=np.full(n, -1, dtype=np.int64),
        correlation=np.full(n, -1, dtype=np.int64),
        seq=np.full(n, -1, dtype=np.int64),
        attrs=np.full(n, None, dtype=object),
    )


def oracle(spans: list[dict], *, device: bool) -> np.ndarray:
    """(steps, 8) nanoseconds per category, by classifying every nanosecond on its own.

    Besides DESIGN.md's rules, the engine's refinements (README, "The time budget"): a cpu_preprocessing
    span lying wholly inside data_loading spans (the Dataset run by the loader) outranks data_loading, and
    time otherwise unattributed is sync while a collective (sync, not a runtime call) runs on another thread.
    """
    steps = sorted((s for s in spans if s["kind"] == "step"), key=lambda s: s["start"])
    has_device = device and any(s["kind"] in DEVICE_KINDS for s in spans)
    host_threads = {TRAIN} | ({s["tid"] for s in spans if s["kind"] == "runtime"} if has_device else set())
    loading = [s for s in spans if s["kind"] not in DEVICE_KINDS and s["tid"] in host_threads]
    loading = [s for s in loading if s["category"] == "data_loading"]

    def nested(s: dict) -> bool:
        return all(any(d["start"] <= u < d["end"] for d in loading) for u in range(s["start"], s["end"]))

    for s in spans:
        s["nested"] = s["category"] == "cpu_preprocessing" and nested(s)
    out = np.zeros((len(steps), len(CATEGORIES)), dtype=np.int64)
    index = {c.value: i for i, c in enumerate(CATEGORIES)}
    for k, st in enumerate(steps):
        end = min(st["end"], steps[k + 1]["start"]) if k + 1 < len(steps) else st["end"]
        for t in range(st["start"], end):
            live = [s for s in spans if s["start"] <= t < s["end"] and s["kind"] != "step"]
            dev = {s["kind"] for s in live if s["kind"] in DEVICE_KINDS} if has_device else set()
            host = [s for s in live if s["kind"] not in DEVICE_KINDS and s["tid"] in host_threads]
            cats = {s["category"] for s in host}
            if "kernel" in dev:
                c = "compute"
            elif "collective" in dev:
                c = "sync"
            elif dev & {"memcpy", "memset"}:
                c = "memcpy"
            elif cats & {"checkpoint_io", "sync"}:
                c = next(p for p in PRIORITY if p in cats)
            elif any(s["nested"] for s in host):
                c = "cpu_preprocessing"
            elif any(p in cats for p in PRIORITY):
                c = next(p for p in PRIORITY if p in cats)
            elif not has_device and "compute" in cats:
                c = "compute"
            elif host:
                c = "host_overhead"
            elif any(
                s["tid"] not in host_threads and s["category"] == "sync"
                for s in live
                if s["kind"] == "cpu_op"
            ):
                c = "sync"  # a collective on another thread of the process
            else:
                c = "unattributed"
            out[k, index[c]] += 1
    return out


@pytest.mark.parametrize("device", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_engine_matches_a_nanosecond_oracle(seed: int, device: bool) -> None:
    rng = np.random.default_rng(seed * 2 + device)
    spans = random_rank(rng, device=device, overlap_steps=seed % 3 == 0)
    budget = compute_rank_budget(0, to_columns(spans, rng))
    want = oracle(spans, device=device)
    assert budget.training_tid == TRAIN
    assert budget.step_ids.tolist() == [5, 6, 7]
    assert budget.step_category_ns.tolist() == want.tolist()
    assert (budget.step_category_ns.sum(axis=1) == budget.step_ns).all()


def brute_set(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    mask = np.zeros(T_MAX + 1, dtype=bool)
    for s, e in zip(starts.tolist(), ends.tolist()):
        mask[s:e] = True
    return mask


def as_mask(ivs: iv.IntervalSet) -> np.ndarray:
    return brute_set(*ivs)


@pytest.mark.parametrize("seed", range(20))
def test_interval_arithmetic_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    a_s = rng.integers(0, T_MAX, 30)
    a_e = np.minimum(a_s + rng.integers(0, 200, 30), T_MAX)
    b_s = rng.integers(0, T_MAX, 20)
    b_e = np.minimum(b_s + rng.integers(0, 300, 20), T_MAX)
    a, b = iv.union(a_s, a_e), iv.union(b_s, b_e)
    ma, mb = brute_set(a_s, a_e), brute_set(b_s, b_e)
    assert (as_mask(a) == ma).all() and (np.diff(a[0]) > 0).all() and (a[0][1:] > a[1][:-1]).all()
    assert iv.total(a) == int(ma.sum())
    assert (as_mask(iv.subtract(a, b)) == (ma & ~mb)).all()
    assert (as_mask(iv.intersect(a, b)) == (ma & mb)).all()
    pts = rng.integers(0, T_MAX, 50)
    assert (iv.covered(a, pts) == ma[pts]).all()
    q_s = rng.integers(0, T_MAX, 40)
    q_e = q_s + rng.integers(0, 500, 40)
    got = iv.overlap(a, q_s, q_e)
    want = [int(ma[s : min(e, T_MAX)].sum()) for s, e in zip(q_s.tolist(), q_e.tolist())]
    assert got.tolist() == want


def test_a_wait_on_another_threads_collective_is_sync() -> None:
    """The training thread blocked on a helper thread ("unattributed" stack samples: waiting) while the helper
    runs an all-reduce: the whole wait is sync; a wait that no collective overlaps stays unattributed, and
    neither is host activity."""
    spans = [
        dict(kind="step", tid=TRAIN, start=0, end=1000, category=None, step=0),
        dict(kind="phase", tid=TRAIN, start=0, end=300, category="compute"),
        dict(kind="stack_sample", tid=TRAIN, start=300, end=700, category="unattributed"),  # waits for OTHER
        dict(kind="collective", tid=OTHER, start=320, end=690, category="sync"),  # hand-off on either side
        dict(
            kind="stack_sample", tid=TRAIN, start=700, end=900, category="unattributed"
        ),  # waits, no collective
        dict(kind="stack_sample", tid=TRAIN, start=900, end=1000, category=None),  # its own Python
    ]
    budget = compute_rank_budget(0, to_columns(spans, np.random.default_rng(0)))
    got = dict(zip([c.value for c in CATEGORIES], budget.step_category_ns[0].tolist(), strict=True))
    assert got["compute"] == 300 and got["sync"] == 400 and got["unattributed"] == 200
    assert got["host_overhead"] == 100
    assert budget.other_thread_sync_ns is not None and budget.other_thread_sync_ns.tolist() == [400]
