"""An ImageFolder-style trainer with `num_workers=0` that times its own read, decode and transform phases.

    python tests/support/planted_imagefolder.py --data DIR --truth TRUTH.jsonl [--run-dir RUN] [--steps N]

Written the way public image-classification scripts are (pytorch/examples imagenet): a Dataset over
`root/<class>/<image>.jpg` whose `__getitem__` reads the file, decodes it with PIL and applies a
torchvision-like `Compose` (RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize; torchvision itself
is not installed here, so the same transforms are written out with PIL, numpy and torch), a DataLoader
without workers (the Dataset runs on the training thread, inside `DataLoader.__next__`), a small CNN, SGD.
The read waits `--read-latency` seconds per file on top of the real read (storage slower than page cache).

With `--run-dir` the loop runs under `gpuwatch.watch` and marks steps with `gw.step()`; without it, it knows
nothing of gpuwatch (for `gpuwatch attach`), prints its pid once in its loop and runs until killed (or for
`--steps`). `--data` is made (deterministic JPEGs) when missing.

Truth, one JSON line per step, every phase as wall-clock ns intervals measured with time.perf_counter:
`read` (open + read + latency), `decode` (PIL open + convert), `transform` (the Compose), `collate` (the
DataLoader's collate_fn), `loader` (all of next(loader)), `compute` (forward, loss, backward, step), and
`step` (from this step's start to the next's). By the budget's definitions read is data_loading, decode +
transform + collate are cpu_preprocessing, compute is compute.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from imagefolder_samples import image_samples
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate
from watch_or_attach import watch_or_attach

PHASES: list[list[object]] = []
"""Phases of the step in progress: [name, start_perf_s, end_perf_s]."""


def timed(name: str, t0: float) -> float:
    t1 = time.perf_counter()
    PHASES.append([name, t0, t1])
    return t1


# ---- torchvision-like transforms ------------------------------------------------------------------------
class Compose:
    def __init__(self, transforms: list) -> None:
        self.transforms = transforms

    def __call__(self, img):  # noqa: ANN001, ANN204
        for t in self.transforms:
            img = t(img)
        return img


class RandomResizedCrop:
    def __init__(self, size: int, scale: tuple[float, float] = (0.35, 1.0)) -> None:
        self.size, self.scale = size, scale

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        area = w * h * random.uniform(*self.scale)
        ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw = min(w, int(round(math.sqrt(area * ratio))))
        ch = min(h, int(round(math.sqrt(area / ratio))))
        x0, y0 = random.randint(0, w - cw), random.randint(0, h - ch)
        return img.resize((self.size, self.size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))


class RandomHorizontalFlip:
    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < 0.5 else img


class ToTensor:
    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0)


class Normalize:
    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# ---- the dataset ---------------------------------------------------------------------------------------
class ImageFolder(Dataset):
    """root/<class>/<image>.jpg -> (transformed tensor, class index)."""

    def __init__(self, root: str, transform: Compose, read_latency_s: float) -> None:
        self.classes, self.samples = image_samples(root)
        self.transform = transform
        self.latency = read_latency_s

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):  # noqa: ANN204
        path, target = self.samples[index]
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            data = f.read()
        time.sleep(self.latency)  # the storage's latency (a network file system, an object store)
        t1 = timed("read", t0)
        img = Image.open(io.BytesIO(data)).convert("RGB")
        t2 = timed("decode", t1)
        x = self.transform(img)
        timed("transform", t2)
        return x, target


def collate(batch: list) -> object:
    t0 = time.perf_counter()
    out = default_collate(batch)
    timed("collate", t0)
    return out


def make_data(root: Path, classes: int = 4, per_class: int = 12, width: int = 800, height: int = 600) -> None:
    """Photo-like JPEGs (smooth shapes and noise: they cost what real photos cost to decode)."""
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    for c in range(classes):
        folder = tmp / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.stack([np.sin(7 * xx + c + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy) + c)], axis=-1)
            img = (127 + 90 * base + rng.normal(0, 18, (height, width, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"img{i:03d}.jpg", quality=92)
    try:
        tmp.rename(root)
    except OSError:  # made meanwhile by another process: theirs is the same
        pass


def model(classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 24, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(24, 48, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(48, 64, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, classes),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--truth", required=True)
    p.add_argument("--run-dir", default=None, help="run under gpuwatch.watch, writing here")
    p.add_argument("--steps", type=int, default=0, help="0: until killed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--read-latency", type=float, default=0.003)
    args = p.parse_args()

    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    root = Path(args.data)
    if not root.exists():
        make_data(root)
    transform = Compose(
        [
            RandomResizedCrop(args.image_size),
            RandomHorizontalFlip(),
            ToTensor(),
            Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    dataset = ImageFolder(str(root), transform, args.read_latency)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0, collate_fn=collate)
    net = model(len(dataset.classes))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    fd = os.open(args.truth, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    wall0, perf0 = time.time_ns(), time.perf_counter()

    def wall(t: float) -> int:
        return wall0 + int((t - perf0) * 1e9)

    with watch_or_attach(args.run_dir) as gw:
        it = iter(loader)
        step = 0
        t_step = time.perf_counter()
        while not args.steps or step < args.steps:
            PHASES.clear()
            t0 = time.perf_counter()
            try:
                images, target = next(it)
            except StopIteration:
                it = iter(loader)
                images, target = next(it)
            t1 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(net(images), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            phases = [*PHASES, ["loader", t0, t1], ["compute", t1, t2]]
            gw.step()
            t_next = time.perf_counter()
            phases.append(["step", t_step, t_next])
            t_step = t_next
            doc = {"step": step, "phases": [[n, wall(a), wall(b)] for n, a, b in phases]}
            os.write(fd, (json.dumps(doc) + "\n").encode())
            if step == 2 and not args.run_dir:
                print(os.getpid(), flush=True)
            step += 1


if __name__ == "__main__":
    sys.exit(main())
