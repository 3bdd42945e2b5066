"""Synthetic PyTorch profiler (Kineto) traces with planted stalls, and the ground truth of what was planted.

Independent of gpuwatch on purpose (no gpuwatch import): the traces are plain Chrome-trace JSON shaped the
way `torch.profiler` writes them (cpu_op / user_annotation / cuda_runtime / kernel / gpu_memcpy /
gpu_memset events, External ids and correlation ids, ac2g flow events, ProfilerStep#N markers,
record_param_comms with NCCL args launching ncclKernel_* kernels, metadata events), and the truth is
bookkeeping done while planting: every phase of a step writes down which budget category each of its
nanoseconds belongs to (DESIGN.md's rules applied by hand to a situation the generator controls: the
device is drained at every phase boundary, so each instant has one obvious answer).

A step (device mode) is, in order: data loading (`enumerate(DataLoader)#...__next__` while the device
idles), CPU preprocessing on the training thread, an exposed host->device copy and memset, forward and
backward (kernels back to back, with an NCCL all-reduce hidden under compute), an exposed all-reduce
(ncclKernel with the host in cudaStreamSynchronize), host overhead (logging), a checkpoint save, and an
unattributed gap (nothing on the training thread; a pin-memory thread busy meanwhile must not count).
CPU-only mode plants the same causes with the training thread's math as compute.

Used by tests/ and by benchmarks/make_big_trace.py (the `realistic` switch adds the args real traces
carry, so bytes per event match real traces).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CATEGORIES = (
    "compute",
    "data_loading",
    "cpu_preprocessing",
    "sync",
    "checkpoint_io",
    "memcpy",
    "host_overhead",
    "unattributed",
)

US = 1_000  # ns per microsecond
MS = 1_000_000

_OLD_CATS = {
    "cpu_op": "Operator",
    "user_annotation": "Operator",
    "cuda_runtime": "Runtime",
    "kernel": "Kernel",
    "gpu_memcpy": "Memcpy",
    "gpu_memset": "Memset",
}

NCCL_ALLREDUCE = "ncclKernel_AllReduce_RING_LL_Sum_float(ncclDevComm*, unsigned long, ncclWork*)"
GEMM = "void cutlass::Kernel<cutlass_80_tensorop_s1688gemm_64x64_32x6_tn_align4>(Params)"
ELEMENTWISE = (
    "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
    "at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<float>, at::detail::Array<char*, 3>)"
)


@dataclass
class Plan:
    """What one step plants, in nanoseconds (device mode unless noted)."""

    data_loading_ns: int = 9 * MS
    cpu_preprocessing_ns: int = 4 * MS
    copy_ns: int = 1_500 * US
    memset_ns: int = 300 * US
    kernels: int = 24
    """Compute kernels per phase (forward and backward each)."""
    kernel_ns: int = 400 * US
    exposed_sync_ns: int = 6 * MS
    host_overhead_ns: int = 3 * MS
    checkpoint_ns: int = 5 * MS
    unattributed_ns: int = 2 * MS
    hidden_collective: bool = True
    """An all-reduce under compute (must count as compute, not sync)."""


@dataclass
class StepTruth:
    number: int
    start_ns: int
    end_ns: int
    category_ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))


@dataclass
class Collective:
    seq: int
    arrival_ns: int
    """When this rank arrived: device kernel start (GPU) or host call start (CPU-only)."""
    end_ns: int


class RankTrace:
    """Builds one rank's trace; every phase also books its ground truth.

    Args:
        rank, world_size: written to distributedInfo (omitted when `distributed_info` is False).
        device: GPU rank (kernels, streams) or CPU-only (gloo, no device events).
        float_ts: sub-microsecond float timestamps (newer Kineto) or integer microseconds (older).
        origin_us: the profiler clock at relative time 0 (shared by ranks of one job so they line up).
        base_time_ns: `baseTimeNanoseconds` (None: not written, as in older traces).
        pid, tid: the training process and thread (ranks may share a pid, e.g. one per container).
        realistic: add the args real traces carry (Input Dims, Call stack, grid, ...) and flow events.
        seq_in_args: write NCCL "Seq" numbers (newer PyTorch) or leave matching to call order.
        linked_external_ids: give runtime calls and their device work the External id of the innermost
            operator around the launch, as Kineto does (user annotations lend theirs only in the old format,
            where they are operators); otherwise every event has an External id of its own.
    """

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        *,
        device: bool = True,
        float_ts: bool = True,
        origin_us: int = 1_212_075_548_353,
        base_time_ns: int | None = 1_711_964_646_000_000_000,
        pid: int = 4242,
        tid: int | None = None,
        realistic: bool = False,
        seq_in_args: bool = True,
        old_categories: bool = False,
        distributed_info: bool = True,
        step_markers: bool = True,
        linked_external_ids: bool = False,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.float_ts = float_ts
        self.origin_ns = origin_us * US + (304 if float_ts else 0)  # a sub-µs phase, like real traces
        self.base_time_ns = base_time_ns
        self.pid = pid
        self.tid = pid if tid is None else tid
        self.aux_tid = self.tid + 7  # a pin-memory thread: busy, but not the training thread
        self.realistic = realistic
        self.seq_in_args = seq_in_args
        self.old_categories = old_categories
        self.distributed_info = distributed_info
        self.step_markers = step_markers
        self.linked_external_ids = linked_external_ids
        self.device_index = rank % 8
        self.compute_stream = 7
        self.comm_stream = 20
        self.events: list[dict[str, Any]] = []
        self.steps: list[StepTruth] = []
        self.collectives: list[Collective] = []
        self.unknown_events = 0
        self._ext = 0
        self._corr = 0
        self._seq = 0
        self._step: StepTruth | None = None
        self._extent = [None, None]  # first start / last end of imported events, ns

    # ---- raw events ------------------------------------------------------------------------------
    def _ts(self, t_ns: int) -> float | int:
        v = self.origin_ns + t_ns
        if self.float_ts:
            return v / 1000
        assert v % US == 0, "integer-µs traces need µs-aligned times"
        return v // US

    def _dur(self, d_ns: int) -> float | int:
        if self.float_ts:
            return d_ns / 1000
        assert d_ns % US == 0
        return d_ns // US

    def _cat(self, cat: str) -> str:
        return _OLD_CATS.get(cat, cat) if self.old_categories else cat

    def x(
        self,
        cat: str,
        name: str,
        start_ns: int,
        dur_ns: int,
        *,
        pid: int | None = None,
        tid: int | None = None,
        args: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One complete ('X') event."""
        self._ext += 1
        a: dict[str, Any] = {"External id": self._ext}
        if self.realistic and cat in ("cpu_op", "user_annotation"):
            a.update(
                {
                    "Trace name": "PyTorch Profiler",
                    "Profiler Event Index": self._ext,
                    "Input Dims": [[64, 1024], [1024, 1024], []],
                    "Input type": ["float", "float", "Scalar"],
                    "Call stack": "",
                }
            )
        if args:
            a.update(args)
        ev = {
            "ph": "X",
            "cat": self._cat(cat),
            "name": name,
            "pid": self.pid if pid is None else pid,
            "tid": self.tid if tid is None else tid,
            "ts": self._ts(start_ns),
            "dur": self._dur(dur_ns),
            "args": a,
        }
        self.events.append(ev)
        lo, hi = self._extent
        self._extent = [start_ns if lo is None else min(lo, start_ns), max(hi or 0, start_ns + dur_ns)]
        return ev

    def launch(self, api: str, start_ns: int, dur_ns: int, *, tid: int | None = None) -> int:
        """A runtime call (cudaLaunchKernel, cudaMemcpyAsync...) with a new correlation id."""
        self._corr += 1
        corr = self._corr
        self.x("cuda_runtime", api, start_ns, dur_ns, tid=tid, args={"cbid": 211, "correlation": corr})
        if self.realistic:
            self.events.append(
                {
                    "ph": "s",
                    "id": corr,
                    "pid": self.pid,
                    "tid": self.tid if tid is None else tid,
                    "ts": self._ts(start_ns),
                    "cat": "ac2g",
                    "name": "ac2g",
                }
            )
        return corr

    def device_event(
        self,
        cat: str,
        name: str,
        start_ns: int,
        dur_ns: int,
        corr: int,
        stream: int,
        extra: dict | None = None,
    ) -> None:
        args: dict[str, Any] = {
            "device": self.device_index,
            "context": 1,
            "stream": stream,
            "correlation": corr,
        }
        if cat == "kernel":
            args["queued"] = 0
            if self.realistic:
                args.update(
                    {
                        "registers per thread": 90,
                        "shared memory": 49152,
                        "blocks per SM": 0.59,
                        "warps per SM": 2.37,
                        "grid": [64, 1, 1],
                        "block": [128, 1, 1],
                        "est. achieved occupancy %": 4,
                    }
                )
        if extra:
            args.update(extra)
        self.x(cat, name, start_ns, dur_ns, pid=self.device_index, tid=stream, args=args)
        if self.realistic:
            self.events.append(
                {
                    "ph": "f",
                    "id": corr,
                    "pid": self.device_index,
                    "tid": stream,
                    "ts": self._ts(start_ns),
                    "cat": "ac2g",
                    "name": "ac2g",
                    "bp": "e",
                }
            )

    def add_unknown_events(self, n: int, t_ns: int) -> None:
        """Events of kinds no importer knows: a vendor category and an unknown phase letter."""
        for i in range(n):
            if i % 2:
                self.events.append(
                    {
                        "ph": "X",
                        "cat": "vendor_magic_counter",
                        "name": f"magic{i}",
                        "pid": self.pid,
                        "tid": self.tid,
                        "ts": self._ts(t_ns),
                        "dur": self._dur(US),
                        "args": {},
                    }
                )
            else:
                self.events.append(
                    {"ph": "Z", "name": f"zeta{i}", "pid": self.pid, "tid": self.tid, "ts": self._ts(t_ns)}
                )
        self.unknown_events += n

    # ---- truth bookkeeping -----------------------------------------------------------------------
    def book(self, start_ns: int, end_ns: int, category: str) -> None:
        assert self._step is not None and end_ns >= start_ns and category in CATEGORIES
        self._step.category_ns[category] += end_ns - start_ns

    def begin_step(self, number: int, t_ns: int) -> None:
        self._step = StepTruth(number, t_ns, t_ns)

    def end_step(self, t_ns: int, *, marker_overlap_ns: int = 0) -> None:
        step = self._step
        assert step is not None
        step.end_ns = t_ns
        total = sum(step.category_ns.values())
        assert total == t_ns - step.start_ns, (total, t_ns - step.start_ns)
        if self.step_markers:
            self.x(
                "user_annotation",
                f"ProfilerStep#{step.number}",
                step.start_ns,
                t_ns - step.start_ns + marker_overlap_ns,
            )
        self.steps.append(step)
        self._step = None

    # ---- planted phases (each returns the time it ends; the device is idle at both ends) ---------
    def data_loading(self, t: int, d: int) -> int:
        self.x("user_annotation", "enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__", t, d)
        # the batch arrives at the end: a few host ops nested in the wait (still data loading)
        self.x("cpu_op", "aten::empty", t + d - 20 * US, 5 * US)
        self.book(t, t + d, "data_loading")
        return t + d

    def cpu_preprocessing(self, t: int, d: int) -> int:
        self.x("user_annotation", "preprocess_batch", t, d)
        n = 4
        for i in range(n):  # decode + augment on the training thread, back to back
            s = t + i * d // n
            self.x("cpu_op", "torchvision::decode_jpeg" if i % 2 == 0 else "aten::flip", s, d // n)
        self.book(t, t + d, "cpu_preprocessing")
        return t + d

    def memcpy(self, t: int, copy_ns: int, memset_ns: int) -> int:
        """cudaMemcpyAsync (H2D) + cudaMemsetAsync, then the host waits in cudaStreamSynchronize."""
        lat, rt = 3 * US, 5 * US
        c1 = self.launch("cudaMemcpyAsync", t, rt)
        self.device_event(
            "gpu_memcpy",
            "Memcpy HtoD (Pageable -> Device)",
            t + lat,
            copy_ns,
            c1,
            self.compute_stream,
            {"bytes": 64 << 20, "memory bandwidth (GB/s)": 11.8},
        )
        c2 = self.launch("cudaMemsetAsync", t + rt, rt)
        set_start = max(t + rt + lat, t + lat + copy_ns)
        self.device_event(
            "gpu_memset",
            "Memset (Device)",
            set_start,
            memset_ns,
            c2,
            self.compute_stream,
            {"bytes": 8 << 20, "memory bandwidth (GB/s)": 900.0},
        )
        dev_end = set_start + memset_ns
        self.x(
            "cuda_runtime",
            "cudaStreamSynchronize",
            t + 2 * rt,
            dev_end + US - (t + 2 * rt),
            args={"cbid": 131, "correlation": 0},
        )
        self.book(t, t + lat, "memcpy")  # host in cudaMemcpyAsync, copy not started yet
        self.book(t + lat, dev_end, "memcpy")  # device copying / setting
        self.book(dev_end, dev_end + US, "sync")  # cudaStreamSynchronize returning
        return dev_end + US

    def _coll_args(self, nelems: int) -> dict[str, Any]:
        a: dict[str, Any] = {
            "Collective name": "allreduce",
            "In msg nelems": nelems,
            "Out msg nelems": nelems,
            "Group size": self.world_size,
            "dtype": "Float",
            "Process Group Name": "0",
            "Process Group Description": "default_pg",
            "Process Group Ranks": str(list(range(self.world_size))),
        }
        if self.seq_in_args:
            a["Seq"] = self._seq
        return a

    def compute(self, t: int, n: int, kernel_ns: int, *, label: str, hidden_collective: bool) -> int:
        """Host launches `n` kernels (queued back to back), then waits in aten::item for the result."""
        op, lat = 20 * US, 4 * US
        host = t
        prev_end = None
        first = None
        ann_start = t
        coll_at = n // 3 if hidden_collective and n >= 3 else -1
        for i in range(n):
            self.x("cpu_op", "aten::linear", host, op - 2 * US)
            self.x("cpu_op", "aten::addmm", host + US, op - 4 * US)
            corr = self.launch("cudaLaunchKernel", host + 2 * US, op - 8 * US)
            k_start = host + 2 * US + lat if prev_end is None else max(host + 2 * US + lat, prev_end)
            self.device_event(
                "kernel", GEMM if i % 2 == 0 else ELEMENTWISE, k_start, kernel_ns, corr, self.compute_stream
            )
            first = k_start if first is None else first
            prev_end = k_start + kernel_ns
            host += op
            if i == coll_at:  # an all-reduce bucket launched mid-backward: hidden under compute
                self._seq += 1
                self.x("cpu_op", "record_param_comms", host, op, args=self._coll_args(1 << 20))
                c = self.launch("cudaLaunchKernel", host + 2 * US, op - 8 * US)
                c_start = host + 2 * US + lat
                assert first is not None and c_start >= first
                self.device_event(
                    "kernel",
                    NCCL_ALLREDUCE,
                    c_start,
                    2 * kernel_ns,
                    c,
                    self.comm_stream,
                    self._coll_args(1 << 20),
                )
                assert c_start + 2 * kernel_ns <= first + n * kernel_ns  # fully under compute
                self.collectives.append(Collective(self._seq, c_start, c_start + 2 * kernel_ns))
                host += op
        assert prev_end is not None and first is not None and host < prev_end
        # loss.item(): the host blocks until the device is done
        self.x("cpu_op", "aten::item", host, prev_end + US - host)
        self.x("cpu_op", "aten::_local_scalar_dense", host + US, prev_end + US - host - 2 * US)
        self.x(
            "cuda_runtime",
            "cudaStreamSynchronize",
            host + 2 * US,
            prev_end - host - 2 * US,
            args={"cbid": 131, "correlation": 0},
        )
        self.x("user_annotation", label, ann_start, prev_end + US - ann_start)
        self.book(t, first, "host_overhead")  # launching, device not started yet
        self.book(first, prev_end, "compute")
        self.book(prev_end, prev_end + US, "sync")  # aten::item returning after the device finished
        return prev_end + US

    def exposed_allreduce(self, t: int, transfer_ns: int, last_arrival_ns: int | None = None) -> int:
        """record_param_comms launches an all-reduce; the host waits for it in cudaStreamSynchronize.

        `last_arrival_ns` is when the last rank of the group arrives (None: this rank is the last); the
        kernel then spins until it, and moves data for `transfer_ns` after.
        """
        self._seq += 1
        lat = 4 * US
        rp = 30 * US
        nelems = 1 << 22
        self.x("cpu_op", "record_param_comms", t, rp, args=self._coll_args(nelems))
        self.x("user_annotation", "nccl:all_reduce", t + US, rp - 2 * US)
        c = self.launch("cudaLaunchKernel", t + 2 * US, 10 * US)
        arrival = t + 2 * US + lat
        end = max(arrival, last_arrival_ns or arrival) + transfer_ns
        self.device_event(
            "kernel", NCCL_ALLREDUCE, arrival, end - arrival, c, self.comm_stream, self._coll_args(nelems)
        )
        self.x(
            "cuda_runtime",
            "cudaStreamSynchronize",
            t + rp,
            end + US - (t + rp),
            args={"cbid": 131, "correlation": 0},
        )
        self.collectives.append(Collective(self._seq, arrival, end))
        self.book(t, end + US, "sync")
        return end + US

    def arrival_offset_ns(self) -> int:
        """How long after its start `exposed_allreduce` arrives (device kernel start)."""
        return 6 * US

    def host_overhead(self, t: int, d: int) -> int:
        self.x("user_annotation", "log_metrics", t, d)
        for i in range(3 if self.device else 0):  # on CPU-only ranks aten ops are the step's math
            self.x("cpu_op", "aten::detach", t + (i + 1) * d // 5, 30 * US)
        self.book(t, t + d, "host_overhead")
        return t + d

    def checkpoint(self, t: int, d: int) -> int:
        self.x("user_annotation", "save_checkpoint", t, d)
        for i in range(3):  # host math nested in the save is still the save
            self.x("cpu_op", "aten::clone", t + (i + 1) * d // 5, d // 10)
        self.book(t, t + d, "checkpoint_io")
        return t + d

    def unattributed(self, t: int, d: int) -> int:
        """Nothing on the training thread; a pin-memory thread works meanwhile (not the training loop)."""
        self.x("cpu_op", "aten::pin_memory", t + d // 4, d // 2, tid=self.aux_tid)
        self.book(t, t + d, "unattributed")
        return t + d

    # ---- CPU-only phases ----------------------------------------------------------------------------
    def cpu_math(self, t: int, d: int, label: str, *, collective_ns: int = 0) -> int:
        """Forward/backward on the CPU: aten ops back to back; optionally a gloo all-reduce nested inside."""
        self.x("user_annotation", label, t, d + collective_ns)
        n = 8
        for i in range(n):
            s = t + i * d // n
            self.x("cpu_op", "aten::linear", s, d // n)
            self.x("cpu_op", "aten::addmm", s + US, d // n - 2 * US)
        self.book(t, t + d, "compute")
        end = t + d
        if collective_ns:
            end = self.cpu_allreduce(end, collective_ns)
        return end

    def cpu_allreduce(self, t: int, transfer_ns: int, last_arrival_ns: int | None = None) -> int:
        self._seq += 1
        end = max(t, last_arrival_ns or t) + transfer_ns
        self.x("cpu_op", "record_param_comms", t, end - t, args=self._coll_args(1 << 20))
        self.x("user_annotation", "gloo:all_reduce", t + US, end - t - 2 * US)
        self.collectives.append(Collective(self._seq, t, end))
        self.book(t, end, "sync")
        return end

    # ---- whole steps -------------------------------------------------------------------------------
    def planted_step(self, number: int, t: int, plan: Plan, *, marker_overlap_ns: int = 0) -> int:
        """One step with every cause of idle time planted (device or CPU-only); returns its end."""
        self.begin_step(number, t)
        t = self.data_loading(t, plan.data_loading_ns)
        t = self.cpu_preprocessing(t, plan.cpu_preprocessing_ns)
        if self.device:
            t = self.memcpy(t, plan.copy_ns, plan.memset_ns)
            t = self.compute(t, plan.kernels, plan.kernel_ns, label="## forward ##", hidden_collective=False)
            t = self.compute(
                t,
                plan.kernels,
                plan.kernel_ns,
                label="## backward ##",
                hidden_collective=plan.hidden_collective,
            )
            t = self.exposed_allreduce(t, plan.exposed_sync_ns)
        else:
            t = self.cpu_math(t, plan.kernels * plan.kernel_ns, "## forward ##")
            t = self.cpu_math(
                t, plan.kernels * plan.kernel_ns, "## backward ##", collective_ns=plan.exposed_sync_ns // 2
            )
            t = self.cpu_allreduce(t, plan.exposed_sync_ns - plan.exposed_sync_ns // 2)
        t = self.host_overhead(t, plan.host_overhead_ns)
        t = self.checkpoint(t, plan.checkpoint_ns)
        t = self.unattributed(t, plan.unattributed_ns)
        self.end_step(t, marker_overlap_ns=marker_overlap_ns)
        return t

    # ---- output ----------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"schemaVersion": 1}
        if self.device:
            doc["deviceProperties"] = [
                {
                    "id": i,
                    "name": "NVIDIA A100-SXM4-80GB",
                    "totalGlobalMem": 85_000_000_000,
                    "computeMajor": 8,
                    "computeMinor": 0,
                    "numSms": 108,
                }
                for i in range(8)
            ]
        else:
            doc["deviceProperties"] = []
        if self.distributed_info:
            doc["distributedInfo"] = {
                "backend": "nccl" if self.device else "gloo",
                "rank": self.rank,
                "world_size": self.world_size,
                "pg_count": 1,
            }
        if self.base_time_ns is not None:
            doc["baseTimeNanoseconds"] = self.base_time_ns
        doc["displayTimeUnit"] = "ms"
        return doc

    def metadata_events(self) -> list[dict[str, Any]]:
        ts = self._ts(0)
        meta = [
            {
                "name": "process_name",
                "ph": "M",
                "ts": ts,
                "pid": self.pid,
                "tid": 0,
                "args": {"name": "python3"},
            },
            {
                "name": "thread_name",
                "ph": "M",
                "ts": ts,
                "pid": self.pid,
                "tid": self.tid,
                "args": {"name": f"thread {self.tid} (python3)"},
            },
            {
                "name": "thread_name",
                "ph": "M",
                "ts": ts,
                "pid": self.pid,
                "tid": self.aux_tid,
                "args": {"name": "pt_pin_memory"},
            },
        ]
        if self.device:
            for s in (self.compute_stream, self.comm_stream):
                meta.append(
                    {
                        "name": "thread_name",
                        "ph": "M",
                        "ts": ts,
                        "pid": self.device_index,
                        "tid": s,
                        "args": {"name": f"stream {s} "},
                    }
                )
        lo, hi = self._extent
        lo, hi = lo or 0, hi or 0
        meta.append(
            {
                "ph": "X",
                "cat": "Trace",
                "ts": self._ts(lo),
                "dur": self._dur(hi - lo),
                "pid": "Spans",
                "tid": "PyTorch Profiler",
                "name": "PyTorch Profiler (0)",
                "args": {"Op count": 0},
            }
        )
        meta.append(
            {
                "name": "Iteration Start: PyTorch Profiler",
                "ph": "i",
                "s": "g",
                "pid": "Traces",
                "tid": "Trace PyTorch Profiler",
                "ts": self._ts(lo),
            }
        )
        return meta

    def _link_external_ids(self) -> None:
        """Runtime calls (and the device work of their correlation ids) take the External id of the
        innermost enclosing operator on their thread."""
        op_cats = {"Operator"} if self.old_categories else {"cpu_op"}
        runtime_cat = self._cat("cuda_runtime")
        ops: dict[Any, list[dict[str, Any]]] = {}
        for e in self.events:
            if e.get("ph") == "X" and e["cat"] in op_cats and not e["name"].startswith("ProfilerStep#"):
                ops.setdefault(e["tid"], []).append(e)
        by_corr: dict[int, int] = {}
        for e in self.events:
            if e.get("ph") != "X" or e["cat"] != runtime_cat:
                continue
            lo, hi = e["ts"], e["ts"] + e["dur"]
            around = [o for o in ops.get(e["tid"], []) if o["ts"] <= lo and hi <= o["ts"] + o["dur"]]
            if around:
                inner = max(around, key=lambda o: (o["ts"], -o["dur"]))
                e["args"]["External id"] = inner["args"]["External id"]
                by_corr[e["args"]["correlation"]] = inner["args"]["External id"]
        for e in self.events:
            corr = e.get("args", {}).get("correlation") if e.get("ph") == "X" else None
            if corr and e["cat"] != runtime_cat and corr in by_corr:
                e["args"]["External id"] = by_corr[corr]

    def to_json(self) -> dict[str, Any]:
        doc = self.header()
        if self.linked_external_ids:
            self._link_external_ids()
        doc["traceEvents"] = self.events + self.metadata_events()
        doc["traceName"] = f"rank{self.rank}.pt.trace.json"
        return doc

    def write(self, path: Path) -> Path:
        """Write the trace (gzip when the name ends in .gz), the way torch.profiler exports it."""
        data = json.dumps(self.to_json()).encode()
        path.write_bytes(gzip.compress(data, 1) if path.name.endswith(".gz") else data)
        return path

    # ---- truth -----------------------------------------------------------------------------------
    def truth_ns(self, *, whole_trace: bool = False) -> dict[str, int]:
        """Planted nanoseconds per category over all steps (or, without step markers, the whole trace)."""
        out = dict.fromkeys(CATEGORIES, 0)
        for s in self.steps:
            for c, v in s.category_ns.items():
                out[c] += v
        if whole_trace:
            # one step from the first to the last imported event: the final unattributed gap ends where
            # the last event (the pin-memory thread's op) ends
            lo, hi = self._extent
            assert lo is not None and hi is not None
            out["unattributed"] -= self.steps[-1].end_ns - hi
            out["unattributed"] += self.steps[0].start_ns - lo
        return out

    def truth_pct(self, **kw: Any) -> dict[str, float]:
        ns = self.truth_ns(**kw)
        total = sum(ns.values())
        return {c: 100.0 * v / total for c, v in ns.items()}

    def wall_ns(self) -> int:
        return sum(s.end_ns - s.start_ns for s in self.steps)


def planted_rank(
    steps: int = 4, plan: Plan | None = None, *, step_gap_ns: int = 0, marker_overlap_ns: int = 0, **kw: Any
) -> RankTrace:
    """A single rank with every stall planted in each of `steps` steps."""
    plan = plan or Plan()
    tr = RankTrace(**kw)
    t = 100 * US
    for i in range(steps):
        overlap = marker_overlap_ns if i < steps - 1 else 0
        t = tr.planted_step(i + 1, t, plan, marker_overlap_ns=overlap) + step_gap_ns
    return tr


@dataclass
class LateRankJob:
    """A two-rank (or more) job where one rank arrives late at every all-reduce."""

    ranks: list[RankTrace]
    late_rank: int
    wait_ns: dict[int, int]
    """Planted time each rank spent waiting for a later rank inside exposed all-reduces."""

    def transfer_ns(self, rank: int) -> int:
        return self.ranks[rank].truth_ns()["sync"] - self.wait_ns[rank]


def late_rank_job(
    *,
    world_size: int = 2,
    late_rank: int = 1,
    steps: int = 5,
    lateness_ns: tuple[int, ...] = (3 * MS, 5 * MS, 2 * MS, 8 * MS, 4 * MS),
    transfer_ns: int = 2 * MS,
    device: bool = True,
    same_pid: bool = True,
    seq_in_args: bool = True,
    float_ts: bool = True,
) -> LateRankJob:
    """Every step: load, compute, then all-reduce; `late_rank` first does extra CPU work (decode) for
    `lateness_ns[i]`, so every other rank's all-reduce waits that long for it. Steps start together."""
    ranks = [
        RankTrace(
            r,
            world_size,
            device=device,
            pid=4242 if same_pid else 4242 + r,
            seq_in_args=seq_in_args,
            float_ts=float_ts,
        )
        for r in range(world_size)
    ]
    wait = dict.fromkeys(range(world_size), 0)
    t = 100 * US
    plan = Plan(kernels=12)
    for i in range(steps):
        late = lateness_ns[i % len(lateness_ns)]
        ends = []
        pre = []
        for tr in ranks:
            tr.begin_step(i + 1, t)
            u = tr.data_loading(t, 2 * MS)
            if device:
                u = tr.compute(
                    u, plan.kernels, plan.kernel_ns, label="## forward ##", hidden_collective=False
                )
                u = tr.compute(
                    u, plan.kernels, plan.kernel_ns, label="## backward ##", hidden_collective=True
                )
            else:
                u = tr.cpu_math(u, 6 * MS, "## forward ##")
                u = tr.cpu_math(u, 6 * MS, "## backward ##")
            if tr.rank == late_rank:
                u = tr.cpu_preprocessing(u, late)
            pre.append(u)
        offset = ranks[0].arrival_offset_ns() if device else 0
        last_arrival = max(pre) + offset
        for tr, u in zip(ranks, pre):
            wait[tr.rank] += last_arrival - (u + offset)
            if device:
                ends.append(tr.exposed_allreduce(u, transfer_ns, last_arrival))
            else:
                ends.append(tr.cpu_allreduce(u, transfer_ns, last_arrival))
        assert len(set(ends)) == 1  # everyone leaves the all-reduce together
        for tr in ranks:
            end = tr.host_overhead(ends[0], MS)
            tr.end_step(end)
        t = end
    return LateRankJob(ranks=ranks, late_rank=late_rank, wait_ns=wait)


def write_events_stream(path: Path, header: dict[str, Any], chunks: Any, *, level: int = 1) -> int:
    """Write a trace whose events come in chunks (lists of dicts), without holding them all; returns
    the number of events written."""
    n = 0
    opener = gzip.open(path, "wb", compresslevel=level) if path.name.endswith(".gz") else open(path, "wb")
    with opener as fh:
        head = json.dumps(header)[:-1]
        fh.write(head.encode() + (b", " if header else b"") + b'"traceEvents": [')
        first = True
        for chunk in chunks:
            if not chunk:
                continue
            body = ",\n".join(json.dumps(e) for e in chunk)
            fh.write((body if first else ",\n" + body).encode())
            first = False
            n += len(chunk)
        fh.write(b"]}")
    return n


def drop_first_steps(tr: RankTrace, k: int) -> RankTrace:
    """Cut the first `k` steps out of a rank's trace, as when on-demand profiling starts a few iterations
    later on one rank than on the others (step numbers stay global; collective ordinals do not)."""
    cut_ns = tr.steps[k].start_ns
    cut_ts = tr._ts(cut_ns)
    tr.events = [e for e in tr.events if e.get("ph") == "M" or e.get("ts", cut_ts) >= cut_ts]
    tr.steps = tr.steps[k:]
    tr.collectives = [c for c in tr.collectives if c.arrival_ns >= cut_ns]
    return tr
