"""What `gpuwatch.watch` adds to a training step, next to torch.profiler and TraceML, measured in one script.

    python benchmarks/overhead.py [--loop mlp|small] [--rounds 12] [--steps 30] [--batch B] [--width W]
                                  [--modes bare,watch,profiler,traceml]

One CPU training loop (DataLoader over in-memory tensors, AdamW, a loss.item() per step;
`torch.set_num_threads(1)`) runs in each mode, interleaved round by round in rotating order so drift and
noise from other processes hit all modes alike. `--loop mlp` (default) is a 4-layer MLP of width 1024, steps
of roughly 10-50 ms; `--loop small` is 20 Linear(64, 64)+ReLU pairs (40 modules, so per-module costs show)
with steps of about 3 ms on a quiet 2-core VM.

  bare      the loop alone
  watch     inside `gpuwatch.watch(run_dir)` with its defaults (hooks, 50 Hz stack sampler, /proc + NVML
            samplers, 1 s flushes)
  profiler  inside `torch.profiler.profile(activities=[CPU])` with `prof.step()` per step (recording only:
            the trace export after the loop is not counted)
  traceml   TraceML (`pip install traceml-ai`) as its docs instrument a plain PyTorch loop:
            `traceml.init(mode="auto")` and `with traceml.trace_step(model):` around each step's
            forward..zero_grad. Measured: its auto patches (nn.Module.__call__, DataLoader.__iter__,
            Tensor.backward, torch.autograd.backward, Tensor.to, optimizer step hooks), trace_step's own
            work, and its per-rank runtime threads in this process (a sampler every 2 s, its default, and a
            TCP exporter) sending to an aggregator, which `traceml run` would start: here a `traceml serve`
            process per block, started before and stopped (final summary written) after the timed steps,
            its CPU outside this process's CPU time. The patches and the runtime are on for traceml blocks
            only (see TraceMLPeer). Skipped, with a line saying so, when traceml_ai is not importable.

`--modes` picks modes (bare always runs). Each step is timed by the script itself with time.perf_counter;
the first 70 steps of every block are warm-up and dropped (the steps a watch observes whole whatever they
cost, `LOOP_WARMUP`). The headline is the median over rounds of each
round's ratio of medians to bare; it also prints the overall median step time per mode, the 10th percentile,
and the process CPU time per step (all threads: gpuwatch's sampler and writer threads and TraceML's runtime
threads included), which other processes on a shared machine disturb much less than wall time.

On a shared 2-core VM a round's ratio moves by 5-15% for reasons of no mode's own, so the headline cannot
resolve the 0.5% budget in a dozen rounds. The watch's cost is therefore also accounted part by part, each
part measured where noise cannot inflate it: the training thread's cost of an observed and of an unobserved
step (its hooks and `gw.step()` timed against the same calls without them, least disturbed of 41
alternations), weighted by the share of steps one long watched run observed (`--steady-steps`, after the
first 64 steps it observes whole), plus the CPU each gpuwatch thread used over that run (schedstat).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwatch  # noqa: E402

LOOP_WARMUP = {"mlp": 70, "small": 70}
"""Steps dropped at the start of every block of every mode (`--warmup`): the steps in which a watch observes
every step whatever it costs (the first 64, `gpuwatch.capture.step_pacing.FULL_STEPS`: module discovery,
warm-up detection, a short run observed whole), so the timed steps of a block measure the steady state a long
job runs in. (The MLP loop dropped 5 until 2026-12-03, so its rounds timed only steps the watch observes
whole.)"""


LOOP_DEFAULTS = {"mlp": (64, 1024), "small": (64, 64)}
LOOP_STEPS = {"mlp": 30, "small": 300}
STEADY_STEPS = {"mlp": 300, "small": 3000}
"""(batch, width) per loop: `mlp` steps take 10-50 ms, `small` steps about 3 ms on a quiet 2-core VM."""


def build(
    loop_name: str, batch: int, width: int, steps: int, warmup: int
) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader]:
    torch.manual_seed(0)
    if loop_name == "small":
        # 40 modules, so per-module costs (forward hooks, patched Module.__call__) show at their worst ratio
        model = torch.nn.Sequential(
            *[m for _ in range(20) for m in (torch.nn.Linear(width, width), torch.nn.ReLU())]
        )
        classes = width
        # foreach: one fused update for the 40 parameters, or AdamW alone would be most of the step
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    else:
        model = torch.nn.Sequential(
            torch.nn.Linear(width, width), torch.nn.GELU(),
            torch.nn.Linear(width, width), torch.nn.GELU(),
            torch.nn.Linear(width, width), torch.nn.GELU(),
            torch.nn.Linear(width, 10),
        )  # fmt: skip
        classes = 10
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = TensorDataset(
        torch.randn(batch * (steps + warmup), width),
        torch.randint(0, classes, (batch * (steps + warmup),)),
    )
    return model, opt, DataLoader(data, batch_size=batch, shuffle=True)


def loop(model, opt, loader, on_step, warmup, step_scope=contextlib.nullcontext) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    """Per-step wall times (s) after warm-up, and process CPU seconds per step over those steps.

    `step_scope()` is entered around each step's forward..zero_grad (TraceML's `trace_step(model)`); the
    other modes pass the default, a nullcontext, so every mode runs the same bytecode around the step."""
    times = []
    cpu0 = 0.0
    t_prev = time.perf_counter()
    losses = 0.0
    for x, y in loader:
        with step_scope():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses += loss.item()
        on_step()
        now = time.perf_counter()
        times.append(now - t_prev)
        t_prev = now
        if len(times) == warmup:
            cpu0 = time.process_time()
    measured = times[warmup:]
    return measured, (time.process_time() - cpu0) / max(len(measured), 1)


BACKGROUND_CPU_S: list[float] = []
"""CPU seconds used by gpuwatch's own threads (sampler, writer, /proc, NVML), one entry per watch block."""
WATCH_WALL_S: list[float] = []
OBSERVED: list[tuple[int, int]] = []
"""(steps observed, steps) per watch block (capture/step_pacing.py)."""


def thread_cpu_s(native_ids: list[int]) -> float:
    """CPU seconds some threads of this process have run, from /proc schedstat (nanoseconds; the 10 ms ticks of
    /proc stat round a sampler thread that now wakes a dozen times a second down to nothing)."""
    ns = 0
    for tid in native_ids:
        try:
            ns += int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return ns / 1e9


def gpuwatch_threads(gw: gpuwatch.Watcher) -> list[int]:
    threads = [getattr(c, "_thread", None) for c in gw._collectors] + [gw.writer._thread]
    return [t.native_id for t in threads if t is not None and t.native_id is not None]


class TraceMLPeer:
    """TraceML (`pip install traceml-ai`) on one block, the way its docs instrument a plain PyTorch loop:
    `traceml.init(mode="auto")` once, then `with traceml.trace_step(model):` around each step, with its
    aggregator (`traceml serve`) in a separate process, as `traceml run` would start it.

    `init` is once per process and installs its patches for good (nn.Module.__call__, DataLoader.__iter__,
    Tensor.backward, torch.autograd.backward, Tensor.to; global optimizer step hooks on the first
    trace_step), and its aggregator finalizes when its one rank finishes. So that the other modes run on
    torch's own functions, each block gets a fresh aggregator, the patches are put back for the block only,
    and the per-rank runtime (sampler + exporter threads) is stopped after the block and started again
    before the next with the same `lifecycle.start_runtime` call `init` makes (private API, 0.5.0)."""

    def __init__(self, tmp: Path) -> None:
        import torch.nn as nn

        self._tmp = tmp
        self._cli = shutil.which("traceml", path=str(Path(sys.executable).parent)) or shutil.which("traceml")
        if self._cli is None:
            raise RuntimeError("the `traceml` command (for `traceml serve`) is not on PATH")
        self._targets = [
            (nn.Module, "__call__"),
            (DataLoader, "__iter__"),
            (torch.Tensor, "backward"),
            (torch.autograd, "backward"),
            (torch.Tensor, "to"),
        ]
        self._originals = [getattr(obj, name) for obj, name in self._targets]
        self._patched: list[object] = []
        self._settings: object = None
        self._runtime: object = None
        self._aggregator: subprocess.Popen[bytes] | None = None

    @contextlib.contextmanager
    def block(self, block: int, model: torch.nn.Module):  # type: ignore[no-untyped-def]
        """Yields the step scope for `loop`; setup and teardown are outside the timed steps."""
        import dataclasses

        import traceml_ai as traceml
        from traceml_ai.instrumentation.hooks.optimizer_hooks import reset_optimizer_timing
        from traceml_ai.runtime import lifecycle
        from traceml_ai.runtime.settings import AggregatorTransportSettings
        from traceml_ai.sdk import initial

        run_name = f"traceml-{block}"
        port = self._start_aggregator(run_name)
        try:
            if self._settings is None:
                traceml.init(
                    mode="auto",
                    aggregator_port=port,
                    logs_dir=str(self._tmp),
                    session_id=run_name,
                    on_missing_aggregator="raise",
                    connect_timeout_sec=60,
                )
                self._patched = [getattr(obj, name) for obj, name in self._targets]
                self._runtime = lifecycle.get_active_runtime_handle()
                self._settings = self._runtime.runtime._settings  # type: ignore[union-attr]
                initial._RUNTIME_HANDLE = None  # we stop it ourselves, not its atexit hook
            else:
                for (obj, name), fn in zip(self._targets, self._patched):
                    setattr(obj, name, fn)
                host = "127.0.0.1"
                settings = dataclasses.replace(
                    self._settings,  # type: ignore[type-var]
                    session_id=run_name,
                    aggregator=AggregatorTransportSettings(connect_host=host, bind_host=host, port=port),
                )
                self._runtime = lifecycle.start_runtime(settings, fail_open=False)
            yield lambda: traceml.trace_step(model)
        finally:
            if self._runtime is not None:
                self._runtime.stop()  # type: ignore[attr-defined]
            for (obj, name), fn in zip(self._targets, self._originals):
                setattr(obj, name, fn)
            reset_optimizer_timing()
            self._stop_aggregator()

    def _start_aggregator(self, run_name: str) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self._aggregator = subprocess.Popen(
            [self._cli, "serve", "--logs-dir", str(self._tmp), "--run-name", run_name]
            + ["--aggregator-port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from traceml_ai.runtime.lifecycle import wait_for_aggregator

        if not wait_for_aggregator("127.0.0.1", port, timeout_sec=60, poll_interval_sec=0.1):
            self._stop_aggregator()
            raise RuntimeError(f"`traceml serve` did not listen on port {port} within 60 s")
        return port

    def _stop_aggregator(self) -> None:
        """SIGINT (its clean shutdown: final summary written), then wait, so its work never overlaps the
        next block."""
        if self._aggregator is None:
            return
        self._aggregator.send_signal(signal.SIGINT)
        try:
            self._aggregator.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._aggregator.kill()
            self._aggregator.wait()
        self._aggregator = None


def traceml_peer(tmp: Path) -> TraceMLPeer | str:
    """The TraceML peer, or why it is skipped."""
    try:
        import traceml_ai  # noqa: F401
    except ImportError as e:
        return f"traceml-ai is not importable ({e}); pip install traceml-ai torch==2.13.0"
    try:
        return TraceMLPeer(tmp)
    except RuntimeError as e:
        return str(e)


def run_mode(
    mode: str, args: argparse.Namespace, tmp: Path, block: int, peer: TraceMLPeer | None = None
) -> tuple[list[float], float]:
    model, opt, loader = build(args.loop, args.batch, args.width, args.steps, args.warmup)
    if mode == "bare":
        return loop(model, opt, loader, lambda: None, args.warmup)
    if mode == "watch":
        t0 = time.perf_counter()
        with gpuwatch.watch(tmp / f"run-{block}") as gw:
            result = loop(model, opt, loader, gw.step, args.warmup)
            BACKGROUND_CPU_S.append(thread_cpu_s(gpuwatch_threads(gw)))
            WATCH_WALL_S.append(time.perf_counter() - t0)
            OBSERVED.append((gw._observed_steps, gw.step_index))
            return result
    if mode == "traceml":
        assert peer is not None
        with peer.block(block, model) as step_scope:
            return loop(model, opt, loader, lambda: None, args.warmup, step_scope)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        return loop(model, opt, loader, prof.step, args.warmup)


class _NeverObserve:
    """A step pacer that observes no step (the state a thinned watch spends most steps in)."""

    shift, block_shift, step_ns, enabled = 6, 10, 0, True

    def next_observed(self, *_: Any) -> bool:
        return False


def step_cost_parts_us(observed: bool, reps: int = 41, calls: int = 1000) -> dict[str, float]:
    """What a watch costs the training thread in a step it does (`observed`) or does not observe, part by
    part, in µs.

    Each hooked entry point a plain loop calls once a step is gpuwatch's own wrapper around torch's function;
    here each wrapper is made around a function that does nothing and called `calls` times, against that
    function alone, alternated `reps` times; a part's cost is the difference of the two minima (the least
    disturbed repetition: other tenants of a VM only add time). Parts: the DataLoader `__next__` wrapper, the
    backward wrapper, the two global optimizer hooks, the forward hooks of one top-level module (observed
    steps only: they are off in the others, `TorchHooks.pause`), and `gw.step()` itself. Observed: a watch
    with `observe_every_step=True`, whose regions and spans are the real ones."""
    from collectors.hooks import hook_context as hc
    from collectors.hooks import torch_hooks as th

    def nothing(*_: Any, **__: Any) -> None:
        return None

    model = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 8)
    costs: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gpuwatch-overhead-") as tmp_name:
        watcher = gpuwatch.watch(
            Path(tmp_name) / "parts", sample_hz=0, system_samplers=False, observe_every_step=observed
        )
        gw = watcher.start()
        for _ in range(3):  # discovery, then (unobserved) a pacer that observes nothing
            model(x).sum().backward()
            opt.step()
            gw.step()
        if not observed:
            gw._pacer = _NeverObserve()  # type: ignore[assignment]
            gw.step()
            assert hc.ACTIVE is None and hc.WATCHING is not None
        else:
            assert hc.ACTIVE is not None
        hooks = gw._torch_hooks
        assert hooks is not None
        loader_next = th._loader_region(
            "DataLoader.__next__", th._end_next, flag=hc.IN_DATA_LOADING, split=True
        )(nothing)
        backward = hooks._wrap_backward(nothing)
        it = object()

        def optimizer_hooks() -> None:  # what torch calls around every optimizer step
            hooks._opt_pre(opt, (), {})
            hooks._opt_post(opt, (), {})

        def forward_hooks() -> None:  # what torch calls around a hooked module's forward
            hooks._instance_pre(model, (x,))
            hooks._instance_post(model, (x,), None)

        parts: dict[str, tuple[Any, Any]] = {
            "DataLoader.__next__": (lambda: loader_next(it), lambda: nothing(it)),
            "backward": (backward, nothing),
            "optimizer hooks": (optimizer_hooks, nothing),
            "gw.step()": (gw.step, nothing),
        }
        if observed:
            parts["forward hooks"] = (forward_hooks, nothing)
        best: dict[tuple[str, bool], float] = {}
        try:
            for r in range(reps):
                for name, (wrapped, alone) in parts.items():
                    for on in (True, False) if r % 2 else (False, True):
                        fn = wrapped if on else alone
                        t0 = time.perf_counter_ns()
                        for _ in range(calls):
                            fn()
                        per = (time.perf_counter_ns() - t0) / calls / 1e3
                        best[(name, on)] = min(best.get((name, on), per), per)
        finally:
            watcher.close()
        for name in parts:
            costs[name] = best[(name, True)] - best[(name, False)]
    return costs


def steady_state(args: argparse.Namespace, tmp: Path, steps: int) -> dict[str, Any]:
    """One long watched run of the loop (`steps` timed steps after the first `FULL_STEPS` and the warm-up):
    the share of steps observed, each gpuwatch thread's CPU per step (/proc schedstat, so a sampler that wakes
    rarely is not rounded to nothing), and the median step, over the timed steps only: a block of the rounds
    above is a second long, and the watch's start (its first 64 steps observed whole, module discovery, the
    wait-cost probe) weighs on it as it never does on a job."""
    from gpuwatch.capture.step_pacing import FULL_STEPS

    skip = FULL_STEPS + args.warmup
    model, opt, loader = build(args.loop, args.batch, args.width, steps, skip)
    with gpuwatch.watch(tmp / "steady") as gw:
        threads = {type(c).__name__: c._thread for c in gw._collectors if getattr(c, "_thread", None)}
        threads["SegmentWriter"] = gw.writer._thread
        cpu0: dict[str, float] = {}
        observed0: list[int] = []

        def on_step() -> None:  # the same loop as the rounds', with the readings taken as the warm-up ends
            gw.step()
            if gw.step_index == skip:
                cpu0.update({k: thread_cpu_s([t.native_id]) for k, t in threads.items() if t is not None})
                observed0.append(gw._observed_steps)

        times, _ = loop(model, opt, loader, on_step, skip)
        timed = len(times)
        thread_us = {
            k: (thread_cpu_s([t.native_id]) - cpu0[k]) / timed * 1e6
            for k, t in threads.items()
            if t is not None and k in cpu0
        }
        observed = (gw._observed_steps - observed0[0]) / timed
        shift = gw._pacer.shift
    return {"steps": timed, "observed": observed, "shift": shift, "thread_us": thread_us,
            "step_s": statistics.median(times)}  # fmt: skip


MODES = ("bare", "watch", "profiler", "traceml")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per block (default: 30 for mlp, 300 for small: about a second either way, so the "
        "watch's start-up, a fixed cost, does not stand for its per-step cost)",
    )
    p.add_argument("--loop", choices=sorted(LOOP_DEFAULTS), default="mlp")
    p.add_argument(
        "--steady-steps",
        type=int,
        default=None,
        help="timed steps of the steady-state run that accounts for the watch's CPU part by part (default: "
        "3000 for small, 300 for mlp: 10-20 s)",
    )
    p.add_argument("--batch", type=int, default=None, help="default: 64 (mlp), 64 (small)")
    p.add_argument("--width", type=int, default=None, help="default: 1024 (mlp), 64 (small)")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="steps dropped at the start of every block, in every mode (default: 70)",
    )
    p.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated, from {','.join(MODES)}; bare is always run (default: all)",
    )
    args = p.parse_args()
    batch, width = LOOP_DEFAULTS[args.loop]
    args.batch = args.batch or batch
    args.width = args.width or width
    args.steps = args.steps or LOOP_STEPS[args.loop]
    args.steady_steps = args.steady_steps or STEADY_STEPS[args.loop]
    args.warmup = LOOP_WARMUP[args.loop] if args.warmup is None else args.warmup
    asked = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(asked) - set(MODES))
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; choose from {','.join(MODES)}")
    args.modes = ["bare"] + [m for m in MODES[1:] if m in asked]
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    load_before = _loadavg()
    modes: list[str] = args.modes
    with tempfile.TemporaryDirectory(prefix="gpuwatch-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        peer = None
        if "traceml" in modes:
            found = traceml_peer(tmp)
            if isinstance(found, str):
                print(f"traceml: skipped ({found})", flush=True)
                modes.remove("traceml")
            else:
                peer = found
        others = modes[1:]
        per_mode: dict[str, list[float]] = {m: [] for m in modes}
        per_round: dict[str, list[float]] = {m: [] for m in modes}
        cpu: dict[str, list[float]] = {m: [] for m in modes}
        run_mode("bare", args, tmp, -1)  # warm the allocator and the code paths once
        for r in range(args.rounds):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            for mode in order:
                times, cpu_per_step = run_mode(mode, args, tmp, r, peer)
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
        f"median step time over {len(per_mode['bare'])} steps per mode "
        f"(loop {args.loop}, batch {args.batch}, width {args.width}):"
    )
    for m in modes:
        print(f"  {m:9s} {median[m] * 1e3:8.2f} ms")
    p10 = {m: statistics.quantiles(v, n=10)[0] for m, v in per_mode.items()}
    print(
        "10th-percentile step time (the steps other processes disturbed least): "
        + "  ".join(f"{m} {p10[m] * 1e3:.2f} ms" for m in modes)
        + ("  ->  " if others else "")
        + "  ".join(f"{m}/bare {p10[m] / p10['bare']:.4f}" for m in others)
    )
    print(f"median of per-round ratios over {args.rounds} rounds (the headline; overall medians beside it):")
    for m in others:
        paired = statistics.median(a / b for a, b in zip(per_round[m], per_round["bare"], strict=True))
        print(
            f"  {m}/bare: {paired:.4f} -> {(paired - 1) * 100:+.2f}%   "
            f"({median[m] / median['bare']:.4f} overall medians)"
        )
    if "watch" in modes:
        background_pct = 100.0 * sum(BACKGROUND_CPU_S) / max(sum(WATCH_WALL_S), 1e-9)
        print()
        print("where watch's cost comes from:")
        print(
            f"  gpuwatch threads (stack sampler, writer, /proc, NVML) in the rounds' blocks, start-up included: "
            f"{background_pct:.2f}% of one core"
        )
        unobserved = step_cost_parts_us(observed=False)
        observed = step_cost_parts_us(observed=True)
        for label, parts in (("does not observe", unobserved), ("observes", observed)):
            print(
                f"  training thread, a step the watch {label}: {sum(parts.values()):.2f} µs "
                f"= {100 * sum(parts.values()) / (median['bare'] * 1e6):.3f}% of the bare median step ("
                + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
                + "; each the difference of the least disturbed of 41 alternated repetitions, wrapper and bare)"
            )
        seen, total = sum(o for o, _ in OBSERVED), sum(n for _, n in OBSERVED)
        print(
            f"  steps observed: {seen} of {total} ({100 * seen / max(total, 1):.1f}%; the first block of each run is)"
        )
        with tempfile.TemporaryDirectory(prefix="gpuwatch-overhead-") as steady_tmp:
            steady = steady_state(args, Path(steady_tmp), args.steady_steps)
        f = steady["observed"]
        training_us = f * sum(observed.values()) + (1 - f) * sum(unobserved.values())
        threads_us = sum(steady["thread_us"].values())
        step_us = steady["step_s"] * 1e6
        print(
            f"steady state, one watched run of {steady['steps']} steps after the first {args.warmup}"
            f" + 64 (median step {step_us / 1e3:.2f} ms; {100 * f:.1f}% of its steps observed, one block in "
            f"2**{steady['shift']}):"
        )
        print(
            "  gpuwatch threads: "
            + ", ".join(f"{k} {v:.2f} µs ({100 * v / step_us:.3f}%)" for k, v in steady["thread_us"].items())
            + f"; together {threads_us:.2f} µs a step = {100 * threads_us / step_us:.3f}%"
        )
        print(
            f"  training thread: {training_us:.2f} µs a step = {100 * training_us / step_us:.3f}% (the parts above, "
            f"weighted by the share of steps observed)"
        )
        total_us = training_us + threads_us
        print(
            f"  the watch's CPU per step, training thread and its own threads: {total_us:.2f} µs = "
            f"{100 * total_us / step_us:.3f}% of the step (the budget: 0.5%)"
        )
    cpu_median = {m: statistics.median(v) for m, v in cpu.items()}
    print(
        "process CPU time per step (median of blocks): "
        + "  ".join(f"{m} {cpu_median[m] * 1e3:.2f} ms" for m in modes)
    )
    for m in others:
        print(
            f"{m}/bare CPU: {cpu_median[m] / cpu_median['bare']:.4f} -> {(cpu_median[m] / cpu_median['bare'] - 1) * 100:+.2f}%"
        )
    if "traceml" in modes:
        print(
            "  (traceml: this process only; its aggregator, a separate `traceml serve` process, is not counted)"
        )


def _loadavg() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
