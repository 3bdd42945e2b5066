"""What `gpuwatch run` adds to a training job, against the same command run bare, in one script.

    python benchmarks/run_overhead.py [--rounds 6] [--steps 40] [--batch 64] [--width 1024]

One CPU training script (DataLoader over in-memory tensors, a 4-layer MLP, AdamW, a loss.item() per step;
`torch.set_num_threads(1)`; the loop of benchmarks/overhead.py), written to a temporary file and unaware of
gpuwatch, runs as its own process in two modes, alternated round by round (in rotating order) so drift and
other processes' noise hit both alike:

  bare  python workload.py
  run   gpuwatch run -- python workload.py   (the watch's defaults: hooks, 50 Hz stack sampler, /proc and
        NVML samplers, 1 s flushes; steps from optimizer steps)

The workload times each of its steps with time.perf_counter (the first steps are warm-up and dropped) and
measures its process CPU time over them (all threads: gpuwatch's sampler and writer threads included) and
its training thread's CPU time (what the hooks add to the loop itself). Prints per mode the median and
10th-percentile step time (the steps other processes disturbed least), both CPU times per step, the whole
command's wall time (start-up included: the bootstrap, the watch's imports and start, the final flush), and
the ratios run/bare: the median of the per-round ratios, the figure to quote. On a shared machine the CPU
times resolve small differences; wall times from separate processes differ by 5-10% for no reason of ours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 5

WORKLOAD = """
import json, sys, time
import torch
from torch.utils.data import DataLoader, TensorDataset

steps, batch, width, warmup = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, width), torch.nn.GELU(),
    torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, 10),
)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
n = batch * (steps + warmup)
loader = DataLoader(TensorDataset(torch.randn(n, width), torch.randint(0, 10, (n,))), batch_size=batch, shuffle=True)
times, cpu0, thread0, t_prev = [], 0.0, 0.0, time.perf_counter()
for i, (x, y) in enumerate(loader):
    if i == warmup:
        cpu0, thread0, t_prev = time.process_time(), time.thread_time(), time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()
    now = time.perf_counter()
    if i >= warmup:
        times.append(now - t_prev)
    t_prev = now
print(json.dumps({
    "step_s": times,
    "cpu_per_step_s": (time.process_time() - cpu0) / len(times),
    "thread_cpu_per_step_s": (time.thread_time() - thread0) / len(times),
}))
"""


def run_once(mode: str, workload: Path, args: argparse.Namespace, out_dir: Path) -> dict[str, float]:
    job = [
        sys.executable,
        str(workload),
        str(args.steps),
        str(args.batch),
        str(args.width),
        str(WARMUP_STEPS),
    ]
    cmd = (
        job
        if mode == "bare"
        else [sys.executable, "-m", "gpuwatch", "run", "-q", "--out", str(out_dir), "--", *job]
    )
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{mode} run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    steps = sorted(doc["step_s"])
    return {
        "step_ms": 1e3 * statistics.median(steps),
        "p10_ms": 1e3 * steps[len(steps) // 10],
        "cpu_ms": 1e3 * doc["cpu_per_step_s"],
        "thread_ms": 1e3 * doc["thread_cpu_per_step_s"],
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=1024)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="gpuwatch-run-overhead-") as tmp:
        workload = Path(tmp) / "workload.py"
        workload.write_text(WORKLOAD)
        results: dict[str, list[dict[str, float]]] = {"bare": [], "run": []}
        for r in range(args.rounds):
            order = ["bare", "run"] if r % 2 == 0 else ["run", "bare"]
            for mode in order:
                results[mode].append(run_once(mode, workload, args, Path(tmp) / f"run{r}"))
            b, w = results["bare"][-1], results["run"][-1]
            print(
                f"round {r + 1}/{args.rounds}: step {b['step_ms']:.2f} -> {w['step_ms']:.2f} ms, "
                f"cpu/step {b['cpu_ms']:.2f} -> {w['cpu_ms']:.2f} ms, command {b['wall_s']:.1f} -> "
                f"{w['wall_s']:.1f} s",
                flush=True,
            )

    def ratio(key: str) -> float:
        return statistics.median(w[key] / b[key] for b, w in zip(results["bare"], results["run"]))

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in results[mode])

    print()
    print(f"{'':12s} {'bare':>10s} {'gpuwatch run':>13s} {'ratio (median of rounds)':>26s}")
    for key, label, unit in (
        ("step_ms", "step", "ms"),
        ("p10_ms", "p10 step", "ms"),
        ("cpu_ms", "CPU/step", "ms"),
        ("thread_ms", "loop CPU", "ms"),
        ("wall_s", "command", "s"),
    ):
        print(
            f"{label:12s} {med('bare', key):8.2f}{unit:>2s} {med('run', key):11.2f}{unit:>2s} {ratio(key):26.3f}"
        )
    print(
        f"\ngpuwatch run / bare: step time x{ratio('step_ms'):.3f} (10th percentile x{ratio('p10_ms'):.3f}), "
        f"process CPU per step x{ratio('cpu_ms'):.3f}, training-thread CPU per step x{ratio('thread_ms'):.3f}, "
        f"whole command x{ratio('wall_s'):.3f} ({args.rounds} rounds of {args.steps} steps)"
    )


if __name__ == "__main__":
    main()
