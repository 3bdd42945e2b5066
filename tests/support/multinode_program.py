"""One rank of a two-"node" gloo job under `gpuwatch.watch`, for the clock-alignment test.

    python -m torch.distributed.run --nnodes 2 --node-rank K --rdzv-backend c10d \
        --rdzv-endpoint 127.0.0.1:PORT --nproc-per-node 1 tests/support/multinode_program.py RUN_DIR

Each step both ranks work `WORK_MS` (a compute span), the rank whose environment has
`MULTINODE_STRAGGLER=1` works `STRAGGLE_MS` more (the planted straggler), then both all_reduce: the other
rank waits about `STRAGGLE_MS` per step. The test plants a clock skew on one agent with gpuwatch's test-only
`GPUWATCH_TEST_CLOCK_OFFSET_NS` and checks that the alignment recovers it.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist

import gpuwatch

STEPS = 30
WORK_MS = 8.0
STRAGGLE_MS = 12.0


def main() -> None:
    run_dir = sys.argv[1]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    straggler = os.environ.get("MULTINODE_STRAGGLER") == "1"
    t = torch.ones(256)
    with gpuwatch.watch(run_dir, sample_hz=0, system_samplers=False) as gw:
        for _ in range(STEPS):
            with gpuwatch.span("work", category="compute"):
                time.sleep((WORK_MS + (STRAGGLE_MS if straggler else 0.0)) / 1000)
            dist.all_reduce(t)
            gw.step()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
