"""The reference trainer's data: real JPEGs on disk, full vs reduced decode, deterministic sharded batches,
real DataLoader workers producing exactly what the training thread would."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reference_trainer_support import shared_data_root

from reference_trainer.data import (
    SOURCES,
    BucketBatchSampler,
    EncodedSample,
    EncodedVideoDataset,
    collate,
    decode_batch,
    decode_frames,
    ensure_dataset,
)


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return ensure_dataset(shared_data_root())


def test_sources_are_real_jpegs_of_their_size(data_dir: Path) -> None:
    for spec in SOURCES.values():
        frames = sorted((data_dir / spec.name / "00003").glob("*.jpg"))
        assert len(frames) == spec.frames
        with Image.open(frames[-1]) as im:
            assert im.format == "JPEG" and im.size == (spec.width, spec.height)
    assert ensure_dataset(data_dir.parent) == data_dir  # a second call reuses the complete copy


def test_reduced_decode_is_the_same_picture_for_less_work(data_dir: Path) -> None:
    blob = (data_dir / "stills" / "00000" / "frame-000.jpg").read_bytes()
    full = decode_frames([blob], 32, seed=5, reduced=False)
    small = decode_frames([blob], 32, seed=5, reduced=True)
    assert full.shape == small.shape == (3, 1, 32, 32)
    assert float(full.min()) >= -1.5 and float(full.max()) <= 1.5
    # same crop, flip and jitter: the two decodes agree up to resampling and rounding
    assert float((full - small).abs().mean()) < 0.12
    # the reduced path really decodes fewer pixels: libjpeg's DCT scaling (Image.draft)
    im = Image.open(io.BytesIO(blob))
    im.draft("RGB", (64, 64))
    assert im.size[0] < SOURCES["stills"].width // 4


def test_batches_are_deterministic_and_disjoint_across_ranks() -> None:
    r0 = list(BucketBatchSampler(rank=0, world_size=2, steps=12))
    r1 = list(BucketBatchSampler(rank=1, world_size=2, steps=12))
    assert r0 == list(BucketBatchSampler(rank=0, world_size=2, steps=12))
    assert list(BucketBatchSampler(rank=0, world_size=2, steps=12, start_step=5)) == r0[5:]  # resume
    sources = {b[0].source for b in r0}
    assert sources == {"stills", "clips"}  # joint image-video training in buckets
    for a, b in zip(r0, r1):
        assert a[0].source == b[0].source and len(a) == len(b)  # ranks step in lockstep shapes
        assert {k.seed for k in a}.isdisjoint({k.seed for k in b})
        frames = sum(k.frames for k in a)
        assert frames == 16  # equal patch tokens per step: 16 images or 4 clips of 4 frames


def test_progressive_schedule_goes_images_then_low_medium_high_video() -> None:
    s = BucketBatchSampler(rank=0, world_size=1, steps=8, progressive=True)
    shapes = [s.shape(i) for i in range(8)]
    assert [(x.source, x.frames, x.size) for x in shapes[::2]] == [
        ("stills", 1, 32),
        ("clips", 2, 16),
        ("clips", 4, 32),
        ("clips", 8, 64),
    ]
    assert [x.batch for x in shapes[::2]] == [16, 1, 1, 1]
    assert [x.stage for x in shapes[::2]] == ["images_32", "video_16", "video_32", "video_64"]


def test_workers_produce_what_the_training_thread_would(data_dir: Path) -> None:
    sampler = BucketBatchSampler(rank=1, world_size=2, steps=2, seed=3)
    in_workers = torch.utils.data.DataLoader(
        EncodedVideoDataset(data_dir, decode=True, reduced_decode=False, read_latency_ms=1),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=2,
        prefetch_factor=2,
    )
    encoded = torch.utils.data.DataLoader(
        EncodedVideoDataset(data_dir, decode=False, reduced_decode=False, read_latency_ms=0),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=0,
    )
    n = 0
    for a, b in zip(in_workers, encoded, strict=True):
        assert isinstance(b, list) and isinstance(b[0], EncodedSample)
        assert torch.equal(a, decode_batch(b, reduced=False))
        assert a.shape[2] in (1, 4)
        n += 1
    assert n == 2
    assert np.isfinite(a.numpy()).all()
