"""Real programs for `gpuwatch attach` to attach to, each with planted causes and its own measured truth.

Run as `python tests/attach_targets.py KIND --truth FILE [...]`. Every program:
- allows any tracer under Yama (`prctl(PR_SET_PTRACER, ANY)`), as a user would to let a profiler in;
- prints its pid on stdout once it is in its loop (the test attaches then);
- times each phase of each step with `time.perf_counter` and appends one JSON line per step to `--truth`:
  `{"step": i, "phases": [[phase, start_unix_ns, end_unix_ns], ...]}` (perf_counter mapped to wall clock
  once at start, so the test can cut the truth to exactly the window attach sampled).

Kinds:
- `planted`: a DataLoader with a slow worker (a latency-bound `read_sample` plus real JPEG decode with PIL),
  real JPEG decode + numpy augmentation on the training thread, an MLP forward/backward/SGD step, and a
  large synchronous `torch.save` every `--ckpt-every` steps. Phases: data, decode, compute, ckpt.
- `loader0`: `num_workers=0` over a dataset that decodes JPEGs in `__getitem__`; phases data, host, compute
  (and per item, in TRUTH.items, read and decode).
- `saturated`: `--workers` DataLoader workers decoding large JPEGs keep every core busy; phases data, host,
  compute.
- `bench`: a plain CPU training loop (steps of 10-50 ms) writing only step times, for the overhead benchmark.
- `cuda`: a GPU training loop (device matmuls, a 10 ms host wait, `.item()` each step), for the gpu marker.
- `exit-after`: a small training loop that exits by itself after `--seconds`.
- `nondumpable`: a Python process that made itself non-dumpable (ptrace needs CAP_SYS_PTRACE even for its
  own user), for the permission test.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import sys
import time
from collections.abc import Iterator

PR_SET_DUMPABLE = 4
PR_SET_PTRACER = 0x59616D61
PR_SET_PTRACER_ANY = -1


def prctl(option: int, arg: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, ctypes.c_ulong(arg & 0xFFFFFFFFFFFFFFFF), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no Yama / not Linux: nothing to allow


class Truth:
    """Phase timings with perf_counter, written as wall-clock intervals (one line per step, unbuffered)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.wall0 = time.time_ns()
        self.perf0 = time.perf_counter()

    def wall(self, perf: float) -> int:
        return self.wall0 + int((perf - self.perf0) * 1e9)

    def step(self, i: int, phases: list[tuple[str, float, float]]) -> None:
        doc = {"step": i, "phases": [[name, self.wall(a), self.wall(b)] for name, a, b in phases]}
        os.write(self.fd, (json.dumps(doc) + "\n").encode())


def make_jpegs(n: int, size: int, seed: int = 0) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        # smooth gradients plus noise: realistic JPEG sizes and decode cost
        base = np.linspace(0, 255, size, dtype=np.float32)
        img = (base[None, :, None] + rng.normal(0, 40, (size, size, 3))).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode_images(blobs: list[bytes]):  # noqa: ANN201 - numpy array
    import numpy as np
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def augment(images):  # noqa: ANN001, ANN201
    import numpy as np

    x = images.astype(np.float32) / 255.0
    x = x[:, ::-1, :, :] * 0.9 + 0.05  # flip and jitter
    return np.ascontiguousarray(x.mean(axis=(1, 2)))


def read_sample(latency_s: float) -> None:
    """Stands for a read from slow storage: latency without CPU."""
    time.sleep(latency_s)


class SlowJpegDataset:
    """Each item: a latency-bound read, then a real JPEG decode; with `truth`, each item's phases are
    appended to `truth` (one line per item, from whichever process runs it: a worker)."""

    def __init__(self, blobs: list[bytes], read_latency_s: float, truth: str | None = None) -> None:
        self.blobs = blobs
        self.latency = read_latency_s
        self.truth_path = truth
        self._truth: Truth | None = None

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, i: int):  # noqa: ANN204
        import torch

        t0 = time.perf_counter()
        read_sample(self.latency)
        t1 = time.perf_counter()
        img = decode_images([self.blobs[i % len(self.blobs)]])
        out = torch.from_numpy(augment(img)[0])
        t2 = time.perf_counter()
        if self.truth_path:
            if self._truth is None:
                self._truth = Truth(self.truth_path)
            self._truth.step(i, [("read", t0, t1), ("decode", t1, t2)])
        return out


def steps() -> Iterator[int]:
    """Step numbers, forever; prints the pid once step 2 is done (the loop is running: the test attaches)."""
    i = 0
    while True:
        yield i
        if i == 2:
            print(os.getpid(), flush=True)
        i += 1


def mlp(width: int, depth: int):  # noqa: ANN201
    import torch

    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


class WithLoss:
    """Forward and loss inside nn.Modules, as models usually compute them."""

    def __init__(self, width: int, depth: int) -> None:
        import torch

        self.body = mlp(width, depth)
        self.loss = torch.nn.MSELoss()


def planted(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    truth = Truth(args.truth)
    worker_blobs = make_jpegs(8, args.worker_image, seed=1)
    thread_blobs = make_jpegs(args.decode_images, args.thread_image, seed=2)
    loader = DataLoader(
        SlowJpegDataset(
            worker_blobs, args.read_latency, truth=args.truth + ".worker" if args.workers else None
        ),
        batch_size=1,
        num_workers=args.workers,
        prefetch_factor=1 if args.workers else None,
    )
    net = WithLoss(args.width, args.depth)
    opt = torch.optim.SGD(net.body.parameters(), lr=1e-3)
    x = torch.randn(args.batch, args.width)
    state = {"blob": torch.randn(args.ckpt_mb * 262144)}  # 4 bytes per float
    ckpt_path = args.ckpt_path
    it = iter(loader)
    for i in steps():
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        images = decode_images(thread_blobs)
        feats = augment(images)
        t2 = time.perf_counter()
        out = net.body(x + float(feats.mean()) + float(batch.mean()))
        loss = net.loss(out, x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        phases = [("data", t0, t1), ("decode", t1, t2), ("compute", t2, t3)]
        if args.ckpt_every and i % args.ckpt_every == args.ckpt_every - 1:
            torch.save(state, ckpt_path)
            t4 = time.perf_counter()
            phases.append(("ckpt", t3, t4))
        truth.step(i, phases)


def loader0(args: argparse.Namespace) -> None:
    # the dataset times each item's read and decode (+ augment) too: ".items" next to the step truth
    items = args.truth + ".items" if args.truth != os.devnull else None
    loader_bound(args, items, num_workers=0)


def saturated(args: argparse.Namespace) -> None:
    """`--workers` DataLoader workers decoding large JPEGs keep every core busy (the busy host of issue 9);
    the training thread waits for their batches and runs an MLP step. Phases: data, host, compute."""
    loader_bound(args, None, num_workers=args.workers, prefetch_factor=2)


def loader_bound(args: argparse.Namespace, item_truth: str | None, **loader_options: int) -> None:
    """A training thread that waits for DataLoader batches of `SlowJpegDataset` items and runs an MLP step.
    Phases: data, host (the loop's own line feeding the batch in), compute."""
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    truth = Truth(args.truth)
    blobs = make_jpegs(8, args.worker_image, seed=1)
    dataset = SlowJpegDataset(blobs, args.read_latency, truth=item_truth)
    loader = DataLoader(dataset, batch_size=2, **loader_options)
    net = WithLoss(args.width, args.depth)
    opt = torch.optim.SGD(net.body.parameters(), lr=1e-3)
    x = torch.randn(args.batch, args.width)
    it = iter(loader)
    for i in steps():
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        # one element of the batch feeds the step, on the loop's own line: host work by the budget's rules,
        # timed apart (on a saturated host a thread waiting for a core waits on whatever line it is)
        inp = x + float(batch.flatten()[0])
        t2 = time.perf_counter()
        loss = net.loss(net.body(inp), x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        truth.step(i, [("data", t0, t1), ("host", t1, t2), ("compute", t2, t3)])


def bench(args: argparse.Namespace) -> None:
    """Steps of ~20 ms of real forward/backward/SGD; one line per step (start, end)."""
    import torch

    torch.manual_seed(0)
    truth = Truth(args.truth)
    net = WithLoss(args.width, args.depth)
    opt = torch.optim.SGD(net.body.parameters(), lr=1e-3)
    x = torch.randn(args.batch, args.width)
    for i in steps():
        t0 = time.perf_counter()
        loss = net.loss(net.body(x), x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        t1 = time.perf_counter()
        truth.step(i, [("compute", t0, t1)])


def cuda(args: argparse.Namespace) -> None:
    """A GPU loop: matmuls on the device, a host-side data wait, a sync every step (`.item()`)."""
    import torch

    dev = torch.device("cuda")
    net = WithLoss(args.width, args.depth)
    net.body.to(dev)
    opt = torch.optim.SGD(net.body.parameters(), lr=1e-3)
    x = torch.randn(args.batch, args.width, device=dev)
    for _ in steps():
        read_sample(0.01)  # host-side wait: the device idles
        loss = net.loss(net.body(x), x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()


def exit_after(args: argparse.Namespace) -> None:
    import torch

    net = WithLoss(64, 2)
    opt = torch.optim.SGD(net.body.parameters(), lr=1e-3)
    x = torch.randn(32, 64)
    print(os.getpid(), flush=True)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        net.loss(net.body(x), x).backward()
        opt.step()
        opt.zero_grad()
        time.sleep(0.01)


def nondumpable(args: argparse.Namespace) -> None:
    prctl(PR_SET_DUMPABLE, 0)
    print(os.getpid(), flush=True)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        time.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "kind", choices=["planted", "loader0", "saturated", "bench", "cuda", "exit-after", "nondumpable"]
    )
    p.add_argument("--truth", default=os.devnull)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--read-latency", type=float, default=0.12)
    p.add_argument("--worker-image", type=int, default=256)
    p.add_argument("--thread-image", type=int, default=256)
    p.add_argument("--decode-images", type=int, default=8)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--ckpt-every", type=int, default=4)
    p.add_argument("--ckpt-mb", type=int, default=64)
    p.add_argument("--ckpt-path", default=os.devnull)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args()
    prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY)
    if args.kind != "nondumpable":
        import torch

        torch.set_num_threads(args.threads)
    {
        "planted": planted,
        "loader0": loader0,
        "saturated": saturated,
        "bench": bench,
        "cuda": cuda,
        "exit-after": exit_after,
        "nondumpable": nondumpable,
    }[args.kind](args)


if __name__ == "__main__":
    sys.exit(main())
