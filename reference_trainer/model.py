"""A small diffusion transformer for video (DiT with adaLN-Zero), trained with the rectified-flow objective.

Video tensors are (batch, channels, frames, height, width); an image is a one-frame video. The video is cut
into space-time patches by a 3-D convolution, each block is conditioned on the timestep through adaLN-Zero
(scale, shift and gate regressed from the timestep embedding, initialised to zero so every block starts as
the identity), and positions are fixed 3-D sine-cosine embeddings computed for the grid at hand, so the
same weights train at every resolution of the progressive schedule. No downloaded weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Sizes of the model. The CPU default is about 3 M parameters (width 192, 4 blocks, patch 4)."""

    channels: int = 3
    width: int = 192
    depth: int = 4
    heads: int = 6
    patch: int = 4
    """Spatial patch size in pixels."""
    patch_frames: int = 1
    """Temporal patch size in frames (clip lengths must be a multiple of it)."""
    mlp_ratio: float = 4.0
    freq_dim: int = 256
    """Width of the sinusoidal timestep features fed to the timestep MLP."""


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DiT), shape (batch, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2))
    out = pos.float()[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_3d(width: int, frames: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed position embeddings for a (frames, rows, cols) token grid, shape (frames*rows*cols, width).

    The width is split into a temporal quarter and two spatial three-eighths (each even).
    """
    d_t = (width // 4) // 2 * 2
    d_h = ((width - d_t) // 2) // 2 * 2
    d_w = width - d_t - d_h
    gt, gh, gw = torch.meshgrid(torch.arange(frames), torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat(
        [_sincos_1d(d_t, gt.reshape(-1)), _sincos_1d(d_h, gh.reshape(-1)), _sincos_1d(d_w, gw.reshape(-1))],
        dim=1,
    )


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.freq_dim))


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP, both modulated and gated by the conditioning (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c).chunk(6, dim=1)
        b, n, d = x.shape
        h = _modulate(self.norm1(x), shift_a, scale_a)
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + gate_a.unsqueeze(1) * self.proj(a)
        h = _modulate(self.norm2(x), shift_m, scale_m)
        return x + gate_m.unsqueeze(1) * self.mlp(h)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_per_token: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_per_token)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        for layer in (self.linear, self.ada[1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class VideoDiT(nn.Module):
    """Predicts the rectified-flow velocity for a noisy video x_t at time t in [0, 1]."""

    def __init__(self, cfg: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        pt, p = cfg.patch_frames, cfg.patch
        self.patchify = nn.Conv3d(cfg.channels, cfg.width, kernel_size=(pt, p, p), stride=(pt, p, p))
        self.t_embed = TimestepEmbedder(cfg.width, cfg.freq_dim)
        self.blocks = nn.ModuleList(DiTBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg.width, pt * p * p * cfg.channels)
        self._pos_cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def _pos(self, grid: tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        pos = self._pos_cache.get(grid)
        if pos is None:
            pos = self._pos_cache[grid] = sincos_3d(self.cfg.width, *grid)
        return pos.to(device=device, dtype=dtype)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(batch, tokens, pt*p*p*C) back to (batch, C, frames, height, width)."""
        c, pt, p = self.cfg.channels, self.cfg.patch_frames, self.cfg.patch
        f, h, w = grid
        x = tokens.reshape(tokens.shape[0], f, h, w, pt, p, p, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(tokens.shape[0], c, f * pt, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tokens = self.patchify(x)  # (B, D, F', H', W')
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = tokens + self._pos(grid, tokens.device, tokens.dtype)  # type: ignore[arg-type]
        c = self.t_embed(t).to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.unpatchify(self.final(tokens, c), grid)  # type: ignore[arg-type]


def rectified_flow_loss(
    model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rectified flow: x_t = (1 - t) x0 + t noise, regress the velocity (noise - x0); mean squared error.

    t is drawn from a logit-normal distribution (SD3's choice): it puts more training on the middle times.
    """
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    t = torch.sigmoid(torch.randn((b,), generator=generator, device=x0.device))
    tb = t.view(b, 1, 1, 1, 1).to(x0.dtype)
    xt = (1 - tb) * x0 + tb * noise
    pred = model(xt, t)
    return F.mse_loss(pred.float(), (noise - x0).float())


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tokens_per_sample(cfg: ModelConfig, frames: int, height: int, width: int) -> int:
    """Space-time patch tokens of one (frames, height, width) sample."""
    return (frames // cfg.patch_frames) * (height // cfg.patch) * (width // cfg.patch)


def flops_per_sample(cfg: ModelConfig, frames: int, height: int, width: int) -> float:
    """Training FLOPs for one sample (forward + backward = 3x forward), matmuls and attention only.

    The usual 6 * params * tokens for the dense layers plus 12 * depth * tokens^2 * width for attention
    (torchtitan's `get_num_flop_per_token` counts the same two terms).
    """
    tokens = tokens_per_sample(cfg, frames, height, width)
    d, hidden = cfg.width, int(cfg.width * cfg.mlp_ratio)
    per_block = 3 * d * d + d * d + 2 * d * hidden + 6 * d * d  # qkv, proj, mlp, adaLN (adaLN once/sample)
    dense = 6 * tokens * cfg.depth * (per_block - 6 * d * d) + 6 * cfg.depth * 6 * d * d
    patch_in = cfg.channels * cfg.patch_frames * cfg.patch**2
    dense += 6 * tokens * (d * patch_in + d * patch_in)  # patchify and final projection
    attn = 12 * cfg.depth * tokens * tokens * d
    return float(dense + attn)
