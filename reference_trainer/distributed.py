"""Process groups and the three ways ranks agree on the next parameters.

- `manager`: the naive pattern, a hand-rolled parameter server. After backward, every rank sends its
  gradients to rank 0 (`gather_object` of a dict of tensors, pickled; nothing overlapped with backward),
  rank 0 averages them, runs the optimizer, and broadcasts the parameters back (`broadcast_object_list`).
  The other ranks wait for all of it.
- `ddp`: `DistributedDataParallel` — gradients all-reduced in buckets while backward is still running,
  every rank steps its own optimizer on the averaged gradients.
- `fsdp2`: `fully_shard` on every block and the root — parameters, gradients and optimizer state sharded,
  all-gather before use and reduce-scatter after backward (an option; the presets use DDP).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

SYNC_MODES = ("manager", "ddp", "fsdp2")


@dataclass(frozen=True, slots=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (RANK/WORLD_SIZE/MASTER_*), or form a group of one.

    `device` is "auto", "cpu" or "cuda"; `backend` "auto" (NCCL on CUDA, gloo on CPU), "nccl" or "gloo".
    On CUDA each rank takes device `local_rank % device_count`: with gloo, several ranks can share one GPU.
    """
    if "RANK" not in os.environ:  # plain `python -m reference_trainer` without --nproc: a world of one
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        index = local_rank % max(torch.cuda.device_count(), 1)
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=dev if backend == "nccl" else None)
    return DistInfo(rank, world, local_rank, dev, backend)


class GradSync:
    """How the ranks turn their local gradients into the next parameters (see the module docstring)."""

    def __init__(
        self, mode: str, model: nn.Module, make_optimizer: Any, info: DistInfo, bucket_mb: float = 25.0
    ) -> None:
        if mode not in SYNC_MODES:
            raise ValueError(f"unknown grad sync {mode!r}; choose one of {', '.join(SYNC_MODES)}")
        self.mode, self.info = mode, info
        self.raw = model
        if mode == "ddp":
            self.module: nn.Module = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[info.device.index] if info.device.type == "cuda" else None,
                bucket_cap_mb=bucket_mb,
                gradient_as_bucket_view=True,
            )
        elif mode == "fsdp2":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(info.device.type, (info.world_size,))
            for block in getattr(model, "blocks", []):
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            self.module = model
        else:
            self.module = model
        # Under the manager pattern only rank 0 owns optimizer state; the others never step.
        self.optimizer: torch.optim.Optimizer | None = (
            make_optimizer(model.parameters()) if mode != "manager" or info.rank == 0 else None
        )

    def step(self) -> None:
        """Finish the step after backward: agree on gradients, update the parameters, clear gradients."""
        if self.mode == "manager" and self.info.world_size > 1:
            self._manager_step()
            return
        assert self.optimizer is not None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _manager_step(self) -> None:
        rank, world = self.info.rank, self.info.world_size
        named = [(n, p) for n, p in self.raw.named_parameters() if p.requires_grad]
        # The hand-rolled parameter server: object collectives (pickled dicts; nothing to preallocate),
        # after backward, so nothing overlaps with compute and every other rank waits on rank 0 throughout.
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu() for n, p in named}
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(grads, gathered, dst=0)
        if rank == 0:
            assert gathered is not None and self.optimizer is not None
            for n, p in named:
                p.grad = torch.stack([g[n] for g in gathered]).mean(dim=0).to(p.device)
            self.optimizer.step()
        params = [{n: p.detach().cpu() for n, p in named} if rank == 0 else None]
        dist.broadcast_object_list(params, src=0)
        with torch.no_grad():
            for n, p in named:
                if rank != 0:
                    p.copy_(params[0][n])  # type: ignore[index]
                p.grad = None
