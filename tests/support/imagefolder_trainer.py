"""An image classifier trained the way public examples write it, knowing nothing of gpuwatch.

    python imagefolder_trainer.py --data DIR [--workers N] [--epochs E] [--batch-size B] [--result OUT.json]

Shaped after pytorch/examples `imagenet/main.py`: an ImageFolder-style Dataset (one folder per class of JPEG
files) that opens, decodes (PIL) and augments each image in `__getitem__` (random resized crop, flip,
normalize), a DataLoader with `--workers` processes, a small CNN, SGD with momentum, and the example's own
`AverageMeter`s: `data_time` from the end of the previous iteration to the batch in hand, `batch_time` for
the whole iteration. `--make-data` writes DIR (deterministic JPEGs) when it is missing. `--result` gets the
script's own figures as JSON: data time as a share of all iteration time, in percent, and both meters'
value at every iteration (iterations count on across epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from imagefolder_samples import image_samples
from PIL import Image
from torch.utils.data import DataLoader, Dataset

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImageFolder(Dataset):
    """root/<class>/<image>.jpg -> (normalized CHW float tensor, class index)."""

    def __init__(self, root: str, size: int) -> None:
        self.classes, self.samples = image_samples(root)
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        # RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize, as torchvision would
        w, h = img.size
        scale = random.uniform(0.3, 1.0)
        cw, ch = max(8, int(w * scale**0.5)), max(8, int(h * scale**0.5))
        x0, y0 = random.randint(0, w - cw), random.randint(0, h - ch)
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()), target


class AverageMeter:
    def __init__(self, name: str) -> None:
        self.name, self.sum, self.count = name, 0.0, 0
        self.history: list[float] = []

    def update(self, val: float, n: int = 1) -> None:
        self.sum += val * n
        self.count += n
        self.history.append(val)


def make_data(root: Path, classes: int, per_class: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            # smooth shapes plus noise: a photo-like JPEG, not a flat one that decodes for free
            yy, xx = np.mgrid[0:size, 0:size] / size
            base = np.stack([np.sin(6 * xx + c + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy))], axis=-1)
            img = (127 + 100 * base + rng.normal(0, 20, (size, size, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"img{i:04d}.jpg", quality=90)


def build_model(classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, classes),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--make-data", action="store_true")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--print-freq", type=int, default=10)
    p.add_argument("--result", default=None)
    args = p.parse_args()

    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    root = Path(args.data)
    if args.make_data and not root.exists():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        make_data(tmp, classes=4, per_class=48, size=256)
        tmp.rename(root)
    dataset = ImageFolder(str(root), args.image_size)
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True
    )
    model = build_model(len(dataset.classes))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    batch_time, data_time = AverageMeter("Time"), AverageMeter("Data")
    model.train()
    for epoch in range(args.epochs):
        end = time.time()
        for i, (images, target) in enumerate(loader):
            data_time.update(time.time() - end)
            output = model(images)
            loss = criterion(output, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            batch_time.update(time.time() - end)
            end = time.time()
            if i % args.print_freq == 0:
                print(f"Epoch [{epoch}][{i}/{len(loader)}] loss {loss.item():.3f}", flush=True)
    result = {
        "iterations": batch_time.count,
        "data_s": data_time.sum,
        "batch_s": batch_time.sum,
        "data_pct": 100.0 * data_time.sum / batch_time.sum,
        "data_s_per_iteration": data_time.history,
        "batch_s_per_iteration": batch_time.history,
    }
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}))
    if args.result:
        Path(args.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
