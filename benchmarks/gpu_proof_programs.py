"""The programs `gpu_proof.py` runs in child processes, one per kind, each writing its figures as JSON.

    python benchmarks/gpu_proof_programs.py KIND --out FIGURES.json [--device cuda|cpu] [options]

Kinds (every one also runs on the CPU at small sizes, which is how the proof is rehearsed without a GPU):
- `env`: Python, torch, CUDA device, driver, and which of the modules the checks need import here.
- `data`: the reference trainer's generated JPEG data set (made once, then reused).
- `planted`: a loop under `gpuwatch.watch` with planted causes whose truth it measures itself: a
  DataLoader wait (`time.sleep` in `__getitem__`), a pageable host-to-device copy of the batch (timed on
  the host), forward/backward/AdamW timed with CUDA events of its own, then work outside any module
  (a "metric") waited on by `.item()`, timed with CUDA events too. `--profile A:B` adds a torch.profiler
  window (`profile_steps`).
- `attach-target`: a watched GPU loop, about half device work and half DataLoader wait, for
  `gpuwatch attach` to attach to; prints `READY <pid>` once it is in its loop and lets any tracer in.
- `overhead`: one loop in three modes interleaved round by round in rotating order: bare, inside
  `gpuwatch.watch`, inside torch.profiler (recording only); per-step wall time with `perf_counter`.
- `decode`: the trainer's GPU JPEG decode against its CPU decode on the same frames.
- `inspect`: what a run directory holds: spans per kind, memcpy spans by `non_blocking`, NVML samples.
- `hta`: HolisticTraceAnalysis's temporal breakdown of a trace folder (when `hta` imports).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NEEDED_MODULES = (
    "torch",
    "numpy",
    "duckdb",
    "msgspec",
    "pynvml",
    "PIL",
    "rich",
    "gpuwatch.capture.watch",
    "gpuwatch.capture.attach",
    "gpuwatch.attribution.summary",
    "collectors.hooks.device_timer",
    "collectors.hooks.device_copy_hooks",
    "collectors.system.nvml_sampler",
    "collectors.system.nvml_busy",
    "reference_trainer.train",
    "torch.distributed.fsdp",
    "torch.distributed.checkpoint",
)
"""Modules some check imports (the checks name theirs; `env` reports every one)."""
OPTIONAL_MODULES = ("hta.trace_analysis", "torchvision.io", "nvidia.nvimgcodec", "torchcodec.decoders")
"""Used when present: HTA for the temporal comparison, a GPU JPEG decoder for the trainer's GPU decode."""

NVML_METRICS = ("gpu_util_pct", "mem_used_bytes", "mem_total_bytes", "power_mw", "proc_gpu_mem_used_bytes")


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    os.replace(tmp, path)


def allow_any_tracer() -> None:
    """prctl(PR_SET_PTRACER, ANY): under Yama, a sibling process (gpuwatch attach) may then read us."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(0x59616D61, ctypes.c_ulong(0xFFFFFFFFFFFFFFFF), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def find_pyspy() -> str | None:
    """py-spy on PATH, beside this Python, or in the `bin/` of a sys.path entry (`pip install --target`)."""
    import shutil

    candidates = [shutil.which("py-spy"), str(Path(sys.executable).parent / "py-spy")]
    candidates += [str(Path(p) / "bin" / "py-spy") for p in sys.path if p]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


# ---------------------------------------------------------------------------------------------- env, data


def env(args: argparse.Namespace) -> dict[str, Any]:
    import importlib

    mods: dict[str, str | None] = {}
    for name in (*NEEDED_MODULES, *OPTIONAL_MODULES):
        try:
            importlib.import_module(name)
            mods[name] = None
        except Exception as exc:  # a wheel missing, or one built for another Python
            mods[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    doc: dict[str, Any] = {"python": sys.version.split()[0], "modules": mods, "pyspy": find_pyspy()}
    try:
        import torch

        doc["torch"] = torch.__version__
        doc["cuda_available"] = bool(torch.cuda.is_available())
        doc["torch_cuda"] = torch.version.cuda
        if doc["cuda_available"]:
            doc["device_count"] = torch.cuda.device_count()
            doc["device_name"] = torch.cuda.get_device_name(0)
            doc["capability"] = list(torch.cuda.get_device_capability(0))
            doc["memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    except Exception as exc:
        doc["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import pynvml

        pynvml.nvmlInit()
        doc["driver"] = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
    except Exception as exc:
        doc["driver"] = None
        doc["nvml_error"] = f"{type(exc).__name__}: {exc}"
    return doc


def data(args: argparse.Namespace) -> dict[str, Any]:
    from reference_trainer.data import ensure_dataset

    t0 = time.perf_counter()
    path = ensure_dataset(args.data_dir)
    return {"seconds": time.perf_counter() - t0, "path": str(path)}


# ---------------------------------------------------------------------------------------------- loops


class DeviceClock:
    """Device time between two marks: CUDA events on a GPU, `perf_counter` on the CPU (rehearsal)."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch = torch
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, a: Any, b: Any) -> float:
        """Milliseconds from mark a to mark b (both complete: call after a sync)."""
        return float(a.elapsed_time(b)) if self.cuda else (b - a) * 1e3


class SleepyData:
    """A map-style Dataset whose every item costs `sleep_s` on the reading thread (storage latency)."""

    def __init__(self, torch: Any, sleep_s: float, shape: tuple[int, ...]) -> None:
        self.item = torch.zeros(shape)
        self.sleep_s = sleep_s

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, i: int) -> Any:
        time.sleep(self.sleep_s)
        return self.item


def mlp(torch: Any, width: int, depth: int, dtype: Any, device: Any, in_width: int | None = None) -> Any:
    """An MLP whose forward returns its loss (mean square of the output), so the loss kernels are inside
    the one top-level module gpuwatch times, as in most trainers' `model(batch) -> loss`."""

    class WithLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[Any] = [torch.nn.Linear(in_width, width)] if in_width else []
            for _ in range(depth):
                layers += [torch.nn.Linear(width, width, bias=False), torch.nn.GELU()]
            self.body = torch.nn.Sequential(*layers)

        def forward(self, x: Any) -> Any:
            return self.body(x).float().square().mean()

    return WithLoss().to(device=device, dtype=dtype)


def loop_sizes(device: str, gpu: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    return gpu if device == "cuda" else cpu


def planted(args: argparse.Namespace) -> dict[str, Any]:
    """See the module docstring; per step: the truth of each planted cause, and the step's wall time."""
    import torch

    import gpuwatch

    dev = torch.device(args.device)
    size = loop_sizes(
        args.device,
        {"width": 8192, "depth": 4, "tokens": 8192, "metric_matmuls": 8, "data_s": 0.010},
        {"width": 128, "depth": 2, "tokens": 256, "metric_matmuls": 2, "data_s": 0.005},
    )
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = mlp(torch, size["width"], size["depth"], dtype, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    x_host = torch.randn(size["tokens"], size["width"], dtype=dtype)  # pageable on purpose
    w_metric = torch.randn(size["width"], size["width"], dtype=dtype, device=dev)
    loader = torch.utils.data.DataLoader(
        SleepyData(torch, size["data_s"], (1,)), batch_size=None, num_workers=0
    )
    clock = DeviceClock(torch, dev)
    profile = tuple(int(v) for v in args.profile.split(":")) if args.profile else None
    steps: list[dict[str, float]] = []
    batches = iter(loader)
    with gpuwatch.watch(args.run_dir, profile_steps=profile) as gw:
        t_prev = time.perf_counter()
        for _ in range(args.steps):
            t0 = time.perf_counter()
            next(batches)  # planted: DataLoader wait, the device idle
            t1 = time.perf_counter()
            xb = x_host.to(dev)  # planted: pageable H2D copy (on CPU a no-op)
            t2 = time.perf_counter()
            c0 = clock.mark()
            loss = model(xb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            c1 = clock.mark()
            m = xb[: size["tokens"] // 2]
            for _ in range(size["metric_matmuls"]):  # planted: device work outside any module...
                m = (m @ w_metric) * 1e-3
            c2 = clock.mark()
            t3 = time.perf_counter()
            m.float().mean().item()  # ...that the host waits for: a host-device sync
            t4 = time.perf_counter()
            gw.step()
            steps.append(
                {
                    "wall_s": t4 - t_prev,
                    "data_s": t1 - t0,
                    "copy_s": t2 - t1,
                    "item_s": t4 - t3,
                    "compute_dev_ms": clock.ms(c0, c1),
                    "sync_dev_ms": clock.ms(c1, c2),
                }
            )
            t_prev = t4
    return {"size": size, "steps": steps, "run_dir": str(args.run_dir), "profile": profile}


def attach_target(args: argparse.Namespace) -> dict[str, Any]:
    """A watched loop of about half device work, half DataLoader wait, for `--seconds` after READY."""
    import torch

    import gpuwatch

    allow_any_tracer()
    dev = torch.device(args.device)
    size = loop_sizes(
        args.device,
        {"width": 8192, "depth": 4, "tokens": 8192, "data_s": 0.030},
        {"width": 384, "depth": 2, "tokens": 512, "data_s": 0.030},
    )
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = mlp(torch, size["width"], size["depth"], dtype, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    x = torch.randn(size["tokens"], size["width"], dtype=dtype, device=dev)
    loader = torch.utils.data.DataLoader(
        SleepyData(torch, size["data_s"], (1,)), batch_size=None, num_workers=0
    )
    batches = iter(loader)
    step_s: list[float] = []
    end = None
    with gpuwatch.watch(args.run_dir) as gw:
        i = 0
        t_prev = time.perf_counter()
        while end is None or time.monotonic() < end:
            next(batches)
            loss = model(x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            gw.step()
            now = time.perf_counter()
            step_s.append(now - t_prev)
            t_prev = now
            i += 1
            if i == 3:
                end = time.monotonic() + args.seconds
                print(f"READY {os.getpid()}", flush=True)
    return {"size": size, "steps": len(step_s), "median_step_ms": 1e3 * statistics.median(step_s)}


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Bare, watched and profiled windows of one loop, interleaved; per-window median step time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import gpuwatch

    dev = torch.device(args.device)
    size = loop_sizes(
        args.device,
        {"width": 8192, "depth": 4, "tokens": 8192, "in_width": 256, "steps": 30, "warmup": 6},
        {"width": 256, "depth": 3, "tokens": 256, "in_width": 64, "steps": 12, "warmup": 3},
    )
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = mlp(torch, size["width"], size["depth"], dtype, dev, in_width=size["in_width"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    n = size["steps"] + size["warmup"]
    dataset = torch.utils.data.TensorDataset(torch.randn(4 * size["tokens"], size["in_width"], dtype=dtype))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])

    def window(on_step: Any) -> list[float]:
        batches = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(dataset), size["tokens"], drop_last=True
        )  # whole batches by one indexing each: the host's share of a step stays small
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, sampler=batches, pin_memory=dev.type == "cuda"
        )
        times: list[float] = []
        t_prev = time.perf_counter()
        while len(times) < n:
            for (xb,) in loader:
                loss = model(xb.to(dev, non_blocking=True))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                loss.item()
                on_step()
                now = time.perf_counter()
                times.append(now - t_prev)
                t_prev = now
                if len(times) == n:
                    break
        return times[size["warmup"] :]

    modes = ("bare", "watch", "profiler")
    medians: dict[str, list[float]] = {m: [] for m in modes}
    window(lambda: None)  # warm-up: kernels chosen, allocator filled
    with tempfile.TemporaryDirectory(prefix="gpu-proof-overhead-") as tmp:
        for r in range(args.rounds):
            for mode in modes[r % 3 :] + modes[: r % 3]:
                if mode == "bare":
                    times = window(lambda: None)
                elif mode == "watch":
                    with gpuwatch.watch(Path(tmp) / f"run-{r}") as gw:
                        times = window(gw.step)
                else:
                    with profile(activities=activities) as prof:
                        times = window(prof.step)
                medians[mode].append(statistics.median(times))
    return {"size": size, "rounds": args.rounds, "median_step_s": medians}


# ---------------------------------------------------------------------------------------------- decode, runs


def decode(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from reference_trainer.data import (
        EncodedSample,
        decode_batch,
        decode_batch_gpu,
        ensure_dataset,
        gpu_decoder_name,
    )

    decoder = gpu_decoder_name() if args.device == "cuda" else None
    doc: dict[str, Any] = {"decoder": decoder}
    if decoder is None:
        return doc
    root = ensure_dataset(args.data_dir)
    frames = tuple((root / "clips" / "00001" / f"frame-{i:03d}.jpg").read_bytes() for i in range(4))
    batch = [EncodedSample(frames, 32, seed=11)]
    t0 = time.perf_counter()
    on_gpu = decode_batch_gpu(batch, torch.device(args.device), decoder)
    torch.cuda.synchronize()
    doc["gpu_decode_s"] = time.perf_counter() - t0
    on_cpu = decode_batch(batch, reduced=False)
    doc["shape_gpu"], doc["shape_cpu"] = list(on_gpu.shape), list(on_cpu.shape)
    doc["device"] = str(on_gpu.device)
    doc["mean_abs_diff"] = float((on_gpu.cpu() - on_cpu).abs().mean())
    return doc


def inspect(args: argparse.Namespace) -> dict[str, Any]:
    """Spans per kind, memcpy spans by non_blocking, per-metric NVML sample statistics of a run."""
    import numpy as np

    from gpuwatch.store.run_reader import RunReader

    reader = RunReader(args.run_dir)
    try:
        kinds = dict(reader.query("SELECT kind, count(*) FROM spans GROUP BY kind").fetchall())
        memcpy = {"non_blocking": 0, "blocking": 0}
        for (attrs,) in reader.query("SELECT attrs FROM spans WHERE kind = 'memcpy'").fetchall():
            key = "non_blocking" if attrs and json.loads(attrs).get("non_blocking") else "blocking"
            memcpy[key] += 1
        samples: dict[str, Any] = {}
        for metric in NVML_METRICS:
            got = reader.samples(metric)
            values = np.asarray(got["value"], dtype=float)
            finite = values[np.isfinite(values)]
            samples[metric] = {
                "count": int(values.size),
                "non_null": int(finite.size),
                "min": float(finite.min()) if finite.size else None,
                "max": float(finite.max()) if finite.size else None,
                "median": float(np.median(finite)) if finite.size else None,
            }
        return {"ranks": reader.ranks, "span_kinds": kinds, "memcpy": memcpy, "samples": samples}
    finally:
        reader.close()


def hta(args: argparse.Namespace) -> dict[str, Any]:
    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    from hta.trace_analysis import TraceAnalysis

    df = TraceAnalysis(trace_dir=str(args.trace_dir)).get_temporal_breakdown(visualize=False)
    temporal = {
        int(r["rank"]): {
            "idle": float(r["idle_time_pctg"]),
            "compute": float(r["compute_time_pctg"]),
            "non_compute": float(r["non_compute_time_pctg"]),
        }
        for _, r in df.iterrows()
    }
    return {"temporal": temporal, "seconds": time.perf_counter() - t0}


PROGRAMS = {
    "env": env,
    "data": data,
    "planted": planted,
    "attach-target": attach_target,
    "overhead": overhead,
    "decode": decode,
    "inspect": inspect,
    "hta": hta,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_proof_programs.py", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=sorted(PROGRAMS))
    p.add_argument("--out", required=True, help="where the figures go (JSON)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--run-dir", help="gpuwatch run directory (planted, attach-target, inspect)")
    p.add_argument("--data-dir", help="the reference trainer's data root (data, decode)")
    p.add_argument("--trace-dir", help="folder with one Kineto trace (hta)")
    p.add_argument("--steps", type=int, default=40, help="training steps (planted)")
    p.add_argument(
        "--profile", default=None, metavar="A:B", help="torch.profiler over steps A..B-1 (planted)"
    )
    p.add_argument("--seconds", type=float, default=20.0, help="how long to run after READY (attach-target)")
    p.add_argument("--rounds", type=int, default=6, help="rounds of the three modes (overhead)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cpu" and args.kind in ("planted", "attach-target", "overhead"):
        import torch

        torch.set_num_threads(1)  # the rehearsal shares few cores with gpuwatch's threads and other jobs
    doc = PROGRAMS[args.kind](args)
    write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
