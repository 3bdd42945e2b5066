"""The HTA-compatible temporal view against a brute-force restatement of HTA's rules, microsecond by
microsecond, straight from the trace's JSON events (no gpuwatch code in the oracle).

HTA 0.6.1 (`TraceAnalysis.get_temporal_breakdown`), as read from its source and checked by running it on
these planted traces: with two or more ProfilerStep names, device work is kept when the host call that
launched it (same correlation id) starts before the last ProfilerStep; device work whose correlation id
names no launch in the trace is dropped; device work without a correlation id is kept by its own start.
Times are whole microseconds (start rounded up, end down). Window = first start to last end of what is
kept; compute = union of computation kernels (HTA's three name patterns below, from hta/common/types.py);
idle = window minus union of all. Every expected figure here was also produced by HTA itself on the same
planted trace while this test was written.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic_kineto import MS, RankTrace, planted_rank

from gpuwatch.attribution.analysis import analyze_run
from gpuwatch.attribution.summary import summarize
from gpuwatch.capture.trace_import import import_to_run

DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
HTA_COMM = re.compile(r"(^nccl.*)|(^hip)|(^hccl)|(.*ncclKernel.*)")
HTA_MEMORY = re.compile(r"(^(hip)?Memcpy)|(^(hip)?Memset)|(^dma)")
HTA_NOT_COMPUTE = re.compile(
    r"(^nccl)|(.*Memcpy)|(.*Memset)|(.*dma)|(^.*Sync)|(^Stream Wait Event)|(cuda.*LaunchKernel)"
    r"|(^runFunction)|(^hip)|(^job_exe)|(^packet)|(^pe_exe)|(^cpum_exe_subgraph)|(^hccl)"
    r"|(^collective_subgraph_execution)"
)
ODD_NAMES = (
    "EventSyncKernel",
    "void kernel_with_dma_copy()",
    "void my_ncclKernel_wrapper()",
    "hipKernelFoo",
    "void fooMemcpyBar()",
    "void plain_gemm()",
)


def hta_oracle(trace: dict[str, Any]) -> dict[str, float]:
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    launches = {
        e["args"]["correlation"]: e["ts"]
        for e in events
        if e.get("cat") == "cuda_runtime" and e.get("args", {}).get("correlation", -1) >= 0
    }
    last_start = max(e["ts"] for e in steps) if len({e["name"] for e in steps}) > 1 else math.inf
    kept = []
    for e in events:
        if e.get("cat") not in DEVICE_CATS:
            continue
        corr = e.get("args", {}).get("correlation", -1)
        if corr >= 0:
            if corr not in launches or launches[corr] >= last_start:
                continue
        elif e["ts"] >= last_start:
            continue
        kept.append(e)
    t0 = min(math.ceil(e["ts"]) for e in kept)
    t1 = max(math.floor(e["ts"] + e["dur"]) for e in kept)
    busy = np.zeros(t1 - t0, dtype=bool)
    compute = np.zeros(t1 - t0, dtype=bool)
    for e in kept:
        s, f = math.ceil(e["ts"]) - t0, math.floor(e["ts"] + e["dur"]) - t0
        busy[s:f] = True
        name = e["name"]
        if not (HTA_COMM.match(name) or HTA_MEMORY.match(name) or HTA_NOT_COMPUTE.match(name)):
            compute[s:f] = True
    window = t1 - t0
    return {
        "idle": 100.0 * (window - busy.sum()) / window,
        "compute": 100.0 * compute.sum() / window,
        "non_compute": 100.0 * (busy.sum() - compute.sum()) / window,
    }


def temporal_of(tr: RankTrace, tmp_path: Path, name: str) -> tuple[dict[str, float], dict[str, float]]:
    path = tr.write(tmp_path / f"{name}.json")
    import_to_run([str(path)], tmp_path / f"run_{name}")
    doc = summarize(analyze_run(tmp_path / f"run_{name}")).to_json()
    return doc["ranks"][0]["temporal_pct"], hta_oracle(json.loads(path.read_text()))


def orphan_kernel(tr: RankTrace, t_ns: int, correlation: int | None) -> dict[str, Any]:
    args: dict[str, Any] = {"device": 0, "stream": 7}
    if correlation is not None:
        args["correlation"] = correlation
    return {"ph": "X", "cat": "kernel", "name": "void late_gemm()", "pid": 0, "tid": 7,
            "ts": tr._ts(t_ns), "dur": tr._dur(2 * MS), "args": args}  # fmt: skip


CASES: dict[str, dict[str, Any]] = {
    "float_ts": {},
    "int_ts": {"float_ts": False, "origin_us": 1_661_203_462_598_738, "base_time_ns": None},
    "realistic": {"realistic": True},
    "four_steps": {"steps": 4},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_temporal_matches_the_hta_oracle(case: str, tmp_path: Path) -> None:
    kw = dict(CASES[case])
    tr = planted_rank(kw.pop("steps", 3), **kw)
    ours, hta = temporal_of(tr, tmp_path, case)
    for key in hta:
        assert ours[key] == pytest.approx(hta[key], abs=0.01), (key, ours, hta)


def test_kernel_names_hta_does_not_call_computation(tmp_path: Path) -> None:
    """HTA checks communication, then memory, then its computation pattern; names that fall through
    (syncs, DMA) are "other". All of them are non-compute in the temporal view."""
    tr = planted_rank(3)
    for k, name in enumerate(ODD_NAMES):  # in the first step's idle data-loading gap
        t = tr.steps[0].start_ns + (1 + k) * MS // 2
        corr = tr.launch("cudaLaunchKernel", t - 20_000, 5_000)
        tr.device_event("kernel", name, t, 300_000, corr, 7)
    ours, hta = temporal_of(tr, tmp_path, "odd")
    for key in hta:
        assert ours[key] == pytest.approx(hta[key], abs=0.01), (key, ours, hta)
    assert hta == pytest.approx(
        {"idle": 37.8, "compute": 43.11, "non_compute": 19.09}, abs=0.005
    )  # HTA 0.6.1


@pytest.mark.parametrize("correlation", [987_654, None])
def test_device_work_without_its_launch(correlation: int | None, tmp_path: Path) -> None:
    """A kernel in the first step's idle gap whose correlation id names no launch (launched before the
    profiler started) is left out, as HTA does; one with no correlation id at all is counted."""
    base = planted_rank(3)
    tr = planted_rank(3)
    tr.events.append(orphan_kernel(tr, tr.steps[0].start_ns + MS, correlation))
    ours, hta = temporal_of(tr, tmp_path, "with")
    plain, _ = temporal_of(base, tmp_path, "base")
    for key in hta:
        assert ours[key] == pytest.approx(hta[key], abs=0.01)
    if correlation is None:
        assert ours["compute"] != pytest.approx(plain["compute"], abs=0.5)  # it moved the window
    else:
        assert ours == pytest.approx(plain, abs=1e-9)
