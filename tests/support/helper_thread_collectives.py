"""Two gloo ranks whose all-reduce runs on a helper thread while the training thread waits for it.

    torchrun --nproc-per-node 2 tests/support/helper_thread_collectives.py --truth T.jsonl [--run-dir RUN]
        [--steps N] [--late-ms 40]

Each step: real math on the training thread (a forward of linear layers), then the gradient-like tensor goes to an
all-reduce submitted to a `ThreadPoolExecutor` (the way a job overlaps communication with its own helper
thread), and the training thread blocks on `future.result()`. Rank 1 works `--late-ms` longer before its
all-reduce, so rank 0's helper thread (and rank 0's training thread behind it) waits for rank 1.

With `--run-dir` both ranks run under `gpuwatch.watch` and mark steps; without it (for `gpuwatch attach`),
rank 0 prints its pid once in its loop and the job runs for `--steps` (0: until killed). Truth (rank 0 only,
one JSON line per step, wall-clock ns intervals measured with time.perf_counter): `compute`, `sync` (the
wait on the helper's all-reduce), `step` (from this step's start to the next's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist
from watch_or_attach import watch_or_attach


def reduce_on_helper(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t)
    return t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--truth", required=True)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--late-ms", type=float, default=40.0)
    p.add_argument(
        "--layers", type=int, default=12, help="Linear+Tanh pairs: the compute per step (~1.3 ms each)"
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)
    layers: list[torch.nn.Module] = []
    for _ in range(args.layers):
        layers += [torch.nn.Linear(384, 384), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers).requires_grad_(False)
    x = torch.randn(384, 384)
    pool = ThreadPoolExecutor(1, thread_name_prefix="comm")
    fd = os.open(args.truth, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if rank == 0 else -1
    wall0, perf0 = time.time_ns(), time.perf_counter()

    def wall(t: float) -> int:
        return wall0 + int((t - perf0) * 1e9)

    with watch_or_attach(args.run_dir) as gw:
        step = 0
        t_step = time.perf_counter()
        while not args.steps or step < args.steps:
            t0 = time.perf_counter()
            grad = model(x).sum(0)
            if rank == 1:
                time.sleep(args.late_ms / 1000)  # this rank's other work: rank 0 waits for it
            t1 = time.perf_counter()
            pool.submit(reduce_on_helper, grad).result()
            t2 = time.perf_counter()
            gw.step()
            t_next = time.perf_counter()
            if rank == 0:
                phases = [["compute", t0, t1], ["sync", t1, t2], ["step", t_step, t_next]]
                doc = {"step": step, "phases": [[n, wall(a), wall(b)] for n, a, b in phases]}
                os.write(fd, (json.dumps(doc) + "\n").encode())
                if step == 2 and not args.run_dir:
                    print(os.getpid(), flush=True)
            t_step = t_next
            step += 1
    pool.shutdown()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
