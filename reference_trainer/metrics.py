"""Training metrics with torchtitan's names, logged by rank 0 and written per rank as JSON lines.

- `throughput(tps)`: patch tokens per second per rank (torchtitan: tokens per second per device);
- `mfu(%)`: model FLOPs per second over the peak (`peak_flops` says which peak: a GPU's bf16 dense peak
  from the table below or `--peak-tflops`; on CPU the measured fp32 GEMM rate of the trainer's threads);
- `time_metrics/end_to_end(s)`: mean wall time of a step over the logging window;
- `time_metrics/data_loading(%)`: share of it spent getting the batch (next(), decode on the training
  thread, the host-to-device copy), as torchtitan measures it;
- `time_metrics/checkpoint_blocked(s)`: time the loop was blocked by checkpointing in the window.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Dense bf16 peak FLOP/s per device (vendor datasheets; torchtitan's get_peak_flops uses the same figures).
GPU_PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("V100", 125e12),  # fp16 tensor cores: V100 has no bf16
    ("MI300X", 1307e12),
    ("MI250", 362e12),
)


@dataclass(frozen=True, slots=True)
class Peak:
    flops: float
    """Peak FLOP/s of one rank's device."""
    source: str
    """Where the figure comes from, stated in the log."""


def measure_cpu_peak(threads: int, size: int = 384, repeats: int = 50) -> float:
    """The best fp32 GEMM rate (FLOP/s) of this CPU with `threads` threads: the peak the trainer can reach.

    Many short GEMMs (about 1 ms each), best one taken: on a shared machine some of them run uncontended,
    which a few long ones would not.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: first-call allocation and kernel selection
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return 2 * size**3 / best


def peak_flops(device: torch.device, threads: int, override_tflops: float | None) -> Peak:
    """The peak FLOP/s mfu(%) divides by, and where it comes from."""
    if override_tflops:
        return Peak(override_tflops * 1e12, f"--peak-tflops {override_tflops:g}")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16:
            if key in name:
                return Peak(value, f"{name} bf16 dense datasheet peak {value / 1e12:g} TFLOP/s")
        return Peak(312e12, f"{name} not in the table: assumed A100 bf16 312 TFLOP/s (set --peak-tflops)")
    flops = measure_cpu_peak(threads)
    return Peak(flops, f"measured fp32 GEMM rate of {threads} CPU thread(s): {flops / 1e9:.1f} GFLOP/s")


@dataclass
class MetricsLogger:
    """Accumulates per-step timings and logs a window every `log_every` steps."""

    rank: int
    path: Path
    peak: Peak
    log_every: int = 10
    _window: list[dict[str, float]] = field(default_factory=list)
    _all: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        self._write(
            {
                "event": "start",
                "rank": self.rank,
                "peak_flops": self.peak.flops,
                "peak_source": self.peak.source,
            }
        )

    def _write(self, doc: dict[str, Any]) -> None:
        self._file.write(json.dumps(doc) + "\n")

    def step(
        self,
        step: int,
        *,
        step_s: float,
        data_s: float,
        checkpoint_s: float,
        tokens: int,
        flops: float,
        loss: float | None,
    ) -> None:
        rec = {
            "step": step,
            "step_s": step_s,
            "data_s": data_s,
            "ckpt_s": checkpoint_s,
            "tokens": tokens,
            "flops": flops,
        }
        self._window.append(rec)
        self._all.append(rec)
        # the wall-clock end of the step (where gw.step() marks it): lines the records up with a run's spans
        self._write({"event": "step", "rank": self.rank, "loss": loss, **rec, "end_unix_ns": time.time_ns()})
        if (step + 1) % self.log_every == 0:
            self.flush_window(step, loss)

    @staticmethod
    def summarize(recs: list[dict[str, float]], peak_flops: float) -> dict[str, float]:
        """torchtitan-named metrics over a list of step records."""
        wall = sum(r["step_s"] for r in recs) or 1e-9
        return {
            "throughput(tps)": sum(r["tokens"] for r in recs) / wall,
            "mfu(%)": 100.0 * sum(r["flops"] for r in recs) / wall / peak_flops,
            "time_metrics/end_to_end(s)": wall / max(len(recs), 1),
            "time_metrics/data_loading(%)": 100.0 * sum(r["data_s"] for r in recs) / wall,
            "time_metrics/checkpoint_blocked(s)": sum(r["ckpt_s"] for r in recs),
        }

    def flush_window(self, step: int, loss: float | None) -> None:
        if not self._window:
            return
        m = self.summarize(self._window, self.peak.flops)
        self._window = []
        self._write({"event": "window", "rank": self.rank, "step": step, "loss": loss, **m})
        if self.rank == 0:
            loss_txt = f"loss {loss:7.4f}  " if loss is not None else ""
            print(
                f"[trainer] step {step + 1:4d}  {loss_txt}throughput(tps) {m['throughput(tps)']:8.0f}  "
                f"mfu(%) {m['mfu(%)']:5.1f}  end_to_end(s) {m['time_metrics/end_to_end(s)']:.3f}  "
                f"data_loading(%) {m['time_metrics/data_loading(%)']:5.1f}  "
                f"checkpoint_blocked(s) {m['time_metrics/checkpoint_blocked(s)']:.3f}",
                file=sys.stderr,
                flush=True,
            )

    def close(self, loss: float | None) -> dict[str, float]:
        """Log what is left and the whole-run figures (also returned)."""
        if self._window:
            self.flush_window(self._all[-1]["step"], loss)
        total = self.summarize(self._all, self.peak.flops) if self._all else {}
        self._write({"event": "end", "rank": self.rank, "steps": len(self._all), **total})
        self._file.close()
        return total
