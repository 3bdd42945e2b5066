"""Two gloo ranks (under torchrun) exercising every hooked distributed API inside `gpuwatch.watch`.

    torchrun --standalone --nproc-per-node 2 tests/dist_api_program.py RUN_DIR OUT_DIR

Step 0: every group collective once (tensor and object ones), an async all_reduce, a subgroup collective.
Steps 1-3: a DDP model; rank 1 sleeps before its backward, so rank 0 waits in DDP's reducer.
Step 4: torch.distributed.checkpoint save, async_save (on its own gloo group) + wait, load; torch.save/load.
Writes OUT_DIR/calls.rank{R}.json: the collectives it called, in order, with the bytes of their tensors.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.nn.parallel import DistributedDataParallel

import gpuwatch


def main() -> None:
    run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    sub = dist.new_group([0, 1])
    ckpt_group = dist.new_group(backend="gloo")
    calls: list[dict] = []

    def called(name: str, nbytes: int | None, group: str = "0") -> None:
        calls.append({"collective": name, "bytes": nbytes, "group": group})

    with gpuwatch.watch(run_dir) as gw:
        t = torch.arange(8, dtype=torch.float32) + rank
        dist.all_reduce(t)
        called("all_reduce", 32)
        outs = [torch.empty(8) for _ in range(world)]
        dist.all_gather(outs, t)
        called("all_gather", 64)
        dist.all_gather_into_tensor(torch.empty(8 * world), t)
        called("all_gather_into_tensor", 64)
        dist.reduce_scatter(torch.empty(8), [t.clone() for _ in range(world)])
        called("reduce_scatter", 32)
        dist.reduce_scatter_tensor(torch.empty(4), t)
        called("reduce_scatter_tensor", 16)
        dist.broadcast(t, src=0)
        called("broadcast", 32)
        dist.reduce(t, dst=0)
        called("reduce", 32)
        dist.gather(t, [torch.empty(8) for _ in range(world)] if rank == 0 else None, dst=0)
        called("gather", 32)
        dist.scatter(torch.empty(8), [t.clone() for _ in range(world)] if rank == 0 else None, src=0)
        called("scatter", 32)
        dist.all_to_all_single(torch.empty(8), t)
        called("all_to_all_single", 32)
        dist.barrier()
        called("barrier", None)
        objs: list = [None] * world
        # tensors inside objects are pickled through torch.save/torch.load: part of the collective
        dist.all_gather_object(objs, {"rank": rank, "grad": torch.ones(4) * rank})
        called("all_gather_object", None)
        dist.gather_object({"rank": rank, "grad": torch.ones(4)}, objs if rank == 0 else None, dst=0)
        called("gather_object", None)
        box = [{"from": 0}] if rank == 0 else [None]
        dist.broadcast_object_list(box, src=0)
        called("broadcast_object_list", None)
        got: list = [None]
        dist.scatter_object_list(got, [{"to": r} for r in range(world)] if rank == 0 else None, src=0)
        called("scatter_object_list", None)
        work = dist.all_reduce(t, async_op=True)
        called("all_reduce", 32)
        work.wait()
        dist.all_reduce(t, group=sub)
        called("all_reduce", 32, group=str(sub.group_name))
        gw.step()

        model = DistributedDataParallel(
            torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 4))
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            loss = model(torch.randn(32, 256)).square().mean()
            if rank == 1:
                time.sleep(0.08)  # the late rank: rank 0 waits for it inside DDP's reducer
            loss.backward()
            opt.step()
            opt.zero_grad()
            gw.step()

        state = {"model": model.module.state_dict()}
        dcp.save(state, checkpoint_id=str(out_dir / "dcp-sync"))
        future = dcp.async_save(state, checkpoint_id=str(out_dir / "dcp-async"), process_group=ckpt_group)
        future.result()
        dcp.load(state, checkpoint_id=str(out_dir / "dcp-sync"))
        path = out_dir / f"plain-rank{rank}.pt"
        torch.save(state, path)
        torch.load(path)
        gw.step()

    (out_dir / f"calls.rank{rank}.json").write_text(json.dumps(calls))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
