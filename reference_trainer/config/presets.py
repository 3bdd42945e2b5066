"""Every pathology and its fix is a switch of its own; the presets `naive` and `fixed` set them all.

| cause | switches | naive | fixed |
| --- | --- | --- | --- |
| data loading | num_workers, prefetch_factor, persistent_workers, pin_memory | 0, none, no, no | 3, 4, yes, yes (pinning only matters on GPU) |
| CPU preprocessing | decode_in_workers, reduced_decode, gpu_decode | full-size decode + augmentation on the training thread | decode in the Dataset (workers), DCT-scaled decode; on GPU with nvImageCodec/torchvision, GPU decode |
| manager node | grad_sync | "manager": rank 0 gathers, averages, steps, broadcasts | "ddp": bucketed all-reduce overlapped with backward ("fsdp2" is the other option) |
| checkpointing | checkpoint | "sync": torch.save of the full state on rank 0 | "async": DCP async_save on its own gloo group, waited on before the next optimizer step |

`--fix NAME` applies one group of switches on top of a preset; `FIXES` names the groups.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class TrainConfig:
    # --- the workload
    steps: int = 40
    image_size: int = 32
    """Training resolution in pixels (square); clips in the progressive schedule go to half and double."""
    batch_size: int = 16
    """Images per batch; clip batches hold the same number of frames (batch_size // clip_frames clips)."""
    clip_frames: int = 4
    progressive: bool = False
    """Progressive-resolution schedule: images first, then low-, medium- and high-resolution video."""
    source_mix: str = "buckets"
    """Joint training's source per rank and step (data.batch_shape): "buckets" (one source per step, equal
    tokens), "independent" (each rank draws its own: ranks straggle) or "balanced" (the same batches, every
    rank the same source each step)."""
    width: int = 192
    depth: int = 4
    heads: int = 6
    patch: int = 4
    lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when present), "cpu" or "cuda"."""
    dist_backend: str = "auto"
    """Process-group backend: "auto" (NCCL on CUDA, gloo on CPU), "nccl" or "gloo". gloo lets several ranks
    share one GPU, which NCCL refuses (ranks then take device `local_rank % device_count`)."""
    cpu_threads: int = 1
    """Threads for the trainer's own math on CPU: one, so DataLoader workers and other ranks have cores."""
    # --- storage: a property of where the data lives, the same in every preset
    read_latency_ms: float = 15.0
    """Time to first byte per stored frame (remote storage); see data.fetch_object."""
    checkpoint_write_mb_s: float = 125.0
    """Write throughput of the checkpoint store (a cloud volume's baseline); 0 = as fast as the local disk."""
    # --- data loading
    num_workers: int = 0
    prefetch_factor: int | None = None
    persistent_workers: bool = False
    pin_memory: bool = False
    """Pinned host batches and non_blocking copies (only when training on a GPU)."""
    # --- CPU preprocessing
    decode_in_workers: bool = False
    """Decode and augment in the Dataset (DataLoader workers), not on the training thread."""
    reduced_decode: bool = False
    """DCT-scaled JPEG decode near the training size instead of full size."""
    gpu_decode: bool = False
    """Decode on the GPU (nvImageCodec or torchvision on CUDA) when training on a GPU and one is installed."""
    # --- gradient synchronization
    grad_sync: str = "manager"
    """"manager", "ddp" or "fsdp2" (see distributed.py)."""
    ddp_bucket_mb: float = 2.0
    """DDP bucket size: small enough that a ~3 M-parameter model gets several buckets to overlap."""
    # --- checkpointing
    checkpoint: str = "sync"
    """"sync" (torch.save on rank 0), "async" (DCP async_save) or "off"."""
    checkpoint_every: int = 4
    """Steps between checkpoints."""
    checkpoint_dir: str | None = None
    """Default: RUN_DIR/trainer/checkpoints."""
    resume: str | None = None
    """A checkpoint to start from (a .pt file or a DCP folder)."""
    # --- reporting
    log_every: int = 10
    peak_tflops: float | None = None
    """Peak used for mfu(%); default: a table of GPU bf16 dense peaks, on CPU the measured GEMM rate."""


CHOICES: dict[str, tuple[str, ...]] = {
    "grad_sync": ("manager", "ddp", "fsdp2"),
    "checkpoint": ("sync", "async", "off"),
    "device": ("auto", "cpu", "cuda"),
    "source_mix": ("buckets", "independent", "balanced"),
    "dist_backend": ("auto", "nccl", "gloo"),
}

NAIVE: dict[str, Any] = {
    "num_workers": 0,
    "prefetch_factor": None,
    "persistent_workers": False,
    "pin_memory": False,
    "decode_in_workers": False,
    "reduced_decode": False,
    "gpu_decode": False,
    "grad_sync": "manager",
    "checkpoint": "sync",
}

FIXES: dict[str, dict[str, Any]] = {
    "data": {"num_workers": 3, "prefetch_factor": 4, "persistent_workers": True, "pin_memory": True},
    "decode": {"decode_in_workers": True, "reduced_decode": True, "gpu_decode": True},
    "sync": {"grad_sync": "ddp"},
    "checkpoint": {"checkpoint": "async"},
}
"""One group of switches per cause; the recommendations name them (`reference_trainer --fix data`)."""

FIXED: dict[str, Any] = {k: v for group in FIXES.values() for k, v in group.items()}

PRESETS: dict[str, dict[str, Any]] = {"naive": NAIVE, "fixed": FIXED}

assert set(FIXED) == set(NAIVE), "every naive switch has its fix"


def build_config(
    preset: str = "naive", fixes: list[str] | tuple[str, ...] = (), **overrides: Any
) -> TrainConfig:
    """A preset, then each named fix group, then explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[preset])
    for name in fixes:
        if name not in FIXES:
            raise ValueError(f"unknown fix {name!r}; choose from {', '.join(FIXES)}")
        values.update(FIXES[name])
    names = {f.name for f in fields(TrainConfig)}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = value
    cfg = replace(TrainConfig(), **values)
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(
                f"--{name.replace('_', '-')} {getattr(cfg, name)!r}: choose one of {', '.join(allowed)}"
            )
    for name in ("steps", "batch_size", "image_size", "clip_frames", "cpu_threads", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.image_size % (2 * cfg.patch):
        raise ValueError(
            f"--image-size {cfg.image_size} must be a multiple of twice the patch ({2 * cfg.patch})"
        )
    return cfg
