"""Generate large, realistic PyTorch profiler traces for the import benchmark.

The mix of events follows a real DLRM-style A100 trace (HTA's `trace_diff_control/control.json.gz`: 37%
cpu_op, 23% cuda_runtime, 31% flow events, 8% kernels, memsets, memcpys, a few user annotations), with the
args real traces carry (Input Dims, Call stack, grid/block, correlation and External ids), nested operators,
backward on the autograd thread, all_to_all collectives with NCCL metadata, and ~250 bytes per event, so
216k events make the 54 MB of HTA's largest test traces.

    python benchmarks/make_big_trace.py --events 216000 --out /tmp/big_216k.json.gz
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from synthetic_kineto import ELEMENTWISE, GEMM, US, RankTrace, write_events_stream  # noqa: E402

GENERATOR_VERSION = 3
"""Bumped whenever the generated traces change (benchmarks cache them under this version)."""
SENDRECV = "ncclKernel_SendRecv_RING_SIMPLE_Sum_int8_t(ncclWorkElem)"
ADAM = "void multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor<float>, float>(int, int*, float*)"


class Device:
    """Per-stream queues: a kernel starts when launched (+latency) and its stream is free."""

    def __init__(self) -> None:
        self.free: dict[int, int] = {}

    def place(self, stream: int, launch_ns: int, dur_ns: int) -> int:
        start = max(launch_ns + 5 * US, self.free.get(stream, 0))
        self.free[stream] = start + dur_ns
        return start


class StepWriter:
    def __init__(self, tr: RankTrace, layers: int) -> None:
        self.tr = tr
        self.layers = layers
        self.dev = Device()
        self.autograd_tid = tr.tid + 11

    def op(self, name: str, t: int, d: int, tid: int | None = None) -> None:
        self.tr.x("cpu_op", name, t, d, tid=tid)

    def kernel(
        self,
        name: str,
        t: int,
        d_host: int,
        d_dev: int,
        stream: int = 7,
        tid: int | None = None,
        api: str = "cudaLaunchKernel",
        cat: str = "kernel",
        extra: dict[str, Any] | None = None,
    ) -> None:
        corr = self.tr.launch(api, t, d_host, tid=tid)
        start = self.dev.place(stream, t, d_dev)
        self.tr.device_event(cat, name, start, d_dev, corr, stream, extra)

    def runtime(self, name: str, t: int, d: int, tid: int | None = None) -> None:
        self.tr.launch(name, t, d, tid=tid)

    def step(self, number: int, t0: int) -> int:
        t = t0
        tr = self.tr
        # data loading: the batch comes from worker processes, then goes to the device
        tr.x("user_annotation", "enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__", t, 400 * US)
        t += 400 * US
        tr.x("user_annotation", "## load_batch ##", t, 80 * US)
        for _ in range(3):
            self.op("aten::to", t, 20 * US)
            self.op("aten::_to_copy", t + US, 18 * US)
            self.op("aten::copy_", t + 2 * US, 16 * US)
            self.kernel(
                "Memcpy HtoD (Pinned -> Device)",
                t + 3 * US,
                8 * US,
                30 * US,
                api="cudaMemcpyAsync",
                cat="gpu_memcpy",
                extra={"bytes": 4 << 20, "memory bandwidth (GB/s)": 20.1},
            )
            t += 25 * US
        t += 5 * US
        fwd_start = t
        for _ in range(self.layers):  # forward on the training thread
            self.op("aten::linear", t, 60 * US)
            self.op("aten::t", t + US, 8 * US)
            self.op("aten::transpose", t + 2 * US, 5 * US)
            self.op("aten::as_strided", t + 3 * US, 2 * US)
            self.op("aten::addmm", t + 10 * US, 45 * US)
            self.runtime("cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags", t + 12 * US, 2 * US)
            self.runtime("cudaFuncSetAttribute", t + 15 * US, 2 * US)
            self.kernel(GEMM, t + 20 * US, 8 * US, 70 * US)
            self.op("aten::relu", t + 62 * US, 20 * US)
            self.op("aten::clamp_min", t + 63 * US, 18 * US)
            self.kernel(ELEMENTWISE, t + 65 * US, 6 * US, 15 * US)
            self.op("aten::view", t + 84 * US, 3 * US)
            self.op("aten::empty", t + 88 * US, 3 * US)
            t += 95 * US
        tr.x("user_annotation", "## forward ##", fwd_start, t - fwd_start)
        # all_to_all of embeddings (exposed when the device has nothing else queued)
        t = self.collective(t, "all_to_all")
        bwd_start = t
        at = self.autograd_tid
        for i in range(self.layers):  # backward on the autograd engine thread
            self.op("autograd::engine::evaluate_function: AddmmBackward0", t, 80 * US, tid=at)
            self.op("AddmmBackward0", t + US, 70 * US, tid=at)
            self.op("aten::t", t + 2 * US, 5 * US, tid=at)
            self.op("aten::mm", t + 8 * US, 30 * US, tid=at)
            self.runtime("cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags", t + 9 * US, 2 * US, tid=at)
            self.kernel(GEMM, t + 12 * US, 8 * US, 60 * US, tid=at)
            self.op("aten::mm", t + 40 * US, 30 * US, tid=at)
            self.kernel(GEMM, t + 44 * US, 8 * US, 60 * US, tid=at)
            self.op("aten::sum", t + 72 * US, 6 * US, tid=at)
            if i % 2:  # half the layers reduce a bias gradient (control has ~8% kernels)
                self.kernel(
                    "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float> >(at::native::ReduceOp)",
                    t + 73 * US,
                    4 * US,
                    10 * US,
                    tid=at,
                )
            else:
                self.runtime("cudaStreamIsCapturing", t + 73 * US, 2 * US, tid=at)
            self.op(
                "autograd::engine::evaluate_function: torch::autograd::AccumulateGrad",
                t + 82 * US,
                20 * US,
                tid=at,
            )
            self.op("torch::autograd::AccumulateGrad", t + 83 * US, 18 * US, tid=at)
            self.op("aten::add_", t + 84 * US, 14 * US, tid=at)
            self.op("aten::empty_strided", t + 85 * US, 2 * US, tid=at)
            self.op("aten::as_strided", t + 88 * US, 2 * US, tid=at)
            if i % 2 == 0:
                self.kernel(ELEMENTWISE, t + 91 * US, 6 * US, 8 * US, tid=at)
            else:
                self.runtime("cudaPeekAtLastError", t + 91 * US, 1 * US, tid=at)
            self.runtime("cudaEventQuery", t + 99 * US, 1 * US, tid=at)
            if i % 8 == 7:
                self.kernel(
                    "Memset (Device)",
                    t + 100 * US,
                    3 * US,
                    2 * US,
                    api="cudaMemsetAsync",
                    cat="gpu_memset",
                    tid=at,
                    extra={"bytes": 8},
                )
            t += 105 * US
        tr.x("user_annotation", "## backward ##", bwd_start, t - bwd_start)
        t = self.collective(t, "all_reduce")
        tr.x("user_annotation", "Optimizer.step#Adam.step", t, 200 * US)
        for k in range(4):
            self.op("aten::_foreach_add_", t + k * 45 * US, 40 * US)
            self.kernel(ADAM, t + k * 45 * US + 5 * US, 10 * US, 50 * US)
        t += 200 * US
        self.runtime("cudaStreamSynchronize", t, max(self.dev.free.get(7, t) - t, 0) + US)
        t = max(t, self.dev.free.get(7, t), self.dev.free.get(20, t)) + 2 * US
        tr.x("user_annotation", f"ProfilerStep#{number}", t0, t - t0)
        return t

    def collective(self, t: int, kind: str) -> int:
        tr = self.tr
        tr._seq += 1
        args = tr._coll_args(1 << 20)
        args["Collective name"] = kind.replace("_", "")
        tr.x("cpu_op", "record_param_comms", t, 40 * US, args=args)
        tr.x("user_annotation", f"nccl:{kind}", t + US, 38 * US)
        name = (
            SENDRECV
            if kind == "all_to_all"
            else "ncclKernel_AllReduce_RING_LL_Sum_float(ncclDevComm*, unsigned long, ncclWork*)"
        )
        self.kernel(name, t + 5 * US, 10 * US, 900 * US, stream=20, extra=args)
        self.runtime("cudaStreamWaitEvent", t + 41 * US, 2 * US)
        return t + 45 * US


def generate(
    out: Path, events: int, *, rank: int = 0, world_size: int = 8, layers: int = 360
) -> tuple[int, int]:
    """Write a trace of about `events` events to `out`; returns (events written, uncompressed bytes)."""
    tr = RankTrace(
        rank,
        world_size,
        realistic=True,
        float_ts=False,
        origin_us=1_661_203_462_598_738,
        base_time_ns=None,
        pid=3113936,
    )
    writer = StepWriter(tr, layers)

    def chunks() -> Iterator[list[dict[str, Any]]]:
        t = 100 * US
        number = 1000
        written = 0
        while written < events:
            t = writer.step(number, t) + 30 * US
            number += 1
            chunk, tr.events = tr.events, []
            written += len(chunk)
            yield chunk
        yield tr.metadata_events()

    n = write_events_stream(out, tr.header(), chunks(), level=1)
    import gzip

    size = 0
    with gzip.open(out, "rb") if out.name.endswith(".gz") else open(out, "rb") as fh:
        while block := fh.read(1 << 22):
            size += len(block)
    return n, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=216_000, help="about how many events (default 216000)")
    ap.add_argument("--out", type=Path, required=True, help="output .json or .json.gz")
    ap.add_argument("--rank", type=int, default=0)
    args = ap.parse_args()
    t = time.perf_counter()
    n, size = generate(args.out, args.events, rank=args.rank)
    print(f"{args.out}: {n} events, {size / 1e6:.1f} MB uncompressed, {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
