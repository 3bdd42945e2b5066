"""The removed TensorBoard profiler plugin's Overview: the average step split into Kernel, Memcpy, Memset,
Communication, Runtime, DataLoader, CPU Exec and Other, computed the way torch-tb-profiler 0.4.3 computes it
(`OverallParser` over its `EventParser`'s role ranges), so users can set our numbers beside a tool they knew.

Its rules, read from its source:
- Each instant of a step goes to the first role that covers it, in the order Kernel > Memcpy > Memset >
  Communication > Runtime > DataLoader > CPU Exec; the rest of the step is Other.
- Kernel: device kernels; a kernel whose launching operator is one of the named NCCL/gloo collectives
  (`nccl:all_reduce`, ...; not all_to_all, not `record_param_comms`) is Communication instead. The plugin
  links them by External id; we take the innermost operator that encloses the kernel's runtime launch,
  which is what Kineto's External id names.
- Communication on the host: operators and user annotations (also their GPU-side copies) with those names.
- DataLoader: operators named `enumerate(DataLoader)#...__next__` or `enumerate(DataPipe)#...`. The plugin
  never creates user annotations other than steps and collectives, so a DataLoader range recorded as a
  `user_annotation` (PyTorch 1.11 and later) counts as nothing there; we do the same, for comparability.
- CPU Exec: every other operator (Kineto `cpu_op`/`operator`/`python`); Python stack-tracer frames and
  user annotations do not count.
- Steps: every `ProfilerStep#N` range, the GPU-side annotations of that name included (the plugin averages
  over both when a trace has them); without any, one step from the first to the last operator. When runtime
  launches link device work to steps, each step is stretched to the end of the device work it launched
  (and starts no earlier than the previous one ended), and trailing steps that launched too little device
  work are dropped, as the plugin does.

One deliberate difference: the plugin knows runtime calls only under the old category `Runtime`; on newer
traces (`cuda_runtime`) it ignores them, so Runtime shows 0% and that time lands in CPU Exec. Here runtime
calls always count as Runtime, as the plugin meant. The steps stay the plugin's: it stretches them over
device work only on the traces whose runtime calls it reads (`stretch_steps`), and so do we, so every other
role keeps its figure.

Runs that gpuwatch collected itself (watch, attach) have no Kineto categories: their own host regions count
by budget category (data_loading -> DataLoader, collectives -> Communication, the rest -> CPU Exec).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpuwatch.attribution import intervals as iv
from gpuwatch.attribution.budget import name_codes
from gpuwatch.attribution.value_codes import ValueCodes, span_kinds
from gpuwatch.records import DEVICE_KINDS, Category, SpanColumns, SpanKind

ROLES: tuple[str, ...] = (
    "kernel",
    "memcpy",
    "memset",
    "communication",
    "runtime",
    "dataloader",
    "cpu_exec",
    "other",
)
"""The plugin's roles in its priority order (`other` is what no role covers)."""

# torch-tb-profiler 0.4.3 `trace.NcclOpNameSet` / `GlooOpNameSet`: exact names, nothing else.
COMM_OP_NAMES: frozenset[str] = frozenset(
    f"{lib}:{op}"
    for lib in ("nccl", "gloo")
    for op in ("broadcast", "reduce", "all_reduce", "all_gather", "reduce_scatter")
)
_NATIVE_KINDS = (SpanKind.PHASE.value, SpanKind.USER.value, SpanKind.STACK_SAMPLE.value)


@dataclass(frozen=True, slots=True)
class OverviewBreakdown:
    """The Overview of one rank: average nanoseconds per step in each role."""

    avg_step_ns: float
    role_ns: tuple[float, ...]
    """Average per step, in `ROLES` order; sums to `avg_step_ns`."""
    steps: int
    """Steps averaged (after the plugin's trailing-step rule)."""

    def pct(self) -> dict[str, float]:
        total = self.avg_step_ns or 1.0
        return {role: 100.0 * v / total for role, v in zip(ROLES, self.role_ns, strict=True)}


def overview_breakdown(cols: SpanColumns, *, stretch_steps: bool = False) -> OverviewBreakdown | None:
    """The TensorBoard-plugin Overview of one rank's spans; None when the rank has no time to split.

    Args:
        cols: every span of the rank.
        stretch_steps: the plugin could read this trace's runtime calls (`legacy_runtime_format`), so it
            stretched each step over the device work launched in it; on newer traces it never does.
    """
    if len(cols) == 0:
        return None
    names = _NameFacts(cols)
    kind = span_kinds(cols)
    host = cols.stream < 0
    work = kind.isin(DEVICE_KINDS) & ~host
    rpc = names.rpc
    is_coll = kind.isin([SpanKind.COLLECTIVE.value])
    host_op = kind.isin([SpanKind.CPU_OP.value]) | (is_coll & host & rpc)
    annotation = kind.isin([SpanKind.ANNOTATION.value])
    gpu_ann = kind.isin([SpanKind.GPU_ANNOTATION.value])
    native = kind.isin(_NATIVE_KINDS) & host
    hook_coll = is_coll & host & ~rpc
    native_cat = _native_categories(cols.category, native)

    kernel_like = work & kind.isin([SpanKind.KERNEL.value, SpanKind.COLLECTIVE.value])
    comm_kernel = kernel_like & _launched_by_comm_op(
        cols, host_op, names.comm, kind.isin([SpanKind.RUNTIME.value])
    )
    comm = comm_kernel | ((host_op | annotation | gpu_ann) & names.comm) | hook_coll | (native_cat == 1)
    dataloader = (host_op & names.dataloader & ~names.comm) | (native_cat == 2)
    cpu_exec = (host_op & ~names.comm & ~names.dataloader) | (native_cat == 3)
    role_masks = (
        kernel_like & ~comm_kernel,
        work & kind.isin([SpanKind.MEMCPY.value]),
        work & kind.isin([SpanKind.MEMSET.value]),
        comm,
        kind.isin([SpanKind.RUNTIME.value]),
        dataloader,
        cpu_exec,
    )
    steps = _steps(cols, kind, host_op | native, gpu_ann & names.step)
    if steps is None:
        return None
    step_s, step_e = _stretch_to_device(cols, kind, steps, work) if stretch_steps else steps
    if step_s.size == 0:
        return None
    per_role = _role_time_per_step(cols, role_masks, step_s, step_e)
    n = step_s.size
    avg = float((step_e - step_s).sum()) / n
    if avg <= 0:
        return None
    return OverviewBreakdown(avg_step_ns=avg, role_ns=tuple(float(r.sum()) / n for r in per_role), steps=n)


def _role_time_per_step(
    cols: SpanColumns, role_masks: tuple[np.ndarray, ...], step_s: np.ndarray, step_e: np.ndarray
) -> list[np.ndarray]:
    """Nanoseconds of each role (and Other) in each step: the steps' union is cut once at every boundary,
    each piece goes to the first role covering it (priority order), the rest is Other."""
    unions = [iv.union(cols.start_ns[m], cols.end_ns[m]) for m in role_masks]
    steps = iv.union(step_s, step_e)
    # sort and drop repeats: numpy 2's hash-based np.unique is 10x slower on a million int64 boundaries
    points = np.sort(np.concatenate([steps[0], steps[1]] + [a for u in unions for a in u]))
    points = points[np.concatenate(([True], points[1:] != points[:-1]))] if points.size else points
    left, right = points[:-1], points[1:]
    inside = iv.covered(steps, left)
    winner = np.full(left.size, len(ROLES) - 1, dtype=np.int64)  # Other unless a role covers it
    decided = ~inside
    for k, u in enumerate(unions):
        hit = ~decided & iv.covered(u, left)
        winner[hit] = k
        decided |= hit
    out = []
    for k in range(len(ROLES)):
        m = inside & (winner == k)
        out.append(iv.overlap((left[m], right[m]), step_s, step_e).astype(np.float64))
    return out


def _native_categories(category: np.ndarray, native: np.ndarray) -> np.ndarray:
    """For gpuwatch's own host regions (watch, attach): 1 sync, 2 data_loading, 3 anything else; 0 others."""
    out = np.zeros(category.size, dtype=np.int8)
    idx = np.flatnonzero(native)
    if idx.size:
        cat = category[idx]
        out[idx] = np.where(
            cat == Category.SYNC.value, 1, np.where(cat == Category.DATA_LOADING.value, 2, 3)
        ).astype(np.int8)
    return out


class _NameFacts:
    """What the plugin reads from a span's name, decided once per distinct name."""

    def __init__(self, cols: SpanColumns) -> None:
        codes = name_codes(cols)
        n = codes.size
        if n and codes.min() >= 0 and codes.max() < 4 * n:  # dense codes (the reader's, the importer's)
            first_at = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
            first_at[codes[::-1]] = np.arange(n - 1, -1, -1)  # the last write wins: each code's first span
            present = np.flatnonzero(first_at >= 0)
            first = first_at[present]
            inverse = np.searchsorted(present, codes)
        else:
            _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        texts = [str(n) for n in cols.name[first].tolist()]
        self.comm = np.array([t in COMM_OP_NAMES for t in texts], dtype=bool)[inverse]
        self.dataloader = np.array(
            [
                (t.startswith("enumerate(DataLoader)#") and t.endswith(".__next__"))
                or t.startswith("enumerate(DataPipe)#")
                for t in texts
            ],
            dtype=bool,
        )[inverse]
        self.step = np.array([t.startswith("ProfilerStep#") for t in texts], dtype=bool)[inverse]
        self.rpc = np.array([t == "record_param_comms" for t in texts], dtype=bool)[inverse]


def legacy_runtime_format(kineto_categories: list[str] | tuple[str, ...]) -> bool:
    """Whether torch-tb-profiler 0.4.3 reads a trace's runtime calls: only under the category `Runtime`
    (PyTorch 1.8-1.13 era); `cuda_runtime` is not in its category map."""
    return any(str(c).lower() == "runtime" for c in kineto_categories)


def _steps(
    cols: SpanColumns, kind: ValueCodes, operators: np.ndarray, gpu_steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The plugin's steps: host ProfilerStep ranges (by start), then the GPU-side ones (it lists them in
    trace order, and Kineto writes host events first); without any, the operators' extent."""
    host = np.flatnonzero(kind.isin([SpanKind.STEP.value]))
    host = host[np.argsort(cols.start_ns[host], kind="stable")]
    dev = np.flatnonzero(gpu_steps)
    dev = dev[np.argsort(cols.start_ns[dev], kind="stable")]
    idx = np.concatenate([host, dev])
    if idx.size:
        return cols.start_ns[idx], cols.end_ns[idx]
    for pick in (operators, cols.stream < 0, np.ones(len(cols), dtype=bool)):
        if pick.any():
            lo, hi = int(cols.start_ns[pick].min()), int(cols.end_ns[pick].max())
            return (np.array([lo]), np.array([hi])) if hi > lo else None
    return None


def _launched_by_comm_op(
    cols: SpanColumns, ops: np.ndarray, comm_name: np.ndarray, is_runtime: np.ndarray
) -> np.ndarray:
    """Device spans whose runtime launch sits directly under a named collective operator (no other operator
    nested between them): the kernels the plugin links to that operator by External id. Kineto gives a
    runtime call the External id of the innermost operator around it; user annotations (record_function
    ranges of PyTorch 1.11 and later, where `nccl:all_reduce` lives now) never lend theirs, so only
    collectives recorded as operators (older traces) claim kernels."""
    comm_ops = np.flatnonzero(ops & comm_name)
    if comm_ops.size == 0:
        return np.zeros(len(cols), dtype=bool)
    runtime = _by_thread(cols, is_runtime & (cols.correlation >= 0))
    ranges = _by_thread(cols, ops)
    launched: list[np.ndarray] = []
    for c in comm_ops.tolist():
        key = (int(cols.pid[c]), int(cols.tid[c]))
        lo, hi = cols.start_ns[c], cols.end_ns[c]
        rt = _starting_within(cols, runtime.get(key), lo, hi)
        rt = rt[cols.end_ns[rt] <= hi]
        if rt.size == 0:
            continue
        nested = _starting_within(cols, ranges.get(key), lo, hi)
        nested = nested[(cols.end_ns[nested] <= hi) & (nested != c)]
        under = iv.covered(iv.union(cols.start_ns[nested], cols.end_ns[nested]), cols.start_ns[rt])
        launched.append(cols.correlation[rt[~under]])
    if not launched:
        return np.zeros(len(cols), dtype=bool)
    return np.isin(cols.correlation, np.concatenate(launched)) & (cols.stream >= 0)


def _by_thread(cols: SpanColumns, mask: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Indices of the masked spans per (pid, tid), each sorted by start."""
    idx = np.flatnonzero(mask)
    idx = idx[np.lexsort((cols.start_ns[idx], cols.tid[idx], cols.pid[idx]))]
    if idx.size == 0:
        return {}
    pid, tid = cols.pid[idx], cols.tid[idx]
    cut = np.flatnonzero((pid[1:] != pid[:-1]) | (tid[1:] != tid[:-1])) + 1
    return {(int(pid[g[0]]), int(tid[g[0]])): idx[g] for g in np.split(np.arange(idx.size), cut)}


def _starting_within(cols: SpanColumns, idx: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    if idx is None:
        return np.zeros(0, dtype=np.int64)
    starts = cols.start_ns[idx]
    return idx[np.searchsorted(starts, lo, side="left") : np.searchsorted(starts, hi, side="right")]


def _stretch_to_device(
    cols: SpanColumns, kind: ValueCodes, steps: tuple[np.ndarray, np.ndarray], work: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The plugin's `update_device_steps`: steps stretched over the device work their runtime calls
    launched, and trailing steps with too little device work dropped. Unchanged when nothing links."""
    step_s, step_e = steps[0].copy(), steps[1].copy()
    rt = np.flatnonzero(kind.isin([SpanKind.RUNTIME.value]))
    rt = rt[np.argsort(cols.start_ns[rt], kind="stable")]
    dev = np.flatnonzero(work & (cols.correlation >= 0))
    if rt.size == 0 or dev.size == 0:
        return step_s, step_e
    rs, re = cols.start_ns[rt], cols.end_ns[rt]
    n_steps = step_s.size
    # the plugin's two-way merge of time-sorted runtime calls with the steps in list order: a call counts
    # for the current step when it lies inside it; a call that starts at or after the step's end moves on
    rt_step = np.full(rt.size, -1, dtype=np.int64)
    p = 0
    for k in range(n_steps):
        if p >= rs.size:
            break
        ss, se = step_s[k], step_e[k]
        q = p + int(np.searchsorted(rs[p:], se, side="left"))
        while q < rs.size and re[q] <= se:  # zero-length calls right at the end still count
            q += 1
        inside = (rs[p:q] >= ss) & (re[p:q] <= se)
        rt_step[p:q][inside] = k
        p = q
    # device work per runtime call, by correlation id (the first call of an id takes its work)
    r_corr = cols.correlation[rt]
    by_corr = np.argsort(r_corr, kind="stable")
    d_corr = cols.correlation[dev]
    pos = np.clip(np.searchsorted(r_corr[by_corr], d_corr), 0, r_corr.size - 1)
    linked = r_corr[by_corr][pos] == d_corr
    dev_step = np.where(linked, rt_step[by_corr[pos]], -1)
    hit = dev_step >= 0
    if not hit.any():
        return step_s, step_e
    matched = np.bincount(dev_step[hit], minlength=n_steps)
    dev_min = np.full(n_steps, np.iinfo(np.int64).max, dtype=np.int64)
    dev_max = np.full(n_steps, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(dev_min, dev_step[hit], cols.start_ns[dev[hit]])
    np.maximum.at(dev_max, dev_step[hit], cols.end_ns[dev[hit]])
    prev_end = int(step_s[0])
    if matched[0]:  # device work launched outside every step that ended before step 0's work began
        unmatched = np.ones(len(cols), dtype=bool)
        unmatched[dev[hit]] = False
        ends = cols.end_ns[work & unmatched]
        early = ends[ends < dev_min[0]]
        if early.size:
            prev_end = max(prev_end, int(early.max()))
    for k in range(n_steps):
        start = max(prev_end, int(step_s[k]))
        end = int(step_e[k]) if not matched[k] else max(int(step_e[k]), int(dev_max[k]))
        end = max(end, start)
        step_s[k], step_e[k] = start, end
        prev_end = end
    if n_steps > 1:
        i = int(np.flatnonzero(matched > 0)[-1])
        keep = i if i > 0 and matched[i - 1] * 0.8 > matched[i] else i + 1
        step_s, step_e = step_s[:keep], step_e[:keep]
    return step_s, step_e
