"""HTA-compatible temporal breakdown: idle / compute / non-compute share of the device window.

Matches `TraceAnalysis.get_temporal_breakdown()` of HolisticTraceAnalysis (0.5, 0.6) so users can check our
numbers against a tool they know:
- device events launched before the start of the last ProfilerStep are kept (HTA drops the last step);
  the launch time comes from the runtime call with the same correlation id, else the event's own start;
- times are whole microseconds the way HTA rounds float traces: start rounded up, end rounded down;
- window = first start to last end of the kept events; compute = union of compute kernels;
  non-compute = union of all kept events minus compute; idle = window minus union of all.
On a rank without device events the "device" is the training thread (DESIGN.md rule 3): compute is its
math, non-compute its exposed communication and copies, idle the rest of all steps but the last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from gpuwatch.attribution import intervals as iv
from gpuwatch.attribution.budget import CAT_INDEX, RankBudget, launch_ns, name_codes
from gpuwatch.attribution.value_codes import span_kinds
from gpuwatch.records import DEVICE_KINDS, Category, SpanColumns


@dataclass(frozen=True, slots=True)
class TemporalBreakdown:
    idle_pct: float
    compute_pct: float
    non_compute_pct: float
    window_ns: int
    basis: str
    """"device" (HTA's definition on device events) or "host" (CPU-only rank, from the training thread)."""


def temporal_breakdown(cols: SpanColumns, budget: RankBudget) -> TemporalBreakdown | None:
    if budget.mode == "device":
        return _device_temporal(cols, budget)
    return _host_temporal(budget)


def _device_temporal(cols: SpanColumns, budget: RankBudget) -> TemporalBreakdown | None:
    device = span_kinds(cols).isin(DEVICE_KINDS) & (cols.stream >= 0)
    idx = np.flatnonzero(device)
    step_ids, step_start_ns, _, _ = budget.all_steps()  # warm-up included: HTA knows none
    # HTA filters only when the trace has two or more ProfilerStep names, by when the work was launched
    if budget.steps_from_markers and iv.unique_sorted(step_ids).size > 1:
        launch, found = launch_ns(cols, idx)
        keep = launch < step_start_ns.max()
        if found is not None:
            # HTA joins device work to its launches by correlation: work whose correlation id names no
            # launch in the trace (launched before the profiler started) is dropped; work without a
            # correlation id is kept by its own start (checked against HTA 0.6.1 on planted traces)
            keep &= found | (cols.correlation[idx] < 0)
        idx = idx[keep]
    if idx.size == 0:
        return None
    start_us = -(-cols.start_ns[idx] // 1000)  # ceil
    end_us = cols.end_ns[idx] // 1000  # floor
    end_us = np.maximum(end_us, start_us)
    window = int(end_us.max() - start_us.min())
    if window <= 0:
        return None
    busy = iv.total(iv.union(start_us, end_us))
    is_compute = _hta_compute(cols, idx)
    compute = iv.total(iv.union(start_us[is_compute], end_us[is_compute]))
    return TemporalBreakdown(
        idle_pct=100.0 * (window - busy) / window,
        compute_pct=100.0 * compute / window,
        non_compute_pct=100.0 * (busy - compute) / window,
        window_ns=window * 1000,
        basis="device",
    )


# HTA 0.6.1's kernel types (hta/common/types.py, all `re.match`): communication first, then memory, then
# computation = anything its compute pattern does not exclude; the rest ("other": syncs, DMA, launches) and
# communication and memory all count as non-compute in the temporal breakdown.
_HTA_COMM = re.compile(r"(^nccl.*)|(^hip)|(^hccl)|(.*ncclKernel.*)")
_HTA_MEMORY = re.compile(r"(^(hip)?Memcpy)|(^(hip)?Memset)|(^dma)")
_HTA_NOT_COMPUTE = re.compile(
    r"(^nccl)|(.*Memcpy)|(.*Memset)|(.*dma)|(^.*Sync)|(^Stream Wait Event)|(cuda.*LaunchKernel)"
    r"|(^runFunction)|(^hip)|(^job_exe)|(^packet)|(^pe_exe)|(^cpum_exe_subgraph)|(^hccl)"
    r"|(^collective_subgraph_execution)"
)


def _is_hta_compute(name: str) -> bool:
    return not (_HTA_COMM.match(name) or _HTA_MEMORY.match(name) or _HTA_NOT_COMPUTE.match(name))


def _hta_compute(cols: SpanColumns, idx: np.ndarray) -> np.ndarray:
    """Which of the device spans `idx` HTA counts as computation, deciding once per distinct name."""
    codes = name_codes(cols)[idx]
    uniq, first, inverse = iv.unique_first_inverse(codes)
    names = cols.name[idx[first]]
    verdict = np.array([_is_hta_compute(str(n)) for n in names.tolist()], dtype=bool)
    return verdict[inverse] if uniq.size else np.zeros(0, dtype=bool)


def _host_temporal(budget: RankBudget) -> TemporalBreakdown | None:
    _, _, rows, other_thread = budget.all_steps()  # warm-up included: HTA knows none
    if rows.shape[0] == 0:
        return None
    if budget.steps_from_markers and rows.shape[0] > 1:
        rows, other_thread = rows[:-1], other_thread[:-1]  # HTA's window: all steps but the last
    sums = rows.sum(axis=0)
    window = int(sums.sum())
    if window <= 0:
        return None
    compute = int(sums[CAT_INDEX[Category.COMPUTE.value]])
    # the training thread's own exposed communication: collectives on other threads leave it idle, as in HTA
    sync = int(sums[CAT_INDEX[Category.SYNC.value]]) - int(other_thread.sum())
    non_compute = sync + int(sums[CAT_INDEX[Category.MEMCPY.value]])
    return TemporalBreakdown(
        idle_pct=100.0 * (window - compute - non_compute) / window,
        compute_pct=100.0 * compute / window,
        non_compute_pct=100.0 * non_compute / window,
        window_ns=window,
        basis="host",
    )
