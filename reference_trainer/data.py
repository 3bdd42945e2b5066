"""Procedurally generated images and short clips, stored encoded as JPEG frames, and the loader around them.

Two sources with different decode costs, both generated once into a data directory (no downloads):
- `stills`: 1536x1536 photograph-like images (smooth gradients, shapes, sensor noise), one JPEG each;
- `clips`: 8-frame 1080p clips (shapes moving over a panning background), one JPEG per frame.
Every frame is its own object in storage, so reading a batch costs one storage round trip per frame.

Samples are addressed by `SampleKey` (which source, which item, how many frames, at what size); the
`BucketBatchSampler` decides per step which source and shape the batch has (joint image-video training in
buckets of equal token count, or the progressive-resolution schedule) and which items each rank reads,
from (seed, step, rank) alone, so a resumed run reads exactly the batches it would have read.

Decode happens either in the Dataset (so DataLoader workers do it) or, returned still encoded, on the
training thread through `decode_batch` — the two sides of the `cpu_preprocessing` pathology.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

DATA_FORMAT_VERSION = 2


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One data source as stored: frame geometry and JPEG quality."""

    name: str
    height: int
    width: int
    frames: int
    """Frames stored per item (1 for stills)."""
    items: int
    quality: int = 90


SOURCES: dict[str, SourceSpec] = {
    "stills": SourceSpec("stills", 1536, 1536, 1, 48),
    "clips": SourceSpec("clips", 1080, 1920, 8, 16),
}


@dataclass(frozen=True, slots=True)
class SampleKey:
    """What the Dataset should produce for one sample of a batch."""

    source: str
    index: int
    frames: int
    size: int
    """Square output side in pixels."""
    seed: int
    """Seeds the frame offset and the augmentation, so the sample is the same wherever it is decoded."""


@dataclass(frozen=True, slots=True)
class EncodedSample:
    """A sample still encoded (JPEG bytes per frame), as returned when decode is left to the training loop."""

    frames: tuple[bytes, ...]
    size: int
    seed: int


# ---------------------------------------------------------------------------------------------- generation


def _still(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    # smooth colour field (computed at 1/8 size, upscaled), sensor noise, then flat shapes on top: about the
    # JPEG size and decode cost of a real photograph of the same size
    sh, sw = max(h // 8, 2), max(w // 8, 2)
    y, x = np.mgrid[0:sh, 0:sw].astype(np.float32)
    fx, fy, ph = rng.uniform(3, 10), rng.uniform(3, 10), rng.uniform(0, 6.28)
    small = np.stack([128 + 100 * np.sin(x / fx + ph + c) * np.cos(y / fy - c) for c in range(3)], axis=-1)
    field = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    noisy = np.asarray(field).astype(np.int16) + rng.integers(-5, 6, (h, w, 3), dtype=np.int16)
    im = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(6, 14))):
        cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(8, h // 4))
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.rectangle([cx - r, cy - r // 2, cx + r, cy + r // 2], fill=fill)
    return im


def _clip(rng: np.random.Generator, spec: SourceSpec) -> list[Image.Image]:
    h, w = spec.height, spec.width
    pad = 8 * spec.frames
    bg = np.asarray(_still(rng, h + pad, w + pad))
    shapes = [
        (
            rng.uniform(0, w),
            rng.uniform(0, h),
            rng.uniform(-12, 12),
            rng.uniform(-8, 8),
            int(rng.integers(10, 60)),
        )
        for _ in range(5)
    ]
    colors = [tuple(int(v) for v in rng.integers(0, 255, 3)) for _ in shapes]
    out = []
    for f in range(spec.frames):
        im = Image.fromarray(bg[4 * f : 4 * f + h, 8 * f : 8 * f + w].copy())  # the camera pans
        draw = ImageDraw.Draw(im)
        for (x0, y0, vx, vy, r), color in zip(shapes, colors):
            cx, cy = x0 + vx * f, y0 + vy * f
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
        out.append(im)
    return out


def _frame_path(root: Path, source: str, index: int, frame: int) -> Path:
    return root / source / f"{index:05d}" / f"frame-{frame:03d}.jpg"


def ensure_dataset(root: str | Path, seed: int = 0) -> Path:
    """Generate both sources under `root` unless a complete copy is already there; return the data folder.

    Safe to call from several processes at once: each generates into its own temporary folder and the
    first to rename it into place wins.
    """
    root = Path(root)
    final = root / f"v{DATA_FORMAT_VERSION}-seed{seed}"
    if (final / "complete.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(seed)
    for spec in SOURCES.values():
        for index in range(spec.items):
            frames = [_still(rng, spec.height, spec.width)] if spec.frames == 1 else _clip(rng, spec)
            for f, im in enumerate(frames):
                path = _frame_path(tmp, spec.name, index, f)
                path.parent.mkdir(parents=True, exist_ok=True)
                im.save(path, "JPEG", quality=spec.quality)
    (tmp / "complete.json").write_text(
        json.dumps(
            {"version": DATA_FORMAT_VERSION, "seed": seed, "sources": [s.name for s in SOURCES.values()]}
        )
    )
    try:
        os.rename(tmp, final)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def default_data_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpuwatch-reference-trainer"


# ---------------------------------------------------------------------------------------------- decode


def augment_params(seed: int) -> tuple[float, float, float, bool, float, float]:
    """One sample's augmentation, the same on every decode path: crop origin (x, y) and side as fractions,
    horizontal flip, contrast gain, brightness bias."""
    rng = np.random.default_rng(seed)
    crop = float(rng.uniform(0.8, 1.0))
    ox, oy = float(rng.uniform(0, 1 - crop)), float(rng.uniform(0, 1 - crop))
    flip = bool(rng.random() < 0.5)
    return ox, oy, crop, flip, float(rng.uniform(0.8, 1.2)), float(rng.uniform(-0.1, 0.1))


def decode_frames(
    frames: tuple[bytes, ...] | list[bytes], size: int, seed: int, reduced: bool
) -> torch.Tensor:
    """Decode JPEG frames and augment them into a (3, frames, size, size) float tensor in [-1, 1].

    reduced=False is the common naive pipeline: decode every frame at full size, crop, flip and colour-jitter
    at full size, then resize. reduced=True asks libjpeg for a DCT-scaled decode (`Image.draft`: 1/2, 1/4
    or 1/8 of the size, never below twice the output) and augments at that size: same statistics, a
    fraction of the work.
    """
    ox, oy, crop, flip, gain, bias = augment_params(seed)
    out = np.empty((len(frames), size, size, 3), dtype=np.float32)
    for i, blob in enumerate(frames):
        im = Image.open(io.BytesIO(blob))
        if reduced:
            im.draft("RGB", (2 * size, 2 * size))
        out[i] = augment(im.convert("RGB"), size, (ox, oy, crop), flip, gain, bias, reduced)
    return torch.from_numpy(out).permute(3, 0, 1, 2).contiguous()


def augment(
    im: Image.Image,
    size: int,
    crop_box: tuple[float, float, float],
    flip: bool,
    gain: float,
    bias: float,
    reduced: bool,
) -> np.ndarray:
    """Random crop (square, a fraction of the short side), flip, brightness/contrast jitter, resize; HWC in [-1, 1]."""
    w, h = im.size
    ox, oy, crop = crop_box
    side = int(min(w, h) * crop)
    left, top = int(ox * (w - side)), int(oy * (h - side))
    im = im.crop((left, top, left + side, top + side))
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if reduced:  # jitter after resizing: the same arithmetic on size*size pixels instead of side*side
        arr = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
        return np.clip(arr / 127.5 - 1.0, -1, 1) * gain + bias
    arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = np.clip((arr - arr.mean()) * gain + arr.mean() + bias / 2, 0.0, 1.0)
    small = Image.fromarray((arr * 255).astype(np.uint8)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float32) / 127.5 - 1.0


def decode_batch(batch: list[EncodedSample], reduced: bool = False) -> torch.Tensor:
    """Decode a batch of still-encoded samples (on the calling thread) into (B, 3, T, H, W)."""
    return torch.stack([decode_frames(s.frames, s.size, s.seed, reduced) for s in batch])


def gpu_decoder_name() -> str | None:
    """Which GPU JPEG decoder can run here ("nvimgcodec", "torchcodec" or "torchvision"), or None.

    None without CUDA or without any of those libraries: the trainer then decodes on the CPU.
    """
    if not torch.cuda.is_available():
        return None
    import importlib.util

    for name, module in (
        ("nvimgcodec", "nvidia.nvimgcodec"),
        ("torchcodec", "torchcodec.decoders"),
        ("torchvision", "torchvision.io"),
    ):
        try:
            if importlib.util.find_spec(module) is not None:
                return name
        except (ImportError, ValueError):
            continue
    return None


def decode_batch_gpu(batch: list[EncodedSample], device: torch.device, decoder: str) -> torch.Tensor:
    """Decode on the GPU (nvImageCodec, TorchCodec or torchvision's nvJPEG path), augment there: (B, 3, T, H, W).

    The host only hands over the compressed bytes; crop, flip, jitter and resize run as GPU kernels.
    """
    import torch.nn.functional as F

    blobs = [f for s in batch for f in s.frames]
    if decoder == "nvimgcodec":
        from nvidia import nvimgcodec

        images = nvimgcodec.Decoder(device_id=device.index or 0).decode(blobs)
        hwc = [torch.from_dlpack(img) for img in images]  # zero-copy, HWC uint8 on the device
    elif decoder == "torchcodec":
        from torchcodec.decoders import decode_jpeg

        hwc = [decode_jpeg(b, device=str(device)).permute(1, 2, 0) for b in blobs]
    else:
        import torchvision.io

        datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        hwc = [t.permute(1, 2, 0) for t in torchvision.io.decode_jpeg(datas, device=device)]
    out, i = [], 0
    for s in batch:
        ox, oy, crop, flip, gain, bias = augment_params(s.seed)
        frames = []
        for img in hwc[i : i + len(s.frames)]:
            h, w = img.shape[:2]
            side = int(min(w, h) * crop)
            top, left = int(oy * (h - side)), int(ox * (w - side))
            x = img[top : top + side, left : left + side].permute(2, 0, 1).float().unsqueeze(0)
            x = F.interpolate(x, size=(s.size, s.size), mode="bilinear", antialias=True)[0]
            if flip:
                x = x.flip(-1)
            frames.append(((x / 127.5 - 1.0).clamp(-1, 1)) * gain + bias)
        i += len(s.frames)
        out.append(torch.stack(frames, dim=1))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------- dataset


def fetch_object(path: Path, latency_s: float) -> bytes:
    """Read one stored object. The sleep models the time to first byte of remote storage (an object-store
    GET or a network filesystem open is milliseconds, not the microseconds of this machine's page cache);
    it is the one simulated cost in the data path — the read and every decode are real work."""
    if latency_s > 0:
        time.sleep(latency_s)
    return path.read_bytes()


class EncodedVideoDataset(torch.utils.data.Dataset):
    """Map-style dataset over `SampleKey`s: reads the frames, then decodes them or hands them back encoded.

    Args:
        root: the folder `ensure_dataset` returned.
        decode: decode in the Dataset (so in DataLoader workers when there are any); False returns
            `EncodedSample`s for the training loop to decode.
        reduced_decode: DCT-scaled decode at about twice the output size instead of full size.
        read_latency_ms: storage time to first byte per frame (see `fetch_object`).
    """

    def __init__(self, root: Path, decode: bool, reduced_decode: bool, read_latency_ms: float) -> None:
        self.root = Path(root)
        self.decode = decode
        self.reduced_decode = reduced_decode
        self.latency_s = read_latency_ms / 1000.0

    def __len__(self) -> int:
        return sum(s.items for s in SOURCES.values())

    def __getitem__(self, key: SampleKey) -> Any:
        spec = SOURCES[key.source]
        spare = spec.frames - key.frames
        start = int(np.random.default_rng(key.seed).integers(0, spare + 1)) if spare > 0 else 0
        frames = tuple(
            fetch_object(
                _frame_path(self.root, key.source, key.index, (start + f) % spec.frames), self.latency_s
            )
            for f in range(key.frames)
        )
        if not self.decode:
            return EncodedSample(frames, key.size, key.seed)
        return decode_frames(frames, key.size, key.seed, self.reduced_decode)


def collate(samples: list[Any]) -> Any:
    """Stack decoded samples; keep encoded ones as a list for the training loop to decode."""
    if isinstance(samples[0], torch.Tensor):
        return torch.stack(samples)
    return list(samples)


# ---------------------------------------------------------------------------------------------- schedule


@dataclass(frozen=True, slots=True)
class BatchShape:
    source: str
    frames: int
    size: int
    batch: int
    stage: str | None = None
    """The training stage of the progressive schedule ("images_32", "video_64"); None in joint training."""


SOURCE_MIXES = ("buckets", "independent", "balanced")
"""How joint image-video training picks each rank's source per step (`batch_shape`)."""


def batch_shape(
    step: int,
    steps: int,
    image_size: int,
    image_batch: int,
    clip_frames: int,
    progressive: bool,
    seed: int,
    source_mix: str = "buckets",
    rank: int = 0,
) -> BatchShape:
    """The source and shape of rank `rank`'s batch at `step`.

    Progressive (images first, then low-, medium-, high-resolution video, a quarter of the steps each):
    `image_batch` stills at `image_size`, then clips at half, full and double `image_size`, each stage's clips
    twice as long as the stage before (`clip_frames` at `image_size`: 2, 4 and 8 frames by default), as
    progressive video schedules go from short low-resolution clips to long high-resolution ones, with
    `image_batch // (4 * clip_frames)` clips (at least one) per batch: each video stage reads and decodes
    twice the frames of the one before and trains on 8x the tokens. The stage is named ("images_32",
    "video_16", "video_32", "video_64").
    Otherwise joint image-video training at `image_size`, by `source_mix`:
    - "buckets": one source per step for every rank, chosen by (seed, step), in buckets of equal token count
      (`image_batch` stills or `image_batch // clip_frames` clips);
    - "independent": each rank draws its own source per step, by (seed, step, rank), and a batch holds
      `image_batch // clip_frames` samples of it (a plain mixture of the two data sets): a clip batch costs
      `clip_frames` times a stills batch to read, decode and train on, so a rank that drew clips makes the
      others wait at the next collective;
    - "balanced": the same batches, but every rank draws the same source each step (a data pendulum), so
      every step costs the same on every rank: the same expected work as "independent", without the waiting.
    """
    if progressive:
        stage = min(3, 4 * step // max(steps, 1))
        if stage == 0:
            return BatchShape("stills", 1, image_size, image_batch, f"images_{image_size}")
        size = {1: image_size // 2, 2: image_size, 3: image_size * 2}[stage]
        frames = max(1, clip_frames * size // image_size)
        return BatchShape("clips", frames, size, max(1, image_batch // (4 * clip_frames)), f"video_{size}")
    if source_mix not in SOURCE_MIXES:
        raise ValueError(f"source mix {source_mix!r}: choose one of {', '.join(SOURCE_MIXES)}")
    per_rank = source_mix == "independent"
    draw = np.random.default_rng([seed, step, 7] + ([1000 + rank] if per_rank else [])).random()
    mixture = max(1, image_batch // clip_frames)
    if draw < 0.5:
        return BatchShape("stills", 1, image_size, image_batch if source_mix == "buckets" else mixture)
    return BatchShape("clips", clip_frames, image_size, mixture)


class BucketBatchSampler(torch.utils.data.Sampler):
    """Yields one list of `SampleKey`s per step for this rank, from `start_step` to `steps`.

    Items are drawn per (seed, step) for the whole world and split by rank, so ranks never read the same
    item in a step and a resumed run sees exactly the batches of an uninterrupted one.
    """

    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        steps: int,
        start_step: int = 0,
        image_size: int = 32,
        image_batch: int = 16,
        clip_frames: int = 4,
        progressive: bool = False,
        seed: int = 0,
        source_mix: str = "buckets",
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.steps, self.start_step = steps, start_step
        self.image_size, self.image_batch, self.clip_frames = image_size, image_batch, clip_frames
        self.progressive, self.seed, self.source_mix = progressive, seed, source_mix

    def shape(self, step: int) -> BatchShape:
        """This rank's batch at `step` (see `batch_shape`)."""
        return batch_shape(
            step,
            self.steps,
            self.image_size,
            self.image_batch,
            self.clip_frames,
            self.progressive,
            self.seed,
            self.source_mix,
            self.rank,
        )

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for step in range(self.start_step, self.steps):
            shape = self.shape(step)
            # items of each source are drawn for the whole world, so ranks never read the same item in a step
            extra = [] if shape.source == "stills" or self.source_mix == "buckets" else [1]
            rng = np.random.default_rng([self.seed, step, *extra])
            items = rng.integers(0, SOURCES[shape.source].items, shape.batch * self.world_size)
            seeds = rng.integers(0, 2**31, shape.batch * self.world_size)
            mine = slice(self.rank * shape.batch, (self.rank + 1) * shape.batch)
            yield [
                SampleKey(shape.source, int(i), shape.frames, shape.size, int(s))
                for i, s in zip(items[mine], seeds[mine])
            ]
