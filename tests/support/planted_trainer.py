"""A small real CPU training program with one planted cause of idle time, timing its own phases.

    python tests/planted_trainer.py CASE --run-dir DIR --truth TRUTH.json [--steps N] [--no-watch]

Cases (each a real loop: DataLoader, an MLP, SGD; `torch.set_num_threads(1)`):
  slow_loader   DataLoader(num_workers=0) over a dataset whose samples take time to read
  decode        JPEG decode (PIL) + numpy augmentation of every batch on the training thread; the loader
                (one worker process) only hands over the encoded bytes
  checkpoint    a ~40 MB synchronous torch.save every 4th step
  manager       two ranks (gloo, under torchrun): rank 0 gathers every gradient, merges them, steps the
                optimizer and broadcasts every parameter while rank 1 waits
  mixed         workers + a user span + torch.save: for bit-identical results with and without gpuwatch

Truth: every phase is timed with time.perf_counter (data = next(loader), less the sample assembly and
collate a num_workers=0 loader runs on the training thread, which is preprocessing; decode, compute = forward +
loss + backward + optimizer, checkpoint = torch.save, sync = the collectives, merge = rank 0's merging,
i.e. host work); a step is the time between two `gw.step()` calls (step 0 starts when the watch starts).
The truth file holds, per rank, each category's share of the summed step time, in percent (`pct`), and
every step's phases and wall time in seconds (`per_step`), so a test can take the steps the budget kept
(warm-up steps are left out of it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, default_collate

import gpuwatch


def make_model(width_in: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(width_in, 768),
        torch.nn.ReLU(),
        torch.nn.Linear(768, 768),
        torch.nn.ReLU(),
        torch.nn.Linear(768, 10),
    )


class SlowDataset(Dataset):
    """Each sample costs a (simulated) storage read plus real numpy work to assemble."""

    def __init__(self, n: int, dim: int) -> None:
        self.n, self.dim = n, dim

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        time.sleep(0.0015)  # storage latency
        t0 = time.perf_counter()
        x = augment_sample(i, self.dim)
        PREPROCESSING_S[0] += time.perf_counter() - t0
        return x, i % 10


PREPROCESSING_S = [0.0]
"""Seconds this process spent assembling samples and collating batches of a `SlowDataset`. By the budget's
rules (collectors/stack_rules.py) that work under a `num_workers=0` DataLoader is cpu_preprocessing, not
data_loading, so the truth times it apart (in worker processes it stays there, off the training thread)."""


def augment_sample(i: int, dim: int) -> torch.Tensor:
    """Real numpy work building one sample (the name says augmentation, as the budget's rules read it)."""
    rng = np.random.default_rng(i)
    x = rng.standard_normal(dim).astype(np.float32)
    x = np.tanh(np.outer(x[:64], x[:64])).ravel()[:dim].copy()
    return torch.from_numpy(np.resize(x, dim))


def timed_collate(items):
    t0 = time.perf_counter()
    batch = default_collate(items)
    PREPROCESSING_S[0] += time.perf_counter() - t0
    return batch


class EncodedImages(Dataset):
    """JPEG-encoded images (PIL) or, without Pillow, zlib-compressed arrays: decoding is the caller's job."""

    def __init__(self, n: int, size: int) -> None:
        rng = np.random.default_rng(0)
        base = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        self.blobs = []
        for i in range(8):
            img = np.roll(base, i * 7, axis=0)
            self.blobs.append(encode(img))
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.blobs[i % len(self.blobs)], i % 10


def encode(img: np.ndarray) -> bytes:
    try:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        return buf.getvalue()
    except ImportError:
        import zlib

        return zlib.compress(img.tobytes())


def collate_blobs(items):
    return [blob for blob, _ in items], [label for _, label in items]


def decode_image(blob: bytes, size: int) -> np.ndarray:
    try:
        from PIL import Image

        img = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.float32)
    except ImportError:
        import zlib

        img = np.frombuffer(zlib.decompress(blob), dtype=np.uint8).reshape(size, size, 3).astype(np.float32)
    return img


def augment(img: np.ndarray) -> np.ndarray:
    img = img[:, ::-1] if img[0, 0, 0] > 127 else img  # flip
    img = (img - img.mean(axis=(0, 1))) / (img.std(axis=(0, 1)) + 1e-6)  # normalize
    small = img.reshape(32, img.shape[0] // 32, 32, img.shape[1] // 32, 3).mean(axis=(1, 3))  # resize
    return np.ascontiguousarray(small, dtype=np.float32).ravel()


class Truth:
    def __init__(self) -> None:
        self.phase: dict[str, float] = {}
        self.wall = 0.0
        self.per_step: list[dict] = []
        self._step: dict[str, float] = {}

    def add(self, category: str, seconds: float) -> None:
        self.phase[category] = self.phase.get(category, 0.0) + seconds
        self._step[category] = self._step.get(category, 0.0) + seconds

    def close_step(self, wall_s: float) -> None:
        self.per_step.append({"phases": self._step, "wall_s": wall_s})
        self._step = {}

    def pct(self) -> dict[str, float]:
        out = {c: 100.0 * s / self.wall for c, s in self.phase.items()}
        out["other"] = 100.0 - sum(out.values())
        return out


class _NoWatch:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def step(self) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=["slow_loader", "decode", "checkpoint", "manager", "mixed"])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--truth", required=True)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--no-watch", action="store_true")
    p.add_argument("--params-out", default=None, help="write the final parameters (for bit-identity)")
    p.add_argument("--progress", action="store_true", help="print 'step I T_UNIX' after every step")
    p.add_argument("--sigterm-marker", default=None, help="install a SIGTERM handler that writes this file")
    args = p.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.sigterm_marker:
        import signal

        def on_term(signum, frame):  # the job's own handler: gpuwatch must chain to it
            Path(args.sigterm_marker).write_text("handled")
            os._exit(143)

        signal.signal(signal.SIGTERM, on_term)

    distributed = args.case == "manager"
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0

    dim, size = 1024, 128
    if args.case == "decode":
        dim = 32 * 32 * 3
        loader = DataLoader(
            EncodedImages(10_000, size), batch_size=8, num_workers=1, collate_fn=collate_blobs
        )
    elif args.case == "mixed":
        loader = DataLoader(
            SlowDataset(10_000, dim),
            batch_size=16,
            num_workers=2,
            shuffle=True,
            generator=torch.Generator().manual_seed(1),
        )
    else:
        loader = DataLoader(
            SlowDataset(10_000, dim),
            batch_size=16 if args.case == "slow_loader" else 4,
            collate_fn=timed_collate,
        )
    model = make_model(dim)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ballast = torch.randn(10_000_000) if args.case == "checkpoint" else None  # ~40 MB more to save
    ckpt_dir = Path(args.run_dir).parent / f"ckpt-{os.getpid()}"
    truth = Truth()
    watcher = _NoWatch() if args.no_watch else gpuwatch.watch(args.run_dir)
    decode_span = gpuwatch.span("decode", category="cpu_preprocessing")

    with watcher as gw:
        t_step = time.perf_counter()
        t0 = time.perf_counter()
        it = iter(loader)
        truth.add("data_loading", time.perf_counter() - t0)
        for step in range(args.steps):
            t0, prep0 = time.perf_counter(), PREPROCESSING_S[0]
            batch, labels = next(it)
            prep = PREPROCESSING_S[0] - prep0  # 0 where workers assemble the samples
            truth.add("data_loading", time.perf_counter() - t0 - prep)
            truth.add("cpu_preprocessing", prep)

            if args.case == "decode":
                t0 = time.perf_counter()
                x = torch.from_numpy(np.stack([augment(decode_image(b, size)) for b in batch]))
                truth.add("cpu_preprocessing", time.perf_counter() - t0)
            elif args.case == "mixed":
                t0 = time.perf_counter()
                with decode_span:  # a user span explains its own region
                    x = batch * 0.5 + 0.1
                truth.add("cpu_preprocessing", time.perf_counter() - t0)
            else:
                x = batch
            y = torch.as_tensor(labels)

            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if not distributed:
                opt.step()
                opt.zero_grad()
            truth.add("compute", time.perf_counter() - t0)

            if distributed:
                manager_step(model, opt, rank, truth)

            if args.case in ("checkpoint", "mixed") and step % 4 == 3:
                t0 = time.perf_counter()
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                state = {"model": model.state_dict(), "opt": opt.state_dict(), "ballast": ballast}
                torch.save(state, ckpt_dir / "last.pt")
                truth.add("checkpoint_io", time.perf_counter() - t0)

            gw.step()
            t_next = time.perf_counter()
            truth.wall += t_next - t_step  # gw.step() itself belongs to the steps too
            truth.close_step(t_next - t_step)
            t_step = t_next
            if args.progress:
                print(f"step {step} {time.time()}", flush=True)

    doc = {
        "rank": rank,
        "case": args.case,
        "steps": args.steps,
        "pct": truth.pct(),
        "wall_s": truth.wall,
        "per_step": truth.per_step,
    }
    Path(args.truth).with_suffix(f".rank{rank}.json").write_text(json.dumps(doc))
    if args.params_out:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, args.params_out)
    if distributed:
        dist.destroy_process_group()


def manager_step(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, truth: Truth) -> None:
    """The manager-node pattern: rank 0 gathers every gradient, merges, steps, broadcasts every parameter."""
    world = dist.get_world_size()
    params = list(model.parameters())
    gathered = []
    t0 = time.perf_counter()
    for prm in params:
        bucket = [torch.empty_like(prm.grad) for _ in range(world)] if rank == 0 else None
        dist.gather(prm.grad, bucket, dst=0)
        gathered.append(bucket)
    truth.add("sync", time.perf_counter() - t0)
    if rank == 0:
        t0 = time.perf_counter()
        for prm, bucket in zip(params, gathered):  # merging: host work, not the model's math
            merged = torch.stack(bucket).mean(0)
            for _ in range(3):  # a manager that also checks and rescales (more host work)
                merged = (
                    merged * (1.0 / max(float(merged.abs().max()), 1.0)) * max(float(merged.abs().max()), 1.0)
                )
            prm.grad.copy_(merged)
        truth.add("host_work", time.perf_counter() - t0)
        t0 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        truth.add("compute", time.perf_counter() - t0)
    else:
        model.zero_grad()
    t0 = time.perf_counter()
    for prm in params:
        dist.broadcast(prm.data, src=0)
    truth.add("sync", time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
