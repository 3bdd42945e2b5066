"""The reference trainer's video DiT: sizes, adaLN-Zero start, the rectified-flow objective, its FLOP count."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from reference_trainer.model import ModelConfig, VideoDiT, flops_per_sample, param_count, rectified_flow_loss


@pytest.fixture(autouse=True)
def one_thread():
    """The trainer's own setting on CPU; two OpenMP threads on a busy 2-core machine spin 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cpu_default_size_and_shapes() -> None:
    torch.manual_seed(0)
    model = VideoDiT()
    assert 2.5e6 < param_count(model) < 4.5e6
    for shape in [(2, 3, 1, 32, 32), (2, 3, 4, 16, 16), (1, 3, 4, 64, 64)]:  # images and clips, any grid
        out = model(torch.randn(*shape), torch.rand(shape[0]))
        assert out.shape == shape


def test_adaln_zero_starts_as_zero_velocity_then_learns() -> None:
    torch.manual_seed(0)
    model = VideoDiT(ModelConfig(width=64, depth=2, heads=2))
    x0 = torch.rand(4, 3, 1, 16, 16) * 2 - 1
    gen = torch.Generator().manual_seed(1)
    # zero-initialised modulation and output: the model predicts 0, so the loss is E[(noise - x0)^2]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    loss0 = rectified_flow_loss(model, x0, gen)
    assert torch.allclose(loss0, ((noise - x0) ** 2).mean(), rtol=1e-5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):  # one fixed batch: the objective must go down
        loss = rectified_flow_loss(model, x0, torch.Generator().manual_seed(step % 4))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8


def test_flop_formula_matches_torch_flop_counter() -> None:
    cfg = ModelConfig()
    model = VideoDiT(cfg)
    for frames, size, batch in [(1, 32, 4), (4, 32, 1)]:
        x = torch.randn(batch, 3, frames, size, size)
        # the math backend: attention as plain matmuls, which the counter sees (CPU flash attention it does not)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            rectified_flow_loss(model, x).backward()
        counted = counter.get_total_flops()
        ours = batch * flops_per_sample(cfg, frames, size, size)
        assert abs(ours - counted) / counted < 0.05, (frames, size, ours, counted)
