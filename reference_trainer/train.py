"""The training loop of one rank, inside `gpuwatch.watch(run_dir)` exactly as a user would write it.

Per step: get the batch (DataLoader; decode on the training thread when the preset leaves it there; copy
to the device), rectified-flow loss, backward, wait for a pending async checkpoint, agree on gradients and
step (manager node, DDP or FSDP2), checkpoint when due, log torchtitan metrics, `gw.step()`.
The data order and the noise of every step are functions of (seed, step, rank), so a run resumed from a
checkpoint computes exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import gpuwatch
from reference_trainer.checkpoint import Checkpointer, checkpoint_step, load_checkpoint
from reference_trainer.config.presets import TrainConfig
from reference_trainer.data import (
    BucketBatchSampler,
    EncodedVideoDataset,
    collate,
    decode_batch,
    decode_batch_gpu,
    default_data_root,
    ensure_dataset,
    gpu_decoder_name,
)
from reference_trainer.distributed import DistInfo, GradSync, init_distributed
from reference_trainer.metrics import MetricsLogger, peak_flops
from reference_trainer.model import (
    ModelConfig,
    VideoDiT,
    flops_per_sample,
    param_count,
    rectified_flow_loss,
    tokens_per_sample,
)


class _NoWatch:
    """Stands in for gpuwatch's handle when a run is made without gpuwatch (for comparisons)."""

    def step(self, stage: str | None = None, tags: dict[str, str] | None = None) -> None:
        pass


def _log(info: DistInfo, msg: str) -> None:
    if info.rank == 0:
        print(f"[trainer] {msg}", file=sys.stderr, flush=True)


def make_loader(
    cfg: TrainConfig, info: DistInfo, data_dir: Path, start_step: int, decode_in_dataset: bool
) -> torch.utils.data.DataLoader:
    """The DataLoader with the preset's data-loading switches."""
    dataset = EncodedVideoDataset(
        data_dir,
        decode=decode_in_dataset,
        reduced_decode=cfg.reduced_decode,
        read_latency_ms=cfg.read_latency_ms,
    )
    sampler = BucketBatchSampler(
        rank=info.rank,
        world_size=info.world_size,
        steps=cfg.steps,
        start_step=start_step,
        image_size=cfg.image_size,
        image_batch=cfg.batch_size,
        clip_frames=cfg.clip_frames,
        progressive=cfg.progressive,
        seed=cfg.seed,
        source_mix=cfg.source_mix,
    )
    kwargs: dict[str, Any] = {
        "batch_sampler": sampler,
        "collate_fn": collate,
        "num_workers": cfg.num_workers,
        "pin_memory": cfg.pin_memory and info.device.type == "cuda",
    }
    if cfg.num_workers > 0:
        kwargs["prefetch_factor"] = cfg.prefetch_factor
        kwargs["persistent_workers"] = cfg.persistent_workers
    return torch.utils.data.DataLoader(dataset, **kwargs)


def step_noise(cfg: TrainConfig, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of this step's noise and timesteps: a function of (seed, step, rank) only."""
    gen = torch.Generator(device=device)
    gen.manual_seed((cfg.seed * 1_000_003 + step) * 1009 + rank)
    return gen


def train(
    cfg: TrainConfig, run_dir: str | Path, *, data_root: str | Path | None = None, watch: bool = True
) -> dict[str, float]:
    """Train one rank for `cfg.steps` steps; returns the whole-run metrics of this rank."""
    run_dir = Path(run_dir)
    # torch suggests at most one DataLoader worker per core; ours mostly wait on storage, so more is the fix
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    info = init_distributed(cfg.device, cfg.dist_backend)
    if info.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)  # the trainer's math on few threads: workers need cores
    try:
        return _train(cfg, run_dir, info, Path(data_root) if data_root else default_data_root(), watch)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, run_dir: Path, info: DistInfo, data_root: Path, watch: bool) -> dict[str, float]:
    if info.rank == 0:
        ensure_dataset(data_root, cfg.seed)
    dist.barrier()
    data_dir = ensure_dataset(data_root, cfg.seed)

    # The input pipeline starts first: with workers, they fetch and decode the first batches while the
    # model, optimizer and process groups are built (resuming, the sampler starts at the checkpoint's step).
    start = checkpoint_step(cfg.resume) if cfg.resume else 0
    gpu_decoder = gpu_decoder_name() if (cfg.gpu_decode and info.device.type == "cuda") else None
    decode_in_dataset = cfg.decode_in_workers and gpu_decoder is None
    loader = make_loader(cfg, info, data_dir, start, decode_in_dataset)
    batches = iter(loader)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    mcfg = ModelConfig(width=cfg.width, depth=cfg.depth, heads=cfg.heads, patch=cfg.patch)
    model = VideoDiT(mcfg).to(info.device)
    sync = GradSync(
        cfg.grad_sync, model, lambda params: torch.optim.AdamW(params, lr=cfg.lr), info, cfg.ddp_bucket_mb
    )
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else run_dir / "trainer" / "checkpoints"
    ckpt = Checkpointer(cfg.checkpoint, cfg.checkpoint_every, ckpt_dir, info, sync, cfg.checkpoint_write_mb_s)
    if cfg.resume and load_checkpoint(cfg.resume, sync, info) != start:
        raise RuntimeError(f"checkpoint {cfg.resume} does not hold the step its name says")
    peak = peak_flops(info.device, cfg.cpu_threads, cfg.peak_tflops)
    metrics = MetricsLogger(
        info.rank, run_dir / "trainer" / f"metrics-rank{info.rank}.jsonl", peak, cfg.log_every
    )
    _log(
        info,
        f"world {info.world_size} ({info.backend}), {param_count(model) / 1e6:.2f} M "
        f"params, grad sync {cfg.grad_sync}, checkpoint {cfg.checkpoint} every {cfg.checkpoint_every}, "
        f"workers {cfg.num_workers}, decode {'gpu:' + gpu_decoder if gpu_decoder else 'workers' if decode_in_dataset else 'training thread'}"
        f"{' reduced' if cfg.reduced_decode else ' full-size'}; mfu peak: {peak.source}",
    )
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if info.device.type == "cuda"
        else contextlib.nullcontext()
    )
    non_blocking = cfg.pin_memory and info.device.type == "cuda"
    sampler: BucketBatchSampler = loader.batch_sampler  # type: ignore[assignment]
    loss_value: float | None = None

    with gpuwatch.watch(run_dir) if watch else contextlib.nullcontext(_NoWatch()) as gw:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            batch = next(batches)
            if isinstance(batch, list):  # still encoded: decode here, on the training thread (or GPU)
                if gpu_decoder:
                    x = decode_batch_gpu(batch, info.device, gpu_decoder)
                else:
                    x = decode_batch(batch, reduced=cfg.reduced_decode)
            else:
                x = batch
            x = x.to(info.device, non_blocking=non_blocking)
            data_s = time.perf_counter() - t0

            with amp:
                loss = rectified_flow_loss(sync.module, x, step_noise(cfg, step, info.rank, info.device))
            loss.backward()
            ckpt_s = ckpt.wait_before_optimizer_step()
            sync.step()
            ckpt_s += ckpt.maybe_save(step + 1)

            log_now = info.device.type == "cpu" or (step + 1) % cfg.log_every == 0
            loss_value = float(loss.detach()) if log_now else None  # no per-step device sync on GPU
            shape = sampler.shape(step)
            tokens = x.shape[0] * tokens_per_sample(mcfg, x.shape[2], x.shape[3], x.shape[4])
            flops = x.shape[0] * flops_per_sample(mcfg, shape.frames, shape.size, shape.size)
            metrics.step(
                step,
                step_s=time.perf_counter() - t0,
                data_s=data_s,
                checkpoint_s=ckpt_s,
                tokens=int(tokens),
                flops=flops,
                loss=loss_value,
            )
            gw.step(stage=shape.stage, tags={"source": shape.source})
        ckpt_close_s = ckpt.close()
        del batches  # shuts down the workers
    result = metrics.close(loss_value)
    result["checkpoint_close_s"] = ckpt_close_s
    if info.rank == 0:
        _log(info, "done: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result
