"""How much `gpuwatch attach` slows the trainer it samples, against py-spy's default (blocking) mode.

One real CPU training loop (forward/backward/SGD steps of ~20 ms, timed by itself with perf_counter) runs
the whole time; the script rotates through three modes in several rounds so drift and neighbours' load hit
every mode alike:
  bare      nothing attached
  attach    `gpuwatch attach PID --rate 100` (py-spy --nonblocking --idle --subprocesses, chunked, plus the
            /proc and NVML samplers)
  pyspy-nb  `py-spy record --nonblocking --idle --subprocesses --rate 100` alone (py-spy's share of attach)
  blocking  `py-spy record --idle --rate 100 --pid PID` (py-spy's default: it stops the target's threads for
            each sample)
and prints the target's median step time per mode and the ratios to bare. Target: attach < 1% slowdown.

    python benchmarks/attach_overhead.py [--rounds 3] [--phase-s 8] [--width 512]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
WARMUP_S = 3.0  # after starting a sampler: interpreter start-up, py-spy's attach and first chunk
MODES = ("bare", "attach", "pyspy-nb", "blocking")


def target(log_path: str, width: int, depth: int, batch: int) -> None:
    """The trainer: one line per step, `start_unix_ns wall_ns cpu_ns`, unbuffered."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers)
    loss_fn = torch.nn.MSELoss()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(batch, width)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    print(os.getpid(), flush=True)
    while True:
        wall = time.time_ns()
        t0 = time.perf_counter()
        c0 = time.thread_time_ns()
        loss = loss_fn(net(x), x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        dt = time.perf_counter() - t0
        os.write(fd, f"{wall} {int(dt * 1e9)} {time.thread_time_ns() - c0}\n".encode())


def steps_in(log: Path, lo_ns: int, hi_ns: int) -> np.ndarray:
    """(wall ms, CPU ms) of the steps that started inside [lo, hi), one row per step."""
    data = np.loadtxt(log, dtype=np.int64, ndmin=2)
    keep = (data[:, 0] >= lo_ns) & (data[:, 0] < hi_ns)
    return data[keep, 1:] / 1e6


def run_mode(mode: str, pid: int, phase_s: float, tmp: Path, n: int) -> tuple[int, int]:
    """Run one mode for `phase_s` seconds; returns the wall-clock window to read steps from."""
    if mode == "bare":
        lo = time.time_ns()
        time.sleep(phase_s)
        return lo, time.time_ns()
    if mode == "attach":
        cmd = [sys.executable, "-m", "gpuwatch", "attach", str(pid), "--rate", "100", "--quiet"]
        cmd += ["--duration", str(phase_s + WARMUP_S), "--out", str(tmp / f"run{n}"), "--json"]
    else:  # py-spy alone, the same flags as attach ("pyspy-nb") or its default blocking mode
        cmd = ["py-spy", "record", "--rate", "100", "--pid", str(pid), "--format", "raw", "--idle"]
        cmd += ["--duration", str(int(round(phase_s + WARMUP_S))), "--output", str(tmp / f"{mode}{n}.txt")]
        if mode == "pyspy-nb":
            cmd += ["--nonblocking", "--subprocesses"]
    start = time.time_ns()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    time.sleep(WARMUP_S)
    lo = time.time_ns()
    time.sleep(phase_s - 0.5)
    hi = time.time_ns()
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed: {err.decode(errors='replace')[-500:]}")
    assert hi > start
    return lo, hi


def raise_priority(pid: int, nice: int) -> str:
    """Give the trainer priority over the machine's other load (a dedicated training node's situation:
    samplers then use spare CPU instead of the trainer's). Root only; otherwise say so and go on."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        return f"trainer at nice {nice}"
    except (PermissionError, OSError):
        return "trainer at default priority (not root)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--phase-s", type=float, default=8.0)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--nice", type=int, default=-10, help="trainer priority (root); 0 to leave it as is")
    p.add_argument("--target", metavar="LOG", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.target:
        target(args.target, args.width, args.depth, args.batch)
        return

    with tempfile.TemporaryDirectory(prefix="attach-overhead-") as tmp_s:
        tmp = Path(tmp_s)
        log = tmp / "steps.txt"
        cmd = [sys.executable, str(HERE), "--target", str(log), "--width", str(args.width)]
        cmd += ["--depth", str(args.depth), "--batch", str(args.batch)]
        trainer = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            pid = int(trainer.stdout.readline())  # type: ignore[union-attr]
            priority = raise_priority(pid, args.nice) if args.nice else "trainer at default priority"
            time.sleep(2.0)  # warm caches and allocator
            per_mode: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
            for r in range(args.rounds):
                k = r % len(MODES)
                order = MODES[k:] + MODES[:k]  # rotate so no mode always follows another
                for mode in order:
                    lo, hi = run_mode(mode, pid, args.phase_s, tmp, r)
                    got = steps_in(log, lo, hi)
                    per_mode[mode].append(got)
                    print(
                        f"round {r + 1} {mode:8s}: {len(got):4d} steps, median wall {np.median(got[:, 0]):.3f} ms, "
                        f"CPU {np.median(got[:, 1]):.3f} ms",
                        flush=True,
                    )
        finally:
            trainer.kill()
            trainer.wait()

    wall = {m: float(np.median(np.concatenate(v)[:, 0])) for m, v in per_mode.items()}
    cpu = {m: float(np.median(np.concatenate(v)[:, 1])) for m, v in per_mode.items()}
    print()
    print(
        f"target: {args.width}x{args.depth} MLP, batch {args.batch}, 1 torch thread, {priority}; "
        f"{args.rounds} rounds x {args.phase_s:g} s per mode, modes rotated; medians over all rounds"
    )
    print(f"  {'mode':8s} {'wall ms':>9s} {'ratio':>7s} {'CPU ms':>9s} {'ratio':>7s}  steps")
    for mode in MODES:
        steps = sum(len(a) for a in per_mode[mode])
        print(
            f"  {mode:8s} {wall[mode]:9.3f} {wall[mode] / wall['bare']:7.4f} "
            f"{cpu[mode]:9.3f} {cpu[mode] / cpu['bare']:7.4f}  {steps}"
        )
    rounds = [
        float(np.median(a[:, 0])) / float(np.median(b[:, 0]))
        for a, b in zip(per_mode["attach"], per_mode["bare"])
    ]
    print(f"  attach/bare wall per round: {', '.join(f'{x:.4f}' for x in rounds)}")
    print(
        f"slowdown of the median step: gpuwatch attach (nonblocking, 100 Hz) "
        f"{100 * (wall['attach'] / wall['bare'] - 1):+.2f}%; py-spy alone non-blocking "
        f"{100 * (wall['pyspy-nb'] / wall['bare'] - 1):+.2f}%; py-spy default blocking mode (100 Hz) "
        f"{100 * (wall['blocking'] / wall['bare'] - 1):+.2f}%"
    )


if __name__ == "__main__":
    main()
