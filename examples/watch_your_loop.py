"""Using gpuwatch in your own training loop: two lines, then `gpuwatch summary`.

    python examples/watch_your_loop.py            # trains ~60 short steps on CPU under gpuwatch.watch
    gpuwatch summary runs/example                 # where each step's time went, and what to change

The loop below has one planted problem — a slow Dataset read with num_workers=0 — and one region named
with `gpuwatch.span` (the augmentation). Nothing else is passed to gpuwatch: it finds the DataLoader, the
forward/backward/optimizer phases and the stalls by itself.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

import gpuwatch


class SlowDataset(torch.utils.data.Dataset):
    """Random images behind a storage read of 10 ms each (a stand-in for remote storage)."""

    def __len__(self) -> int:
        return 512

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        time.sleep(0.010)
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 32, 32, generator=g), i % 10


def augment(x: torch.Tensor) -> torch.Tensor:
    return (x.flip(-1) - 0.5) / 0.25


def main(run_dir: str = "runs/example") -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = torch.utils.data.DataLoader(SlowDataset(), batch_size=8, num_workers=0)  # the planted problem

    with gpuwatch.watch(run_dir) as gw:  # line 1: around the loop
        for x, y in loader:
            with gpuwatch.span("augment", category="cpu_preprocessing"):  # optional: name your own regions
                x = augment(x)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            gw.step()  # line 2: the end of a step
    print(f"done; now run: gpuwatch summary {run_dir}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
