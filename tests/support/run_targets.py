"""Small real programs for the `gpuwatch run` tests, none of them aware of gpuwatch.

    python run_targets.py CASE [--steps N] [--out DIR]

Cases:
  train         a DataLoader + MLP + SGD loop of N steps (prints `step I` after each; --exit-code C ends it so)
  crash         the same loop, raising RuntimeError after N steps
  spawn_ranks   torch.multiprocessing.spawn of 2 gloo ranks, each training N steps with DDP; the parent only
                waits (it must not be watched)
  fork_ranks    the same 2 ranks as forked multiprocessing.Process children of a parent that imported torch
  spawn_workers the loop with DataLoader(num_workers=1, multiprocessing_context="spawn")
  helper        imports torch and does tensor math, never trains (must not be watched)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset


class Squares(Dataset):
    def __len__(self) -> int:
        return 100_000

    def __getitem__(self, i: int):
        time.sleep(0.001)  # a storage read
        x = torch.full((32,), float(i % 7))
        return x, i % 3


def train(steps: int, *, workers: int = 0, context: str | None = None, ddp: bool = False) -> None:
    torch.manual_seed(0)
    model: torch.nn.Module = torch.nn.Sequential(
        torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 3)
    )
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(Squares(), batch_size=16, num_workers=workers, multiprocessing_context=context)
    for step, (x, y) in enumerate(loader):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}", flush=True)
        if step + 1 >= steps:
            break


def _rank(rank: int, world: int, port: str, steps: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train(steps, ddp=True)
    finally:
        dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=["train", "crash", "spawn_ranks", "fork_ranks", "spawn_workers", "helper"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--exit-code", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.case == "train":
        train(args.steps)
        return args.exit_code
    if args.case == "crash":
        train(args.steps)
        raise RuntimeError("planted crash after training")
    if args.case == "spawn_workers":
        train(args.steps, workers=1, context="spawn")
        return 0
    if args.case in ("spawn_ranks", "fork_ranks"):
        import multiprocessing
        import socket

        import torch.multiprocessing as mp

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        if args.case == "spawn_ranks":
            mp.spawn(_rank, args=(2, port, args.steps), nprocs=2, join=True)
            return 0
        ranks = [
            multiprocessing.get_context("fork").Process(target=_rank, args=(r, 2, port, args.steps))
            for r in range(2)
        ]
        for proc in ranks:
            proc.start()
        for proc in ranks:
            proc.join()
        return max(proc.exitcode or 0 for proc in ranks)
    a = torch.randn(64, 64)
    print(float((a @ a).sum()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
