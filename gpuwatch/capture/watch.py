"""`gpuwatch.watch`: in-process collection around any training loop.

```python
with gpuwatch.watch("runs/exp1") as gw:
    for batch in loader:
        ...
        gw.step()          # marks the end of a training step
```

`gw.step(stage="video_256", tags={"source": "video_hr"})` also labels the step it closes: the stage persists
until a later step names another, the tags describe this step alone; `gpuwatch summary` splits the budget by
stage and by tag value, and names the tag value that makes the slowest rank slow.

Starting a watch opens this process's writer in the run directory (one folder per rank; under torchrun or
an initialized process group every rank joins the same run), publishes a `HookContext` that the hooks in
`collectors/` read, and starts: torch phase hooks (DataLoader, forward, backward, optimizer, copies),
collective hooks, checkpoint hooks, the stack sampler of the training thread, the NVML and /proc samplers
when those collectors are present, and an optional torch.profiler window. `gw.step()` emits one `step` span
from the previous boundary, so the engine knows the training thread and the steps.

Never hurts the job: a watch that cannot start (unwritable directory...) warns once on stderr and does
nothing; hooks note their own failures (shown in `gpuwatch summary`); SIGTERM and normal exit flush
everything (the previous SIGTERM handler still runs), SIGKILL loses at most the last flush interval.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuwatch.capture.step_pacing import StepPacer
from gpuwatch.capture.watch_config import WatchConfig
from gpuwatch.records import SpanKind

if TYPE_CHECKING:  # the collectors load when a watch starts: `import gpuwatch` stays light
    from collectors.base import Collector
    from collectors.hooks.checkpoint_hooks import CheckpointHooks
    from collectors.hooks.collective_hooks import CollectiveHooks
    from collectors.hooks.hook_context import HookContext
    from collectors.hooks.profiler_window import ProfilerWindow
    from collectors.hooks.stack_sampler import StackSampler
    from collectors.hooks.torch_hooks import TorchHooks

_ACTIVE: Watcher | None = None
_LOCK = threading.Lock()
_RUN_HOOK: Any = None
"""Set in the processes `gpuwatch run` starts (capture/run_child.py): `_RUN_HOOK(watcher)` returns True when
the script's own watch joined the process's run watch instead of starting a second one."""
_DEFAULTS = WatchConfig()


def watch(
    run_dir: str | os.PathLike[str] | None = None,
    *,
    profile_steps: int | tuple[int, int] | range | None = _DEFAULTS.profile_steps,
    sample_hz: float = _DEFAULTS.sample_hz,
    system_interval_s: float = _DEFAULTS.system_interval_s,
    hooks: bool = _DEFAULTS.hooks,
    stack_sampler: bool = _DEFAULTS.stack_sampler,
    observe_every_step: bool = _DEFAULTS.observe_every_step,
    system_samplers: bool = _DEFAULTS.system_samplers,
    flush_interval_s: float = _DEFAULTS.flush_interval_s,
    max_queue: int = _DEFAULTS.max_queue,
    rank: int | None = _DEFAULTS.rank,
    world_size: int | None = _DEFAULTS.world_size,
    metrics_port: int | None = _DEFAULTS.metrics_port,
    metrics_host: str = _DEFAULTS.metrics_host,
) -> Watcher:
    """Watch the training loop of this process; use as `with gpuwatch.watch(run_dir) as gw:`.

    Args:
        run_dir: run directory (created or joined). Default: `$GPUWATCH_RUN_DIR`, else
            `gpuwatch-runs/<torchrun run id or start time>`.
        profile_steps, sample_hz, system_interval_s, hooks, stack_sampler, observe_every_step, system_samplers,
        flush_interval_s, max_queue, rank, world_size, metrics_port, metrics_host: the fields of
            `WatchConfig` (each says its unit and what its default means).

    Returns:
        A `Watcher`; it starts on `__enter__` (or `.start()`).
    """
    config = WatchConfig(
        profile_steps=profile_steps,
        sample_hz=sample_hz,
        system_interval_s=system_interval_s,
        hooks=hooks,
        stack_sampler=stack_sampler,
        observe_every_step=observe_every_step,
        system_samplers=system_samplers,
        flush_interval_s=flush_interval_s,
        max_queue=max_queue,
        rank=rank,
        world_size=world_size,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    return Watcher(run_dir, config)


class Watcher:
    """One process's collection into a run directory. Create it with `gpuwatch.watch(...)`, or directly.

    Args:
        run_dir: run directory (created or joined); None: as `gpuwatch.watch` picks it.
        config: what to collect; None: `WatchConfig()`'s defaults.
        **options: `WatchConfig` fields that override `config` (`Watcher(dir, sample_hz=0)`); an unknown
            name raises TypeError.
    """

    def __init__(
        self, run_dir: str | os.PathLike[str] | None, config: WatchConfig | None = None, **options: Any
    ) -> None:
        from collectors.hooks.profiler_window import parse_profile_steps

        config = config if config is not None else _DEFAULTS
        self.config = dataclasses.replace(config, **options) if options else config
        self.profile_window = parse_profile_steps(self.config.profile_steps)
        self.run_dir = Path(run_dir) if run_dir is not None else _default_run_dir()
        self.rank = 0
        self.world_size = 1
        self.enabled = False
        """True while collecting; False before start, after close, or when the watch could not start."""
        self.writer: Any = None
        self.ctx: HookContext | None = None
        self._collectors: list[Collector] = []
        self._torch_hooks: TorchHooks | None = None
        self._collectives: CollectiveHooks | None = None
        self._checkpoints: CheckpointHooks | None = None
        self._stack_sampler: StackSampler | None = None
        self._profiler: ProfilerWindow | None = None
        self._step_index = 0
        self._step_start_ns = 0
        self._step_serial = 0
        self._observed_steps = 0
        self._boundary_steps: frozenset[int] = frozenset()
        self._pacer = StepPacer(enabled=not self.config.observe_every_step)
        self._stage: str | None = None
        self._pid = os.getpid()
        self._closing = False
        self._prev_sigterm: Any = None
        self._sigterm_installed = False
        self.metrics: Any = None
        """The running `/metrics` endpoint (`reports.prometheus.MetricsServer`) with `metrics_port`, else None."""

    # ---- public ----------------------------------------------------------------------------------------
    @property
    def step_index(self) -> int:
        """How many steps `step()` has closed so far."""
        return self._step_index

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and self.writer is not None and exc_type is not GeneratorExit:
            try:
                self.writer.note("job_exception", f"the watched block raised {exc_type.__name__}: {exc}")
            except Exception:
                pass
        self.close()

    def start(self) -> Watcher:
        """Begin collecting (idempotent). Never raises: a watch that cannot start warns and stays off."""
        global _ACTIVE
        if self.enabled or self._closing:
            return self
        if _RUN_HOOK is not None and _RUN_HOOK(self):
            return self
        with _LOCK:
            if _ACTIVE is not None and _ACTIVE is not self:
                warnings.warn(
                    f"gpuwatch: a watch is already running in this process ({_ACTIVE.run_dir}); "
                    "this one does nothing",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return self
            try:
                self._open()
            except Exception as exc:
                warnings.warn(
                    f"gpuwatch: not collecting ({type(exc).__name__}: {exc}); training goes on",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._teardown_quietly()
                return self
            _ACTIVE = self
        return self

    def step(self, stage: str | None = None, tags: Mapping[str, Any] | None = None) -> None:
        """Mark the end of one training step (call once per step, on the training thread).

        Args:
            stage: the training stage this step belongs to ("images", "video_256"); it persists until a
                later call names another, so say it once per stage (None: the stage so far, if any).
            tags: facts about this step alone, each value turned into text (`{"source": "video_hr"}`: what
                this rank drew); `gpuwatch summary` splits the budget by stage and by each tag's values,
                and names the tag value that makes the slowest rank slow.
        """
        ctx = self.ctx
        if not self.enabled or ctx is None:
            return
        try:
            if threading.get_ident() != ctx.train_ident and self._step_index == 0:
                ctx.rehome()  # the first step() came from another thread than the one that started the watch
            t = ctx.begin("step")
        except Exception as exc:
            ctx.hook_error("step", exc)
            return
        try:
            index = self._step_index
            if stage is not None:
                self._stage = str(stage)
            was_observed = ctx.observing
            attrs = _step_attrs(self._stage, tags) if tags or self._stage is not None else None
            if was_observed:
                self._observed_steps += 1
            else:
                attrs = _UNOBSERVED if attrs is None else {**attrs, "observed": False}
            ctx.emit_span(
                self._step_start_ns,
                t,
                SpanKind.STEP.value,
                f"step {index}",
                None,
                tid=ctx.train_tid,
                step=index,
                attrs=attrs,
            )
            step_ns = t - self._step_start_ns
            self._step_start_ns = t
            self._step_index = index + 1
            ctx.step = index + 1
            regions = ctx.gap_serial - self._step_serial
            observe = self._pacer.next_observed(index, step_ns, regions, was_observed)
            if observe or was_observed or index in self._boundary_steps or self._profiler is not None:
                self._on_boundary(index)  # between two unobserved steps only what a step number starts
            observe = observe or self._must_observe()
            if observe != was_observed:
                self._set_observing(ctx, observe)
            self._step_serial = ctx.gap_serial
        except Exception as exc:
            ctx.hook_error("step", exc)
        finally:
            ctx.abandon("step")  # gpuwatch's own work above is not the job's: the next gap starts now

    def close(self, status: str = "ended") -> None:
        """Stop collecting and write everything (idempotent; a forked child never closes its parent's run)."""
        global _ACTIVE
        if self._closing or os.getpid() != self._pid:
            return
        self._closing = True
        was_enabled, self.enabled = self.enabled, False
        try:
            if was_enabled and self.ctx is not None:
                self.ctx.begin("close")  # closes the last gap, so the sampler can explain it
            for collector in reversed(self._collectors):
                try:
                    collector.stop()
                except Exception as exc:
                    if self.ctx is not None:
                        self.ctx.hook_error(f"stop:{collector.name}", exc)
            from collectors.hooks.hook_context import WATCHING, activate

            if WATCHING is self.ctx:  # ACTIVE is None where the last step was not observed
                activate(None)
            if self.ctx is not None:
                self.ctx.train_clock.close()  # its /proc file (a watch per notebook cell leaks none)
            if self.writer is not None:
                self._note_pacing()
                self.writer.set_meta(**self._final_meta())
                self.writer.close(status)
            if self.metrics is not None:
                self.metrics.close()
                self.metrics = None
        except Exception as exc:  # closing must not turn a finished job into a failed one
            print(f"gpuwatch: closing the run failed: {exc!r}", file=sys.stderr)
        finally:
            self._restore_signals()
            with _LOCK:
                if _ACTIVE is self:
                    _ACTIVE = None

    # ---- internals ---------------------------------------------------------------------------------------
    def _open(self) -> None:
        from collectors.hooks.hook_context import HookContext, activate
        from gpuwatch.store.run_dir import run_for_process
        from gpuwatch.store.segment_writer import SegmentWriter

        config = self.config
        self.rank, self.world_size = _rank_and_world(config.rank, config.world_size)
        run = run_for_process(
            source="watch",
            rank=self.rank,
            pid=self._pid,
            command=" ".join([sys.executable, *sys.argv]),
            world_size=self.world_size,
            started_at_unix_ns=time.time_ns() + _test_clock_skew_ns(),
            meta=_start_meta(config),
        )
        self.writer = SegmentWriter(
            self.run_dir, run, flush_interval_s=config.flush_interval_s, max_queue=config.max_queue
        )
        # the hooks measure from the true start; only the recorded anchor carries a planted skew
        anchor = self.writer.run.started_at_unix_ns - _test_clock_skew_ns()
        self.ctx = ctx = HookContext(self.writer, self.rank, anchor)
        activate(ctx)
        self.enabled = True
        self._start_collectors(ctx)
        if config.metrics_port is not None:
            self._start_metrics(ctx)
        self._install_signals(ctx)
        # the first step starts when the job gets control back, not while gpuwatch was starting up
        self._step_start_ns = ctx.restart_gap("start")
        self._step_serial = ctx.gap_serial

    def _start_collectors(self, ctx: HookContext) -> None:
        config = self.config
        if config.hooks:
            from collectors.hooks.checkpoint_hooks import CheckpointHooks
            from collectors.hooks.collective_hooks import CollectiveHooks
            from collectors.hooks.torch_hooks import DISCOVERY_STEPS, TorchHooks

            # a step whose end starts module discovery for the next runs its boundary in full, observed or not
            self._boundary_steps = frozenset(d - 1 for d in DISCOVERY_STEPS if d > 0)
            self._torch_hooks = TorchHooks(ctx)
            self._start(ctx, self._torch_hooks)
            self._collectives = CollectiveHooks(ctx, timer=self._torch_hooks.timer)
            self._start(ctx, self._collectives)
            self._checkpoints = CheckpointHooks(ctx)
            self._start(ctx, self._checkpoints)
        if config.stack_sampler and config.sample_hz > 0:
            from collectors.hooks.stack_sampler import StackSampler

            self._stack_sampler = StackSampler(ctx, hz=config.sample_hz)
            self._start(ctx, self._stack_sampler)
        if config.system_samplers:
            for sampler in _system_samplers(config.system_interval_s, ctx, self.rank):
                self._start(ctx, sampler)
        if self.profile_window is not None:
            from collectors.hooks.profiler_window import ProfilerWindow

            self._profiler = ProfilerWindow(
                ctx, self.profile_window, self.run_dir / "profiles", self.writer.write_span_columns
            )
            self._start(ctx, self._profiler)

    def _start_metrics(self, ctx: HookContext) -> None:
        # The exporter is a view (reports/); capture reaches it only here, lazily, when the user asks for
        # an endpoint, so one implementation serves `gpuwatch export prometheus` and the watch alike.
        try:
            from reports.prometheus import serve

            self.metrics = serve(
                self.run_dir,
                host=self.config.metrics_host,
                port=int(self.config.metrics_port or 0),
                ranks=[self.rank],
            )
            self.writer.set_meta(metrics_url=self.metrics.url)
        except Exception as exc:  # a port in use must not stop the job: noted, shown in the summary
            ctx.hook_error("metrics_endpoint", exc)

    def _start(self, ctx: HookContext, collector: Collector) -> None:
        try:
            collector.start(self.writer)
            self._collectors.append(collector)
        except Exception as exc:
            ctx.hook_error(f"start:{collector.name}", exc)

    def _on_boundary(self, finished: int) -> None:
        if self._torch_hooks is not None:
            if not self._torch_hooks.started:  # torch imported after the watch started
                self._torch_hooks.start(self.writer)
                if self._collectives is not None:
                    self._collectives.start(self.writer)
            self._torch_hooks.on_step(finished)
        if self._collectives is not None:
            self._collectives.refresh()
        if self._checkpoints is not None:
            self._checkpoints.refresh()
        if self._profiler is not None:
            self._profiler.on_boundary(finished + 1)

    def _set_observing(self, ctx: HookContext, observe: bool) -> None:
        from collectors.hooks.hook_context import observe as set_observing

        hooks = self._torch_hooks
        if hooks is not None:
            if observe:
                hooks.resume()
            else:
                hooks.pause()
        set_observing(ctx, observe)

    def _must_observe(self) -> bool:
        """Steps observed whatever their cost: while the torch hooks look for top-level modules, and inside a
        torch.profiler window."""
        hooks = self._torch_hooks
        if hooks is not None and hooks.discovering:
            return True
        profiler = self._profiler
        return (profiler is not None and profiler.recording) or not self._steps_from_calls()

    def _steps_from_calls(self) -> bool:
        """Are steps cut by calls that come whether a step is observed or not (`gw.step()`)? A watch that
        finds steps from its hooks' regions must observe them all."""
        return True

    def _note_pacing(self) -> None:
        seen, steps = self._observed_steps, self._step_index
        if seen < steps:
            self.writer.note(
                "step_pacing",
                f"observed {seen} of {steps} steps (steps of {self._pacer.step_ns / 1e6:.1f} ms: one block of "
                f"{1 << self._pacer.block_shift} steps in {1 << self._pacer.shift} at the end); the others' "
                "time is split as the observed steps split theirs (gpuwatch.watch(observe_every_step=True) "
                "observes all)",
            )

    def _final_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "steps": self._step_index,
            "observed_steps": self._observed_steps,
            "observe_one_in": 1 << self._pacer.shift,
        }
        torch_hooks = self._torch_hooks
        if torch_hooks is not None:
            meta["ddp_seen"] = torch_hooks.ddp_seen
            meta["device_timing"] = torch_hooks.timer is not None
        sampler = self._stack_sampler
        if sampler is not None and sampler in self._collectors:  # it started
            meta["stack_samples"] = sampler.samples
            meta["stack_probes"] = sampler.probes
            meta["stack_probe_samples"] = sampler.probe_samples
        return meta

    def _teardown_quietly(self) -> None:
        from collectors.hooks.hook_context import WATCHING, activate

        for collector in reversed(self._collectors):
            try:
                collector.stop()
            except Exception:
                pass
        if self.ctx is not None and WATCHING is self.ctx:
            activate(None)
        if self.ctx is not None:
            self.ctx.train_clock.close()
        if self.writer is not None:
            try:
                self.writer.close("failed_to_start")
            except Exception:
                pass
        self.enabled = False

    # ---- signals and exit --------------------------------------------------------------------------------
    def _install_signals(self, ctx: HookContext) -> None:
        atexit.register(self._atexit)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        try:
            self._prev_sigterm = signal.getsignal(signal.SIGTERM)
            if self._prev_sigterm is None:  # a handler installed from C: we could not chain to it
                ctx.note_once("sigterm", "SIGTERM has a non-Python handler: not flushing on SIGTERM")
                return
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._sigterm_installed = True
        except (ValueError, OSError) as exc:
            ctx.hook_error("sigterm_handler", exc)

    def _restore_signals(self) -> None:
        try:
            atexit.unregister(self._atexit)
        except Exception:
            pass
        if not self._sigterm_installed:
            return
        self._sigterm_installed = False
        try:
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._prev_sigterm)
        except (ValueError, OSError):
            pass

    def _atexit(self) -> None:
        self.close()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        prev = self._prev_sigterm
        self.close(status="terminated")
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_IGN:
            return
        else:  # default action: terminate by the signal, as the job would have without gpuwatch
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)


# ---- helpers ------------------------------------------------------------------------------------------------
_UNOBSERVED = {"observed": False}
"""The attrs of a step the watch did not observe (`gpuwatch.capture.step_pacing`); one shared dict, read-only."""


def _step_attrs(stage: str | None, tags: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The step span's attrs: `{"stage": str, "tags": {key: str}}`, each part only when given."""
    attrs: dict[str, Any] = {}
    if stage is not None:
        attrs["stage"] = stage
    if tags:
        attrs["tags"] = {str(k): str(v) for k, v in tags.items()}
    return attrs or None


def _default_run_dir() -> Path:
    env = os.environ.get("GPUWATCH_RUN_DIR")
    if env:
        return Path(env)
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return Path("gpuwatch-runs") / run_id
    return Path("gpuwatch-runs") / time.strftime("%Y%m%d-%H%M%S")


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """From the arguments, else an initialized process group, else RANK/WORLD_SIZE, else (0, 1)."""
    r, w = 0, 1
    dist = getattr(sys.modules.get("torch"), "distributed", None)
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            r, w = int(dist.get_rank()), int(dist.get_world_size())
        else:
            r = int(os.environ.get("RANK", "0"))
            w = int(os.environ.get("WORLD_SIZE", "1"))
    except (ValueError, RuntimeError):
        r, w = 0, 1
    if rank is not None:
        r = rank
    if world_size is not None:
        w = world_size
    return r, max(w, r + 1)


TEST_CLOCK_SKEW_ENV = "GPUWATCH_TEST_CLOCK_OFFSET_NS"
"""Test-only: nanoseconds added to this process's recorded clock anchor, as if its host's wall clock ran that
far ahead (negative: behind). The multi-node test plants it on one torchrun agent and checks that the
cross-rank alignment (attribution/clock_align.py) recovers it; never set it in a real job."""


def _test_clock_skew_ns() -> int:
    try:
        return int(os.environ.get(TEST_CLOCK_SKEW_ENV, "0") or 0)
    except ValueError:
        return 0


def _clock_domain() -> str:
    """Which clock this process reads: its host, and under torchrun its agent (node) rank, so two agents on
    one machine (a multi-node test) count as two nodes; on real nodes the host alone tells them apart."""
    import socket

    group = os.environ.get("GROUP_RANK")
    return socket.gethostname() + (f"/node{group}" if group is not None else "")


def _start_meta(config: WatchConfig) -> dict[str, Any]:
    torch = sys.modules.get("torch")
    meta: dict[str, Any] = {
        "python": sys.version.split()[0],
        "sample_hz": config.sample_hz,
        "launcher": "torchrun" if os.environ.get("TORCHELASTIC_RUN_ID") else None,
        "clock_domain": _clock_domain(),
    }
    if _test_clock_skew_ns():
        meta["test_clock_offset_ns"] = _test_clock_skew_ns()
    if torch is not None:
        meta["torch"] = getattr(torch, "__version__", None)
        try:
            meta["cuda_available"] = bool(torch.cuda.is_available())
            if meta["cuda_available"]:
                meta["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:
            meta["cuda_available"] = False
    return meta


def _system_samplers(interval_s: float, ctx: HookContext, rank: int) -> list[Collector]:
    """The /proc sampler of this process and its children, and the NVML sampler of the same processes."""
    found: list[Collector] = []
    proc = None
    try:
        from collectors.system.proc_sampler import ProcSampler

        proc = ProcSampler(interval_s, ctx.anchor_unix_ns, pid=None, rank=rank)
        found.append(proc)
    except Exception as exc:
        ctx.hook_error("start:proc_sampler", exc)
    try:
        from collectors.system.nvml_sampler import NvmlSampler

        pids = proc.watched_pids if proc is not None else None
        found.append(NvmlSampler(interval_s, ctx.anchor_unix_ns, pids=pids, rank=rank))
    except Exception as exc:
        ctx.hook_error("start:nvml_sampler", exc)
    return found
