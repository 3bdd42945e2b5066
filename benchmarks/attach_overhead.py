"""How much `gpuwatch attach` slows the trainer it samples, against py-spy alone and py-spy's blocking default.

Default design (`--design windows`), the way attach is used on a training node: ONE real CPU training loop
(forward/backward/SGD on 1 torch thread, steps of ~20 ms, each timed by the trainer itself with perf_counter
and appended with its start time to a log) runs the whole time, and the script alternates windows of
`--window-s` seconds over it:

    bare, M1, bare, M2, bare, M3, bare, M1', ...   (M = the sampled modes, order rotated every round)

so every sampled window has a bare window right before and right after it. A sampled window starts when the
sampler says it is sampling, plus `--settle-s` (py-spy's attach, gpuwatch's start-up); the sampler runs a
little past the window's end; the next bare window starts `--settle-s` after the sampler exited. Only steps
entirely inside a window count. Each sampled window's median (and 10th-percentile) step is divided by the
geometric mean of its two bare neighbours' (drift of the machine cancels to first order), and the ratios are
averaged geometrically over rounds. The noise floor is the same ratio for each bare window against the bare
windows either side of it (two slots away, so if anything it overstates the noise). The machine's second core
is left to the samplers (as on a GPU node with many cores); nothing is pinned unless `--pin` (trainer on CPU
0, samplers on the others). Modes:
  attach    `gpuwatch attach PID --rate 100 --duration S` (py-spy --nonblocking --idle on the trainer in
            2 s chunks, one sparser py-spy per DataLoader worker, the /proc and NVML samplers and the Python
            side that classifies and writes the run)
  pyspy-nb  `py-spy record --nonblocking --idle --subprocesses --rate 100 --format chrometrace` alone (one
            run for the whole window: py-spy's share of attach)
  blocking  the same py-spy command without --nonblocking: py-spy's default mode, which stops every thread
            of the target for each sample
Printed per mode (window / its bare neighbours, geometric mean over windows, +- standard error):
  median step, p10 step   the wall-clock step time ratios the issue asks for
  CPU/step                the trainer thread's own CPU time per step (thread_time)
  off-CPU                 mean (wall - CPU time) per step minus the neighbours', % of the step: the time the
                          trainer was stopped (ptrace) or preempted. Immune to the machine's speed drift, so it
                          resolves a 0.05% cost where the ratios cannot
  sys ms, faults          the trainer thread's system CPU and minor page faults per step minus the neighbours'
  sampler CPU, life       the sampler processes' CPU (the sampler and its descendants, reaped ones included)
                          inside the windows, and over their whole run (start-up, attach's closing summary)
plus the CPU other jobs used in each window (/proc/stat minus trainer and sampler), a summary of the quiet
windows only when some were not, and the load average. Target for attach: under 1% slowdown.

Reading it on a small VM: the trainer's speed wanders +-3% from one window to the next with nothing else
running (the host), so one run resolves a mode's median ratio to about +-1% (the printed standard error, from
the windows' spread pooled over the sampled modes) and runs differ by about +-2%; off-CPU does not wander.
The 1000 Hz modes (`--modes attach-1000hz,pyspy-nb-1000hz,blocking-1000hz`) magnify per-sample costs tenfold.
The trainer runs with `--malloc steady` (its large tensors stay in glibc's heap, so it takes no page faults per
step): as is, glibc maps and unmaps them every step, and that churn alone doubles the window-to-window spread.

Twin design (`--design twins`): two identical trainers run at once, one sampled and one control, roles
swapped every round; each ratio is sampled/control at the same moment. On a 2-core machine both cores are
then saturated, so the sampler competes with the trainers for CPU: its ratios carry +-10% noise and the
kernel favours a task that keeps getting stopped and resumed (blocking py-spy) over its never-sleeping twin,
so the blocking row can come out *faster* there. Useful where the machine's load swings faster than a window.

    python benchmarks/attach_overhead.py [--rounds 8] [--window-s 4] [--settle-s 1] [--modes ...] [--pin]
    python benchmarks/attach_overhead.py --design twins [--rounds 4] [--window-s 8] [--nice N]

Busy hosts (issue 9), same windows design: `--workload saturated` (a trainer whose DataLoader workers decode
large JPEGs and keep both cores busy; its iteration = waiting for a batch + a small step) and `--workload
competing` (the MLP trainer beside a CPU-bound process this script starts), e.g.
    python benchmarks/attach_overhead.py --workload saturated --batch 4 --window-s 6 \
        --modes attach,attach-noyield,pyspy-nb
pyspy-nb is what attach ran before it yielded (one py-spy following the children, normal priority).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
WARMUP_S = 3.0  # twins: after starting a sampler: interpreter start-up, py-spy's attach, the first chunk
MODES = ("bare", "attach", "pyspy-nb", "blocking")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLED_MODES = MODES[1:]
SAMPLERS: dict[str, tuple[str, list[str]]] = {
    "attach": ("attach", []),
    "pyspy-nb": ("py-spy", ["--nonblocking"]),
    "blocking": ("py-spy", []),
    # for finding where a cost comes from (`--modes attach,attach-nosub,...`); 1000 Hz magnifies per-sample
    # costs tenfold, so a cost hidden in the noise at 100 Hz shows there
    "attach-nosub": ("attach", ["--no-subprocesses"]),
    # attach at normal priority and without a CPU budget (what yielding to the job buys)
    "attach-noyield": ("attach", ["--no-yield", "--cpu-budget", "0"]),
    "attach-chunk8": ("attach", ["--chunk", "8"]),
    # the saturated-host budget (all of sampling's CPU, percent of one core) other than the default 2.5
    "attach-budget3": ("attach", ["--cpu-budget", "3"]),
    "attach-budget5": ("attach", ["--cpu-budget", "5"]),
    "attach-budget8": ("attach", ["--cpu-budget", "8"]),
    # attach barely sampling (5 Hz, workers 1 Hz): what attach costs besides its samples (its processes'
    # wake-ups, start-up, the /proc sampler, the writer)
    "attach-rate5": ("attach", ["--rate", "5", "--worker-rate", "1"]),
    # what a sample costs the job: py-spy on the training process alone at the rate attach keeps to on the
    # saturated host, against a process of the same CPU footprint that never reads the target (it wakes as
    # often and spins as long as py-spy's 0.7 ms a sample): the same slowdown says it is the CPU and the
    # wake-ups, a smaller one says it is py-spy's reads of the target's memory
    "pyspy-main-37": ("py-spy-main", ["--nonblocking", "--rate", "37"]),
    "burn-37": ("burn", ["--rate", "37", "--spin-ms", "0.7"]),
    "attach-1000hz": ("attach", ["--rate", "1000"]),
    "pyspy-nb-1000hz": ("py-spy", ["--nonblocking", "--rate", "1000"]),
    "blocking-1000hz": ("py-spy", ["--rate", "1000"]),
    # attach through its Python API without the /proc (and NVML) samplers: not a CLI option
    "attach-noproc": ("attach-api", ["--no-system-samplers"]),
    "attach-noproc-1000hz": ("attach-api", ["--no-system-samplers", "--rate", "1000"]),
    # attach's /proc sampler alone, 100 times a second instead of once (its cost magnified 100x)
    "proc-100hz": ("proc-api", ["--interval", "0.01"]),
}
"""Windows design: sampled mode -> (which tool, extra arguments on top of attach's defaults)."""
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
"""`--malloc steady`: glibc serves the trainer's large tensors from its heap and keeps freed memory."""
TAIL_S = 0.5
"""Windows design: the sampler is asked to run this much past the window's end (timer slack)."""
PYSPY_FLAGS = ["--idle", "--subprocesses", "--format", "chrometrace"]
"""py-spy's flags in attach (gpuwatch.attach / collectors.pyspy.pyspy_sampler), less --nonblocking."""


def target(log_path: str, width: int, depth: int, batch: int, cpu: int | None = None) -> None:
    """The trainer: one line per step, `start_unix_ns wall_ns cpu_ns`, unbuffered; on CPU `cpu` if given."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
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


class JpegFolder:
    """An ImageFolder-style Dataset: each item decodes a large JPEG with PIL, crops, resizes and normalises
    it (what torchvision's transforms do, in numpy); the decode keeps a DataLoader worker busy."""

    def __init__(self, size: int, n: int = 16) -> None:
        import io

        from PIL import Image

        rng = np.random.default_rng(0)
        self.blobs = []
        for _ in range(n):
            img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            self.blobs.append(buf.getvalue())

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, i: int):  # noqa: ANN204 - a torch tensor
        import io

        import torch
        from PIL import Image

        img = Image.open(io.BytesIO(self.blobs[i % len(self.blobs)])).convert("RGB")
        w, h = img.size
        img = img.crop((w // 8, h // 8, w - w // 8, h - h // 8)).resize((112, 112))
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = (x - 0.45) / 0.225
        return torch.from_numpy(x.transpose(2, 0, 1).copy())


ITERS_PER_LINE = 4


def target_saturated(log_path: str, workers: int, image: int, batch: int) -> None:
    """The busy-host trainer: DataLoader workers decoding large JPEGs keep every core busy (the training
    thread waits on them); one line per ITERS_PER_LINE iterations (batch fetch + step), as `target` writes."""
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(10)
    )
    net(torch.zeros(1, 3, 112, 112))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    loader = DataLoader(JpegFolder(image), batch_size=batch, num_workers=workers, persistent_workers=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    it = iter(loader)
    print(os.getpid(), flush=True)
    while True:
        wall = time.time_ns()
        t0 = time.perf_counter()
        c0 = time.thread_time_ns()
        # one line per ITERS_PER_LINE iterations: a single iteration either finds a prefetched batch or
        # waits for one, so its median jumps between two modes from window to window
        for _ in range(ITERS_PER_LINE):
            x = next(it)
            loss = net(x).square().mean()
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


def sampler_cmd(mode: str, pid: int, seconds: float, out: Path) -> list[str] | None:
    if mode == "bare":
        return None
    if mode == "attach":
        return [sys.executable, "-m", "gpuwatch", "attach", str(pid), "--rate", "100", "--quiet",
                "--duration", f"{seconds:g}", "--out", str(out)]  # fmt: skip
    cmd = ["py-spy", "record", "--rate", "100", "--pid", str(pid), "--format", "raw", "--idle"]
    cmd += ["--duration", str(int(round(seconds))), "--output", str(out)]
    return cmd + (["--nonblocking", "--subprocesses"] if mode == "pyspy-nb" else [])


def run_phase(mode: str, pid: int, phase_s: float, out: Path) -> tuple[int, int, float, float]:
    """Sample `pid` in `mode` (or nothing). Returns the wall-clock window in which it was sampling, and the
    sampler's own CPU seconds (its process and every process it reaped: py-spy) and wall seconds."""
    cmd = sampler_cmd(mode, pid, phase_s + WARMUP_S, out)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = (
        None
        if cmd is None
        else subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    )
    time.sleep(WARMUP_S)
    lo = time.time_ns()
    time.sleep(phase_s - 0.5)
    hi = time.time_ns()
    if proc is not None:
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} failed: {err.decode(errors='replace')[-500:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return lo, hi, cpu_s, time.monotonic() - t0


def raise_priority(pid: int, nice: int) -> bool:
    """Give both twins priority over the machine's other load (root only). Off by default: on a box with no
    spare core the samplers then starve, sample late and look cheaper than they are."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)
        return True
    except OSError:
        return False


def run_twins(args: argparse.Namespace) -> None:
    """The twin design: two trainers at once, one sampled and one control, roles swapped every round."""
    ratios: dict[str, list[tuple[float, float, float]]] = {m: [] for m in MODES}
    steps_ms: dict[str, list[float]] = {m: [] for m in MODES}
    sampler_cpu: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="attach-overhead-") as tmp_s:
        tmp = Path(tmp_s)
        logs = [tmp / "twin0.txt", tmp / "twin1.txt"]
        twins = []
        for log in logs:
            cmd = [sys.executable, str(HERE), "--target", str(log), "--width", str(args.width)]
            cmd += ["--depth", str(args.depth), "--batch", str(args.batch)]
            twins.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
        try:
            pids = [int(t.stdout.readline()) for t in twins]  # type: ignore[union-attr]
            niced = args.nice != 0 and all(raise_priority(pid, args.nice) for pid in pids)
            time.sleep(3.0)  # warm caches and allocators
            for r in range(args.rounds):
                k = r % len(MODES)
                for mode in MODES[k:] + MODES[:k]:  # rotated: no mode always follows another
                    s = (r + MODES.index(mode)) % 2  # each mode samples twin 0 and twin 1 in turn
                    lo, hi, cpu_s, wall_s = run_phase(mode, pids[s], args.window_s, tmp / f"{mode}-{r}")
                    sampler_cpu[mode].append((cpu_s, wall_s))
                    sampled, control = steps_in(logs[s], lo, hi), steps_in(logs[1 - s], lo, hi)
                    wall = float(np.median(sampled[:, 0]) / np.median(control[:, 0]))
                    fast = float(np.percentile(sampled[:, 0], 10) / np.percentile(control[:, 0], 10))
                    cpu = float(np.median(sampled[:, 1]) / np.median(control[:, 1]))
                    ratios[mode].append((wall, fast, cpu))
                    steps_ms[mode].append(float(np.median(sampled[:, 0])))
                    print(
                        f"round {r + 1} {mode:8s} twin {s}: {len(sampled):4d} steps, median "
                        f"{np.median(sampled[:, 0]):7.3f} ms vs control {np.median(control[:, 0]):7.3f} ms "
                        f"-> median x{wall:.4f}, p10 x{fast:.4f}, CPU x{cpu:.4f}",
                        flush=True,
                    )
        finally:
            for t in twins:
                t.kill()
                t.wait()

    print()
    print(
        f"twins: {args.width}x{args.depth} MLP, batch {args.batch}, 1 torch thread each"
        f"{', nice ' + str(args.nice) if niced else ''}; {args.rounds} rounds x {args.window_s:g} s per mode"
    )
    print("  ratios sampled/control, geometric mean over rounds (twin 0 and twin 1 biases cancel):")
    print(f"  {'mode':8s}  {'step ms':>8s}  {'median (min..max)':>24s}  {'p10 (min..max)':>24s}  {'CPU':>7s}")
    gm: dict[str, tuple[float, float, float]] = {}
    for mode in MODES:
        arr = np.array(ratios[mode])
        g = np.exp(np.log(arr).mean(axis=0))
        gm[mode] = (float(g[0]), float(g[1]), float(g[2]))
        print(
            f"  {mode:8s}  {np.median(steps_ms[mode]):8.2f}  {g[0]:8.4f} ({arr[:, 0].min():.3f}..{arr[:, 0].max():.3f})"
            f"  {g[1]:8.4f} ({arr[:, 1].min():.3f}..{arr[:, 1].max():.3f})  {g[2]:7.4f}"
        )
    for mode in MODES[1:]:
        cpu_s = sum(c for c, _ in sampler_cpu[mode])
        wall_s = sum(w for _, w in sampler_cpu[mode])
        print(
            f"  {mode} itself used {cpu_s:.2f} CPU s in {wall_s:.1f} s = {100 * cpu_s / wall_s:.1f}% of one core"
        )
    for i, what in ((0, "median"), (1, "p10 (fastest steps: what sampling adds to every step)")):
        print(
            f"{what} step slowdown vs the unsampled twin: gpuwatch attach (non-blocking, 100 Hz) "
            f"{100 * (gm['attach'][i] - 1):+.2f}%, py-spy alone non-blocking {100 * (gm['pyspy-nb'][i] - 1):+.2f}%, "
            f"py-spy default blocking {100 * (gm['blocking'][i] - 1):+.2f}%; noise floor (bare twins) "
            f"{100 * (gm['bare'][i] - 1):+.2f}%"
        )


# ---- windows design: one trainer, alternating bare and sampled windows ---------------------------------


class StepLog:
    """The trainer's step log, read incrementally (the script never re-parses what it has read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self._blocks: list[np.ndarray] = []

    def between(self, lo_ns: int, hi_ns: int) -> np.ndarray:
        """(wall ms, CPU ms) of the steps that started and ended inside [lo_ns, hi_ns), one row per step."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if cut:
            self._blocks.append(np.array(data[:cut].split(), dtype=np.int64).reshape(-1, 3))
        rows = np.concatenate(self._blocks) if self._blocks else np.zeros((0, 3), np.int64)
        keep = (rows[:, 0] >= lo_ns) & (rows[:, 0] + rows[:, 1] <= hi_ns)
        return rows[keep, 1:] / 1e6


def machine_ticks() -> tuple[int, int]:
    """(busy, steal) clock ticks of the whole machine since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
    return user + nice + system + irq + softirq, steal


def proc_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


@dataclass
class Window:
    """One measured window: which mode, when, and what the machine did meanwhile."""

    mode: str
    round: int
    lo_ns: int
    hi_ns: int
    foreign_cores: float
    """CPU of everything but the trainer and the sampler inside the window (other jobs), in cores."""
    sampler_cores: float
    """CPU of the sampler processes (the sampler and its live or reaped descendants) inside the window."""
    steal_cores: float
    """CPU the hypervisor took from this VM inside the window, in cores."""
    load1: float
    trainer_counters: np.ndarray
    """Deltas of the trainer thread's kernel counters in the window: see `thread_counters`."""
    sampler_cpu_s: float = 0.0
    """CPU of the sampler processes over their whole life (start-up and closing summary included)."""
    sampler_wall_s: float = 0.0
    steps: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """(wall ms, CPU ms) per trainer step inside the window."""


def pyspy_exe() -> str:
    """The py-spy attach uses (next to this Python, else on PATH): not a shell shim in front of it."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.is_file() else (shutil.which("py-spy") or "py-spy")


def window_sampler_cmd(mode: str, pid: int, seconds: float, out: Path) -> list[str]:
    tool, extra = SAMPLERS[mode]
    rate = [] if "--rate" in extra else ["--rate", "100"]
    if tool == "proc-api":
        return [sys.executable, str(HERE), "--proc-api", str(pid), "--duration", f"{seconds:.2f}", *extra]
    if tool == "burn":
        return [sys.executable, str(HERE), "--burn", "--duration", f"{seconds:.2f}", *extra]
    if tool.startswith("attach"):
        head = ["-m", "gpuwatch", "attach"] if tool == "attach" else [str(HERE), "--attach-api"]
        return [sys.executable, *head, str(pid), *rate,
                "--duration", f"{seconds:.2f}", "--out", str(out), *extra]  # fmt: skip
    cmd = [pyspy_exe(), "record", "--pid", str(pid), "--duration", str(math.ceil(seconds))]
    flags = PYSPY_FLAGS if tool == "py-spy" else [f for f in PYSPY_FLAGS if f != "--subprocesses"]
    return cmd + flags + rate + ["--output", str(out)] + extra


def wait_ready(proc: subprocess.Popen[bytes], mode: str, timeout_s: float = 60.0) -> None:
    """Block until the sampler says it samples: attach's first progress line, py-spy's "Sampling process"."""
    is_attach = not SAMPLERS[mode][0].startswith("py-spy")
    stream = proc.stderr if is_attach else proc.stdout
    marker = b"sampling process" if is_attach else b"Sampling process"
    assert stream is not None
    deadline = time.monotonic() + timeout_s
    seen: list[bytes] = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            _, err = proc.communicate()
            said = (b"".join(seen) + (err or b"")).decode(errors="replace")[-1500:]
            raise SystemExit(f"{mode} ended before sampling (exit code {proc.returncode}): {said}")
        seen.append(line)
        if marker in line:
            return
    proc.kill()
    proc.wait()
    raise SystemExit(f"{mode} did not start sampling within {timeout_s:.0f} s")


def tree_ticks(root: int | None) -> int:
    """CPU ticks of `root` and its live descendants, each with the reaped children it waited for (py-spy
    chunks that attach started and reaped count once: live before, in attach's cutime after)."""
    if root is None:
        return 0
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, utime + stime + cutime + cstime)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                rest = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(name)] = (int(rest[1]), sum(int(x) for x in rest[11:15]))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0))[1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == pid]
    return total


COUNTERS = ("user s", "system s", "minor faults", "voluntary switches", "involuntary switches")


def thread_counters(pid: int) -> np.ndarray:
    """The trainer's main thread (tid = pid): user and system CPU seconds, minor page faults, voluntary and
    involuntary context switches, from /proc/PID/task/PID/{stat,status}."""
    rest = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    switches = [int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line]
    return np.array([int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK, int(rest[7]), *switches], dtype=float)


def measure(mode: str, rnd: int, pid: int, seconds: float, sampler: int | None = None) -> Window:
    """Sleep through one window of `seconds` and say what the machine did meanwhile."""
    busy0, steal0 = machine_ticks()
    tgt0, smp0, cnt0 = proc_ticks(pid), tree_ticks(sampler), thread_counters(pid)
    lo, t0 = time.time_ns(), time.monotonic()
    time.sleep(seconds)
    hi, dt = time.time_ns(), time.monotonic() - t0
    counters = thread_counters(pid) - cnt0
    smp = (tree_ticks(sampler) - smp0) / CLK_TCK / dt
    busy1, steal1 = machine_ticks()
    foreign = (busy1 - busy0 - (proc_ticks(pid) - tgt0)) / CLK_TCK / dt - smp
    steal = (steal1 - steal0) / CLK_TCK / dt
    return Window(mode, rnd, lo, hi, foreign, smp, steal, os.getloadavg()[0], counters)


def run_window(mode: str, rnd: int, pid: int, args: argparse.Namespace, out: Path) -> Window:
    """One window of `mode` over the trainer `pid`; a sampled one ends when its sampler has exited."""
    if mode == "bare":
        return measure(mode, rnd, pid, args.window_s)
    cmd = window_sampler_cmd(mode, pid, args.settle_s + args.window_s + TAIL_S, out)
    spare = set(range(os.cpu_count() or 1)) - {0}
    pin = (lambda: os.sched_setaffinity(0, spare)) if args.pin and spare else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE if SAMPLERS[mode][0].startswith("py-spy") else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        preexec_fn=pin,
    )
    try:
        wait_ready(proc, mode)
        time.sleep(args.settle_s)
        win = measure(mode, rnd, pid, args.window_s, proc.pid)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    win.sampler_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    win.sampler_wall_s = time.monotonic() - t0
    return win


def attach_api(argv: list[str]) -> None:
    """`gpuwatch attach` through its Python API, for settings the CLI does not offer (diagnostic modes)."""
    from gpuwatch.capture.attach import AttachOptions, attach

    p = argparse.ArgumentParser(prog="attach-api")
    p.add_argument("pid", type=int)
    p.add_argument("--rate", type=int, default=100)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-system-samplers", dest="system_samplers", action="store_false")
    a = p.parse_args(argv)
    opts = AttachOptions(
        pid=a.pid, out_dir=a.out, duration_s=a.duration, rate_hz=a.rate, system_samplers=a.system_samplers
    )
    attach(opts, progress=lambda line: print(f"gpuwatch attach: {line}", file=sys.stderr, flush=True))


class _CountingSink:
    """A RecordSink that keeps nothing: the /proc sampler's reading and parsing is what is measured."""

    def __init__(self) -> None:
        self.records = 0

    def emit_span(self, span: object) -> None:
        self.records += 1

    def emit_sample(self, sample: object) -> None:
        self.records += 1

    def note(self, key: str, message: str, **fields: object) -> None:
        pass


def proc_api(argv: list[str]) -> None:
    """attach's /proc sampler alone on PID (children and threads included) at --interval seconds."""
    from collectors.system.proc_sampler import ProcSampler

    p = argparse.ArgumentParser(prog="proc-api")
    p.add_argument("pid", type=int)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--duration", type=float, required=True)
    a = p.parse_args(argv)
    sampler = ProcSampler(a.interval, time.time_ns(), pid=a.pid)
    sampler.start(_CountingSink())
    print(f"gpuwatch attach: sampling process {a.pid} with /proc only", file=sys.stderr, flush=True)
    time.sleep(a.duration)
    sampler.stop()


def burn(argv: list[str]) -> None:
    """A CPU footprint without reads of the target: wakes --rate times a second and spins --spin-ms each time,
    at normal priority, as a py-spy sampling at that rate does (mode burn-37)."""
    p = argparse.ArgumentParser(prog="burn")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--spin-ms", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    a = p.parse_args(argv)
    print("gpuwatch attach: sampling process (a burner: no reads)", file=sys.stderr, flush=True)
    period, spin = 1.0 / a.rate, a.spin_ms / 1000.0
    t_next = time.monotonic()
    end = t_next + a.duration
    while t_next < end:
        c0 = time.thread_time()
        while time.thread_time() - c0 < spin:
            pass
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))


def window_plan(modes: list[str], rounds: int, shuffle: bool, seed: int) -> list[tuple[str, int]]:
    """bare, M, bare, M, ..., bare: every sampled window between two bare ones; modes rotated per round."""
    rng = random.Random(seed)
    plan: list[tuple[str, int]] = []
    for r in range(rounds):
        order = list(modes)
        if shuffle:
            rng.shuffle(order)
        else:
            k = r % len(order)
            order = order[k:] + order[:k]
        for mode in order:
            plan += [("bare", r), (mode, r)]
    return plan + [("bare", rounds - 1)]


def window_stats(w: Window) -> np.ndarray:
    """median step ms, p10 step ms, median CPU ms per step, mean off-CPU ms per step (wall - CPU time)."""
    wall, cpu = w.steps[:, 0], w.steps[:, 1]
    return np.array([np.median(wall), np.percentile(wall, 10), np.median(cpu), np.mean(wall - cpu)])


def pooled_log_sd(groups: list[np.ndarray]) -> np.ndarray:
    """Standard deviation of log ratios within modes, pooled over the sampled modes (each window's deviation
    from its mode's mean): with a handful of windows per mode, one mode's own spread is a poor estimate."""
    res = [np.log(g) - np.log(g).mean(axis=0) for g in groups if len(g)]
    dof = sum(len(r) for r in res) - len(res)
    if dof < 1:
        return np.full(3, np.nan)
    return np.sqrt(sum((r**2).sum(axis=0) for r in res) / dof)


def against_neighbours(wins: list[Window], i: int, gap: int) -> np.ndarray:
    """Window i against windows i-gap and i+gap (its bare neighbours): ratios of the median step, p10 step and
    CPU per step to their geometric mean; then the off-CPU ms per step minus their mean, as a fraction of
    their median step; then the trainer thread's system CPU ms and minor page faults per step minus their
    means."""
    here, before, after = (window_stats(wins[j]) for j in (i, i - gap, i + gap))
    ref = np.sqrt(before[:3] * after[:3])
    off = (here[3] - (before[3] + after[3]) / 2) / ref[0]

    def per_step(w: Window) -> np.ndarray:
        return w.trainer_counters[1:3] / len(w.steps) * np.array([1000.0, 1.0])

    kernel = per_step(wins[i]) - (per_step(wins[i - gap]) + per_step(wins[i + gap])) / 2
    return np.array([*(here[:3] / ref[:3]), off, *kernel])


def run_windows(args: argparse.Namespace) -> None:
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in SAMPLERS]
    if unknown:
        raise SystemExit(f"unknown --modes {unknown}; known: {', '.join(SAMPLERS)}")
    plan = window_plan(modes, args.rounds, args.shuffle, args.seed)
    all_modes = ["bare", *modes]
    load_start = os.getloadavg()
    wins: list[Window] = []
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="attach-overhead-") as tmp_s:
        tmp = Path(tmp_s)
        log = tmp / "trainer.txt"
        cmd = [sys.executable, str(HERE), "--target", str(log), "--width", str(args.width)]
        cmd += ["--depth", str(args.depth), "--batch", str(args.batch)]
        cmd += ["--target-cpu", "0"] if args.pin else []
        cmd += ["--workload", args.workload, "--workers", str(args.workers), "--image", str(args.image)]
        env = dict(os.environ, **MALLOC_ENV) if args.malloc == "steady" else None  # see --malloc
        trainer = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        hog = (  # another CPU-bound job on the host, started (and killed) by this script
            subprocess.Popen([sys.executable, "-c", "while True: pass"])
            if args.workload == "competing"
            else None
        )
        try:
            pid = int(trainer.stdout.readline())  # type: ignore[union-attr]
            steps = StepLog(log)
            time.sleep(5.0)  # warm caches and allocators (page faults settle within ~5 s)
            what = {
                "mlp": f"{args.width}x{args.depth} MLP, batch {args.batch}, 1 torch thread",
                "saturated": f"{args.workers} DataLoader workers decoding {args.image}px JPEGs (batch "
                f"{args.batch}) keep the cores busy",
                "competing": f"{args.width}x{args.depth} MLP, batch {args.batch}, beside a CPU-bound process",
            }[args.workload]
            print(
                f"trainer pid {pid}: {what}, "
                f"malloc {args.malloc}"
                f"{', pinned to CPU 0, samplers on the other CPUs' if args.pin else ''}; load average "
                f"{' '.join(f'{x:.2f}' for x in load_start)}; {len(plan)} windows of {args.window_s:g} s",
                flush=True,
            )
            for n, (mode, rnd) in enumerate(plan):
                if n and wins[-1].mode != "bare":
                    time.sleep(args.settle_s)  # after detaching
                win = run_window(mode, rnd, pid, args, tmp / f"{mode}-{n}")
                win.steps = steps.between(win.lo_ns, win.hi_ns)
                if len(win.steps) < 20:
                    raise SystemExit(f"only {len(win.steps)} trainer steps in window {n} ({mode})")
                wins.append(win)
                extra = (
                    f", sampler {win.sampler_cpu_s:.2f} CPU s in {win.sampler_wall_s:.1f} s"
                    if mode != "bare"
                    else ""
                )
                print(
                    f"  round {rnd + 1} {mode:15s} {len(win.steps):4d} steps, median {np.median(win.steps[:, 0]):7.3f} ms"
                    f", p10 {np.percentile(win.steps[:, 0], 10):7.3f} ms, off-CPU {window_stats(win)[3]:.3f} ms/step"
                    f"; sampler {win.sampler_cores:.3f} cores, others {win.foreign_cores:.2f} cores"
                    f", steal {win.steal_cores:.2f}, load {win.load1:.2f}{extra}; trainer per step: "
                    + ", ".join(
                        f"{v / len(win.steps):.3g} {k}" for k, v in zip(COUNTERS, win.trainer_counters)
                    ),
                    flush=True,
                )
        finally:
            trainer.kill()
            trainer.wait()
            if hog is not None:
                hog.kill()
                hog.wait()
    elapsed = time.monotonic() - t_start
    load_end = os.getloadavg()

    rows: dict[str, list[np.ndarray]] = {m: [] for m in all_modes}
    quiet: dict[str, list[bool]] = {m: [] for m in all_modes}
    for i, w in enumerate(wins):
        gap = 1 if w.mode != "bare" else 2
        if w.mode == "bare" and not 2 <= i < len(wins) - 2:
            continue
        rows[w.mode].append(against_neighbours(wins, i, gap))
        quiet[w.mode].append(max(wins[j].foreign_cores for j in (i - gap, i, i + gap)) < args.quiet_cores)

    print()
    print(
        f"windows design: ONE trainer ({args.width}x{args.depth} MLP, batch {args.batch}, 1 torch thread, "
        f"malloc {args.malloc}"
        f"{', pinned to CPU 0' if args.pin else ''}), {args.rounds} rounds x {len(modes)} sampled windows "
        f"of {args.window_s:g} s, each between two bare windows; settle {args.settle_s:g} s after attach/detach; "
        f"{elapsed:.0f} s in all"
    )
    print(
        f"load average at start {' '.join(f'{x:.2f}' for x in load_start)}, at end "
        f"{' '.join(f'{x:.2f}' for x in load_end)}; {os.cpu_count()} CPUs; other jobs' CPU in the windows: "
        f"median {np.median([w.foreign_cores for w in wins]):.2f} cores, max {max(w.foreign_cores for w in wins):.2f}"
    )
    gm: dict[str, dict[str, tuple[float, float]]] = {}
    summaries = [("all windows", False)]
    if not all(all(q) for q in quiet.values()):
        summaries.append(("quiet windows only", True))
    for label, only_quiet in summaries:
        print(
            f"{label}{f' (other jobs used < {args.quiet_cores:g} cores in the window and its neighbours)' if only_quiet else ''}"
            ": window / its bare neighbours, geometric mean over windows +- standard error (min..max); the "
            "sampled modes' standard errors use the spread of windows pooled over the sampled modes:"
        )
        print(
            f"  {'mode':15s} {'n':>3s} {'step ms':>7s}  {'median step':>29s}  {'p10 step':>29s}  {'CPU/step':>8s}"
            f"  {'off-CPU':>7s}  {'sys ms':>6s}  {'faults':>6s}  {'sampler CPU':>11s}  {'life':>5s}"
        )
        gm[label] = {}
        kept = {m: [r for r, q in zip(rows[m], quiet[m]) if q or not only_quiet] for m in all_modes}
        pooled_sd = pooled_log_sd([np.array(kept[m])[:, :3] for m in modes if len(kept[m])])
        for mode in all_modes:
            keep = kept[mode]
            if not keep:
                print(f"  {mode:15s} {0:3d}")
                continue
            arr = np.array(keep)
            logs = np.log(arr[:, :3])
            g = np.exp(logs.mean(axis=0))
            own_sd = logs.std(axis=0, ddof=1) if len(arr) > 1 else np.full(3, np.nan)
            se = (own_sd if mode == "bare" else pooled_sd) / np.sqrt(len(arr))
            gm[label][mode] = (float(g[0]), float(100 * se[0]))
            gm[label][mode + "/p10"] = (float(g[1]), float(100 * se[1]))
            off_se = arr[:, 3].std(ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else np.nan
            gm[label][mode + "/off"] = (1 + float(arr[:, 3].mean()), float(100 * off_se))
            mine = [w for w in wins if w.mode == mode]
            step_ms = np.median([np.median(w.steps[:, 0]) for w in mine])
            life = (
                "-"
                if mode == "bare"
                else f"{100 * sum(w.sampler_cpu_s for w in mine) / sum(w.sampler_wall_s for w in mine):.1f}%"
            )
            in_window = 100 * np.mean([w.sampler_cores for w in mine])
            print(
                f"  {mode:15s} {len(arr):3d} {step_ms:7.2f}"
                f"  {g[0]:7.4f} +-{100 * se[0]:4.2f}% ({arr[:, 0].min():.3f}..{arr[:, 0].max():.3f})"
                f"  {g[1]:7.4f} +-{100 * se[1]:4.2f}% ({arr[:, 1].min():.3f}..{arr[:, 1].max():.3f})"
                f"  {g[2]:8.4f}  {100 * arr[:, 3].mean():+6.2f}%  {arr[:, 4].mean():+6.3f}  {arr[:, 5].mean():+6.0f}"
                f"  {in_window:10.1f}%  {life:>5s}"
            )
    print(
        "  bare: each interior bare window against the bare windows either side of it (the noise floor). "
        "CPU/step: the trainer thread's CPU time per step. off-CPU: mean (wall - CPU time) per step, the part of "
        "a step the trainer thread was stopped or waiting, minus the neighbours', in % of the step. sys ms, faults: "
        "the trainer thread's system CPU ms and minor page faults per step, minus the neighbours'. sampler CPU: "
        "the sampler processes' CPU inside the windows (the sampler and its descendants, reaped ones included), "
        "% of one core; life: the same over their whole run (start-up and attach's closing summary included)."
    )
    for label in gm:
        g = gm[label]
        names = {
            "attach": "gpuwatch attach (non-blocking, 100 Hz)",
            **{m: f"{m} ({t} {' '.join(a)})" for m, (t, a) in list(SAMPLERS.items())[3:]},
            "pyspy-nb": "py-spy alone non-blocking",
            "blocking": "py-spy default blocking",
            "bare": "noise floor (bare vs bare)",
        }
        for key, what in (
            ("", "median step slowdown"),
            ("/p10", "p10 step slowdown"),
            ("/off", "time stopped or preempted per step"),
        ):
            print(
                f"{what} vs adjacent bare windows ({label}): "
                + ", ".join(
                    f"{name} {100 * (g[m + key][0] - 1):+.2f}% +-{g[m + key][1]:.2f}"
                    for m, name in names.items()
                    if m + key in g
                )
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--design",
        choices=("windows", "twins"),
        default="windows",
        help="windows: one trainer, alternating bare and sampled windows (default); twins: two trainers at once",
    )
    p.add_argument(
        "--rounds", type=int, help="rounds; each runs every sampled mode once (default 8, twins 4)"
    )
    p.add_argument(
        "--window-s",
        "--phase-s",
        dest="window_s",
        type=float,
        help="seconds measured per window (default 4, twins 8)",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=1.0,
        help="windows: seconds skipped after attaching and after detaching",
    )
    p.add_argument(
        "--quiet-cores",
        type=float,
        default=0.15,
        help="windows: also summarize the windows where other jobs used less CPU than this (cores), it and "
        "its bare neighbours",
    )
    p.add_argument(
        "--modes",
        default=",".join(SAMPLED_MODES),
        help=f"windows: sampled modes, comma-separated (default %(default)s; also {', '.join(list(SAMPLERS)[3:])})",
    )
    p.add_argument("--pin", action="store_true", help="windows: trainer on CPU 0, samplers on the other CPUs")
    p.add_argument(
        "--shuffle", action="store_true", help="windows: random mode order per round (else rotated)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, help="default 128 (steps of ~20 ms alone), twins 64")
    p.add_argument("--nice", type=int, default=0, help="twins: trainers' priority when root (0: leave as is)")
    p.add_argument("--target", metavar="LOG", help=argparse.SUPPRESS)
    p.add_argument(
        "--malloc",
        choices=("glibc", "steady"),
        default="steady",
        help="windows: the trainer's allocator. steady (default) keeps its large tensors in glibc's heap (no page "
        "faults after warm-up); glibc as is maps and unmaps them every step: ~500-1000 page faults and ~1 ms of "
        "system time per step here, varying 2x from window to window by itself (twice the noise)",
    )
    p.add_argument("--target-cpu", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--workload",
        choices=("mlp", "saturated", "competing"),
        default="mlp",
        help="windows: mlp (default: one torch thread on an idle host); saturated (DataLoader workers decoding "
        "JPEGs keep every core busy: the busy host of issue 9); competing (the MLP beside a CPU-bound process)",
    )
    p.add_argument("--workers", type=int, default=2, help="saturated: DataLoader workers (default 2)")
    p.add_argument("--image", type=int, default=1024, help="saturated: JPEG side in pixels (default 1024)")
    if sys.argv[1:2] == ["--attach-api"]:
        attach_api(sys.argv[2:])
        return
    if sys.argv[1:2] == ["--proc-api"]:
        proc_api(sys.argv[2:])
        return
    if sys.argv[1:2] == ["--burn"]:
        burn(sys.argv[2:])
        return
    args = p.parse_args()
    twins = args.design == "twins"
    if args.batch is None:
        args.batch = 64 if twins else (4 if args.workload == "saturated" else 128)
    if args.rounds is None:
        args.rounds = 4 if twins else 8
    if args.window_s is None:
        args.window_s = 8.0 if twins else 4.0
    if args.target:
        if args.workload == "saturated":
            target_saturated(args.target, args.workers, args.image, args.batch)
        else:
            target(args.target, args.width, args.depth, args.batch, args.target_cpu)
        return
    if args.design == "twins":
        run_twins(args)
    else:
        run_windows(args)


if __name__ == "__main__":
    main()
