"""`WatchConfig`: what an in-process watch collects and how often, with every default in one place.

`gpuwatch.watch(run_dir, sample_hz=..., ...)` takes the same names as keywords; `gpuwatch.Watcher(run_dir,
config)` takes the config itself (or the keywords). Keyword-only and frozen, so a typo is a TypeError when
the watch is made, never a KeyError inside the training job, and a config can be shared between runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchConfig:
    """Options of one `gpuwatch.watch`; the defaults suit any training loop."""

    profile_steps: int | tuple[int, int] | range | None = None
    """Also record torch.profiler over some steps: an int n (steps 1..n), a (first, stop) pair of step
    indices or a range. None: off."""
    sample_hz: float = 50.0
    """Stack sampler ticks per second at most, in Hz; 0 turns the sampler off. While ticks keep finding the
    training thread inside hooked regions and every long gap is explained, it slows to a quarter of this."""
    system_interval_s: float = 1.0
    """Seconds between two ticks of the NVML and /proc samplers."""
    hooks: bool = True
    """Install the torch (DataLoader, forward, backward, optimizer, copies), collective and checkpoint hooks."""
    observe_every_step: bool = False
    """Observe every step. False (default): where observing costs more than 0.2% of a step (steps of a few
    milliseconds), observe one step in 2**k and split the others' time as the observed ones split theirs
    (`gpuwatch/capture/step_pacing.py`); steps of tens of milliseconds and more are all observed anyway."""
    stack_sampler: bool = True
    """Sample the training thread's stack where no hook covers it (at `sample_hz`)."""
    system_samplers: bool = True
    """Start the NVML and /proc samplers when they can run here."""
    flush_interval_s: float = 1.0
    """Seconds between two writes of the collected records: at most what a SIGKILL loses."""
    max_queue: int = 200_000
    """Records held in memory before new ones are dropped (and counted), in records."""
    rank: int | None = None
    """This process's global rank. None: from torch.distributed, else `RANK`, else 0."""
    world_size: int | None = None
    """Processes in the job. None: from torch.distributed, else `WORLD_SIZE`, else 1."""
    metrics_port: int | None = None
    """Serve this rank's Prometheus `/metrics` on this TCP port (0: any free port; None: no endpoint).
    The same metrics as `gpuwatch export prometheus` (reports/prometheus.py), analysed on a scrape at most
    every 5 s in a thread of the job."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint listens on: loopback unless told otherwise ("0.0.0.0": every interface)."""
