"""A small real CPU training loop for `gpuwatch compare`: one configuration, run again and again, with a
regression that can be planted by a flag and that the program times itself.

    python tests/support/compare_planted.py --run-dir DIR [--steps N] [--slow-input-ms X]
        [--sync-checkpoint-ms Y --checkpoint-every K] [--truth FILE]

Every step: `next()` on a DataLoader (num_workers=0, so the training thread waits for the batch), the
math of an MLP (forward, loss, backward, SGD; one thread), and, when planted, a synchronous torch.save.
- `--slow-input-ms X`: a slower input pipeline: every batch takes X ms longer to read (storage latency).
- `--sync-checkpoint-ms Y`: a synchronous checkpoint put back on the training thread: every K-th step
  torch.save writes the model and optimizer state through a store that takes Y ms per save.
The truth file holds what the program measured with time.perf_counter per step (wall, input wait,
checkpoint), so a test can check that the plant took before asking compare about it.

When allowed (root, or CAP_SYS_NICE), the program raises its own scheduling priority: on a machine whose
cores are shared with other jobs, a thread waking from its input wait otherwise waits again for a core, by
as much as a third of the plant, so the plant would not be what was planted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import gpuwatch

BATCH = 128
DIM = 1024
BASE_INPUT_MS = 40.0
"""Every configuration reads its batch for a while: the input pipeline is never free."""


class StoredBatches(Dataset):
    """Batches stored whole: each costs one storage read (a sleep: latency, not CPU) plus building it."""

    def __init__(self, n: int, read_ms: float) -> None:
        self.n, self.read_s = n, read_ms / 1000.0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        time.sleep(self.read_s)
        g = torch.Generator().manual_seed(i)
        return torch.randn(BATCH, DIM, generator=g), torch.arange(BATCH) % 10


class SlowStore(io.RawIOBase):
    """A write-only file whose writes take `seconds` in all for `total_bytes` (a slow checkpoint volume)."""

    def __init__(self, path: Path, seconds: float, total_bytes: int) -> None:
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.rate_s_per_byte = seconds / max(total_bytes, 1)

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        n = self.fh.write(b)
        time.sleep(n * self.rate_s_per_byte)
        return n

    def close(self) -> None:
        self.fh.close()
        super().close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--slow-input-ms", type=float, default=0.0)
    p.add_argument("--sync-checkpoint-ms", type=float, default=0.0)
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--truth", default=None)
    args = p.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    # batch_size=None: the dataset hands over whole batches (one read each, as from a sharded store)
    loader = DataLoader(StoredBatches(100_000, BASE_INPUT_MS + args.slow_input_ms), batch_size=None)
    model = torch.nn.Sequential(
        torch.nn.Linear(DIM, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ckpt = Path(args.run_dir).parent / f"ckpt-{os.getpid()}.pt"
    state_bytes = 0
    if args.sync_checkpoint_ms:
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
        state_bytes = buf.tell()
    truth: list[dict[str, float]] = []

    with gpuwatch.watch(args.run_dir) as gw:
        it = iter(loader)
        t_step = time.perf_counter()
        for step in range(args.steps):
            t0 = time.perf_counter()
            x, y = next(it)
            input_s = time.perf_counter() - t0
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            ckpt_s = 0.0
            if args.sync_checkpoint_ms and step % args.checkpoint_every == args.checkpoint_every - 1:
                t0 = time.perf_counter()
                with SlowStore(ckpt, args.sync_checkpoint_ms / 1000.0, state_bytes) as fh:
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, fh)
                ckpt_s = time.perf_counter() - t0
            gw.step()
            now = time.perf_counter()
            truth.append(
                {"wall_ms": 1e3 * (now - t_step), "input_ms": 1e3 * input_s, "checkpoint_ms": 1e3 * ckpt_s}
            )
            t_step = now
    ckpt.unlink(missing_ok=True)
    if args.truth:
        Path(args.truth).write_text(json.dumps({"steps": truth}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
