"""GPU paths of the reference trainer (skipped without CUDA): bf16 training on the device, GPU JPEG decode."""

from __future__ import annotations

import pytest
import torch
from conftest import summary_json
from reference_trainer_support import run_trainer, shared_data_root

from reference_trainer.data import (
    EncodedSample,
    decode_batch,
    decode_batch_gpu,
    ensure_dataset,
    gpu_decoder_name,
)

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_gpu_decode_matches_the_cpu_decode() -> None:
    decoder = gpu_decoder_name()
    if decoder is None:
        pytest.skip("no GPU JPEG decoder installed (nvImageCodec, TorchCodec or torchvision)")
    root = ensure_dataset(shared_data_root())
    frames = tuple((root / "clips" / "00001" / f"frame-{i:03d}.jpg").read_bytes() for i in range(4))
    batch = [EncodedSample(frames, 32, seed=11)]
    on_gpu = decode_batch_gpu(batch, torch.device("cuda"), decoder).cpu()
    on_cpu = decode_batch(batch, reduced=False)
    assert on_gpu.shape == on_cpu.shape == (1, 3, 4, 32, 32)
    assert float((on_gpu - on_cpu).abs().mean()) < 0.12  # same crop/flip/jitter, different resamplers


@needs_cuda
def test_fixed_preset_trains_on_the_gpu_under_gpuwatch(tmp_path) -> None:
    run_dir = tmp_path / "gpu-fixed"
    run_trainer(
        ["--preset", "fixed", "--device", "cuda", "--nproc", "1", "--steps", "6", "--checkpoint-every", "3",
         "--data-dir", str(shared_data_root()), "--run-dir", str(run_dir)]
    )  # fmt: skip
    doc = summary_json(run_dir)
    assert doc["ranks"][0]["mode"] == "device"  # compute measured on the device
    assert doc["ranks"][0]["steps"] == 6
