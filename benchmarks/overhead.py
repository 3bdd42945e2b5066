"""What `gpuwatch.watch` adds to a training step, next to torch.profiler, measured in one script.

    python benchmarks/overhead.py [--rounds 12] [--steps 30] [--batch 64] [--width 1024]

One CPU training loop (DataLoader over in-memory tensors, a 4-layer MLP, AdamW, a loss.item() per step;
`torch.set_num_threads(1)`, steps of roughly 10-50 ms) runs in three modes, interleaved round by round in
rotating order so drift and noise from other processes hit all modes alike:

  bare      the loop alone
  watch     inside `gpuwatch.watch(run_dir)` with its defaults (hooks, 50 Hz stack sampler, /proc + NVML
            samplers, 1 s flushes)
  profiler  inside `torch.profiler.profile(activities=[CPU])` with `prof.step()` per step (recording only:
            the trace export after the loop is not counted)

Each step is timed by the script itself with time.perf_counter; the first steps of every block are warm-up
and dropped. Prints the median step time per mode and the ratios to bare (overall medians, and the median of
the per-round ratios), and the process CPU time per step (all threads: gpuwatch's sampler and writer
threads included), which other processes on a shared machine disturb much less than wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwatch  # noqa: E402

WARMUP_STEPS = 5


def build(batch: int, width: int, steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width), torch.nn.GELU(),
        torch.nn.Linear(width, width), torch.nn.GELU(),
        torch.nn.Linear(width, width), torch.nn.GELU(),
        torch.nn.Linear(width, 10),
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = TensorDataset(
        torch.randn(batch * (steps + WARMUP_STEPS), width),
        torch.randint(0, 10, (batch * (steps + WARMUP_STEPS),)),
    )
    return model, opt, DataLoader(data, batch_size=batch, shuffle=True)


def loop(model, opt, loader, on_step) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    """Per-step wall times (s) after warm-up, and process CPU seconds per step over those steps."""
    times = []
    cpu0 = 0.0
    t_prev = time.perf_counter()
    losses = 0.0
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses += loss.item()
        on_step()
        now = time.perf_counter()
        times.append(now - t_prev)
        t_prev = now
        if len(times) == WARMUP_STEPS:
            cpu0 = time.process_time()
    measured = times[WARMUP_STEPS:]
    return measured, (time.process_time() - cpu0) / max(len(measured), 1)


BACKGROUND_CPU_S: list[float] = []
"""CPU seconds used by gpuwatch's own threads (sampler, writer, /proc, NVML), one entry per watch block."""
WATCH_WALL_S: list[float] = []


def thread_cpu_s(native_ids: list[int]) -> float:
    """utime + stime of some threads of this process, from /proc (10 ms resolution)."""
    ticks = 0
    for tid in native_ids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def gpuwatch_threads(gw: gpuwatch.Watcher) -> list[int]:
    threads = [getattr(c, "_thread", None) for c in gw._collectors] + [gw.writer._thread]
    return [t.native_id for t in threads if t is not None and t.native_id is not None]


def run_mode(mode: str, args: argparse.Namespace, tmp: Path, block: int) -> tuple[list[float], float]:
    model, opt, loader = build(args.batch, args.width, args.steps)
    if mode == "bare":
        return loop(model, opt, loader, lambda: None)
    if mode == "watch":
        t0 = time.perf_counter()
        with gpuwatch.watch(tmp / f"run-{block}") as gw:
            result = loop(model, opt, loader, gw.step)
            BACKGROUND_CPU_S.append(thread_cpu_s(gpuwatch_threads(gw)))
            WATCH_WALL_S.append(time.perf_counter() - t0)
            return result
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        return loop(model, opt, loader, prof.step)


def training_thread_cost_us(rounds: int = 5, steps: int = 300) -> float:
    """gpuwatch's own work on the training thread per step, in µs: a tiny loop (well under a millisecond
    per step) with the hooks on and the samplers off, against the same loop bare, in training-thread CPU
    time (`time.thread_time`), which preemption by other processes does not inflate."""
    data = TensorDataset(torch.randn(4 * steps, 16), torch.randn(4 * steps, 16))
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    cost: dict[str, list[float]] = {"bare": [], "watch": []}
    with tempfile.TemporaryDirectory(prefix="gpuwatch-overhead-") as tmp_name:
        for r in range(rounds):
            for mode in ("bare", "watch") if r % 2 == 0 else ("watch", "bare"):
                watcher = (
                    gpuwatch.watch(Path(tmp_name) / f"tiny-{r}", sample_hz=0, system_samplers=False)
                    if mode == "watch"
                    else None
                )
                gw = watcher.start() if watcher is not None else None
                it = iter(DataLoader(data, batch_size=4))
                for _ in range(WARMUP_STEPS):
                    x, y = next(it)
                c0 = time.thread_time()
                for x, y in it:
                    torch.nn.functional.mse_loss(model(x), y).backward()
                    opt.step()
                    opt.zero_grad()
                    if gw is not None:
                        gw.step()
                cost[mode].append((time.thread_time() - c0) / (steps - WARMUP_STEPS))
                if watcher is not None:
                    watcher.close()
    return (statistics.median(cost["watch"]) - statistics.median(cost["bare"])) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=1024)
    args = p.parse_args()
    torch.set_num_threads(1)
    load_before = _loadavg()
    modes = ["bare", "watch", "profiler"]
    per_mode: dict[str, list[float]] = {m: [] for m in modes}
    per_round: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="gpuwatch-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        run_mode("bare", args, tmp, -1)  # warm the allocator and the code paths once
        for r in range(args.rounds):
            order = modes[r % 3 :] + modes[: r % 3]
            for mode in order:
                times, cpu_per_step = run_mode(mode, args, tmp, r)
                cpu[mode].append(cpu_per_step)
                per_mode[mode].extend(times)
                per_round[mode].append(statistics.median(times))
            print(
                f"round {r + 1}/{args.rounds}: "
                + "  ".join(f"{m} {per_round[m][-1] * 1e3:.2f} ms" for m in modes),
                flush=True,
            )
    median = {m: statistics.median(v) for m, v in per_mode.items()}
    print()
    print(
        f"machine: {os.cpu_count()} cores, load average {load_before} before, {_loadavg()} after (1-minute)"
    )
    print(
        f"median step time over {len(per_mode['bare'])} steps per mode (batch {args.batch}, width {args.width}):"
    )
    for m in modes:
        print(f"  {m:9s} {median[m] * 1e3:8.2f} ms")
    p10 = {m: statistics.quantiles(v, n=10)[0] for m, v in per_mode.items()}
    print(
        "10th-percentile step time (the steps other processes disturbed least): "
        + "  ".join(f"{m} {p10[m] * 1e3:.2f} ms" for m in modes)
        + "  ->  "
        + "  ".join(f"{m}/bare {p10[m] / p10['bare']:.4f}" for m in ("watch", "profiler"))
    )
    for m in ("watch", "profiler"):
        paired = statistics.median(a / b for a, b in zip(per_round[m], per_round["bare"], strict=True))
        print(
            f"{m}/bare: {median[m] / median['bare']:.4f} (overall medians)   "
            f"{paired:.4f} (median of per-round ratios)   -> {(median[m] / median['bare'] - 1) * 100:+.2f}%"
        )
    hook_us = training_thread_cost_us()
    background_pct = 100.0 * sum(BACKGROUND_CPU_S) / max(sum(WATCH_WALL_S), 1e-9)
    print()
    print("where watch's cost comes from:")
    print(
        f"  training thread: {hook_us:.1f} µs per step (hooks + gw.step(), tiny-loop thread CPU time) "
        f"= {100 * hook_us / (median['bare'] * 1e6):.3f}% of the bare median step"
    )
    print(f"  gpuwatch threads (stack sampler, writer, /proc, NVML): {background_pct:.2f}% of one core")
    cpu_median = {m: statistics.median(v) for m, v in cpu.items()}
    print(
        "process CPU time per step (median of blocks): "
        + "  ".join(f"{m} {cpu_median[m] * 1e3:.2f} ms" for m in modes)
    )
    for m in ("watch", "profiler"):
        print(
            f"{m}/bare CPU: {cpu_median[m] / cpu_median['bare']:.4f} -> {(cpu_median[m] / cpu_median['bare'] - 1) * 100:+.2f}%"
        )


def _loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
