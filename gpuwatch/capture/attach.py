"""`gpuwatch attach PID`: sample a running trainer with no code change and write a normal run directory.

Pieces (all started here, all stopped here):
- `collectors.pyspy.pyspy_sampler.PySpyRecorder`: chunked non-blocking py-spy of the target and its children;
- `collectors.pyspy.attach_stacks.AttachStacks`: training thread, classified spans, steps, DataLoader workers;
- `collectors.system.nvml_busy.NvmlBusySampler` + `place_busy`: on a GPU, device-busy time from NVML;
- the /proc and NVML samplers of the in-process path, when installed (imported lazily, optional).

The run directory is written while sampling (one chunk of latency), so `gpuwatch summary` works during and
after. Stopping (duration reached, Ctrl-C, SIGTERM) is clean: the running py-spy chunk is finished and
written. When the target exits, the run is kept and marked `target_exited`; that is not an error.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gpuwatch.errors import AttachError, UsageError
from gpuwatch.records import Span

T = TypeVar("T")

DEFAULT_RATE_HZ = 100
DEFAULT_CHUNK_S = 2.0
WORKER_CHUNK_S = 10.0
CHILDREN_CHECK_S = 2.0
"""How often attach looks for new child processes of the target (DataLoader workers) to sample them."""
DEFAULT_CPU_BUDGET_PCT = 2.5
"""What sampling may take while the host is saturated, percent of one core, all of it: the training process's
py-spy gets `TRAINING_SHARE` of it, the workers' py-spys `WORKERS_SHARE`, and the rest is left for attach's
own Python (decoding, classifying and writing the samples: 1-2% of a core at 100 Hz). On a saturated host
every point of a core sampling takes is lost to the job, and then some (a wake-up preempts a worker mid-decode):
with the training process's py-spy alone at 5% and the workers' at 2.5% more, the saturated benchmark's trainer
ran 7.1% slower (2 cores); at a budget of 5 (sampling 4.6-5.0% of a core, the training process at ~37 Hz) it
ran +3.05%, +2.59% and +5.11% slower in three runs of 12 rounds (`benchmarks/attach_overhead.py --workload
saturated`), against +0.25% for attach at 5 Hz (1.2% of a core). Hence 2.5: the training process at ~18 Hz
on such a host, enough for steps of 100 ms and more (a step of 40 ms at 18 Hz is a sample or two, and the
uncertainty attach reports says so)."""
TRAINING_SHARE = 0.6
"""Of the budget, the training process's py-spy: 1.5% of a core by default, about 18 Hz while saturated
(`yielding.PRIOR_SAMPLE_CPU_S`: 0.66-0.75 ms of py-spy's CPU a sample on the 2-core VM)."""
WORKERS_SHARE = 0.2
"""Of the budget, the workers' py-spys together (a few Hz each while saturated; their shares' uncertainty
is reported)."""


@dataclass(frozen=True, slots=True)
class AttachOptions:
    """What `gpuwatch attach` was asked to do."""

    pid: int
    out_dir: Path | None = None
    """Run directory; None = runs/attach-<pid>-<time>."""
    duration_s: float | None = None
    """Stop after this many seconds; None = until Ctrl-C or the target exits."""
    rate_hz: int = DEFAULT_RATE_HZ
    thread: str | None = None
    """Training thread override: a kernel thread id or a thread name."""
    subprocesses: bool = True
    """Sample the target's child processes (DataLoader workers) too, each with a sparser py-spy of its own."""
    worker_rate_hz: int | None = None
    """Samples per second of the workers; None = a tenth of `rate_hz` (at least 5)."""
    cpu_budget_pct: float = DEFAULT_CPU_BUDGET_PCT
    """Sampling's CPU allowance, percent of one core, while the host is saturated (4x that while it has a core
    to spare): `TRAINING_SHARE` of it for the training process's py-spy, `WORKERS_SHARE` for the workers'. A
    py-spy run over its share lowers the rate of its next one. 0 turns the budget off."""
    yield_cpu: bool = True
    """Run the workers' py-spy and gpuwatch's own sampling threads at the lowest CPU priority (SCHED_IDLE, else
    nice 19). The training process's py-spy always runs at normal priority, held by `cpu_budget_pct`: at the
    lowest priority it samples only when a core is free, which on a saturated host put 4-15 points of the
    training thread's CPU work into its waits."""
    pyspy: str | None = None
    chunk_s: float = DEFAULT_CHUNK_S
    """Seconds per py-spy run: how far the run directory lags behind the target."""
    min_step_confidence: float = 0.6
    gpu: bool = True
    """Query NVML for device utilization (CPU mode without a driver either way)."""
    system_samplers: bool = True
    """Also run the /proc and NVML samplers of the in-process path when they are installed."""


@dataclass
class AttachResult:
    run_dir: Path
    status: str
    """"ended" (duration reached or stopped by the user) or "target_exited"."""
    sampled_s: float
    report: dict[str, Any] = field(default_factory=dict)


def default_out_dir(pid: int) -> Path:
    return Path("runs") / f"attach-{pid}-{time.strftime('%Y%m%d-%H%M%S')}"


def _read_proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def target_facts(pid: int) -> dict[str, Any]:
    """Command line, Python version and torchrun rank of the target, as far as /proc tells (never raises)."""
    cmdline = _read_proc(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
    env = dict(
        kv.split("=", 1)
        for kv in _read_proc(pid, "environ").decode(errors="replace").split("\0")
        if "=" in kv
    )
    version = None
    m = re.search(rb"python(\d+\.\d+)", _read_proc(pid, "maps"))
    if m:
        version = m.group(1).decode()

    def as_int(key: str, default: int) -> int:
        try:
            return int(env.get(key, default))
        except ValueError:
            return default

    return {
        "command": cmdline or f"pid {pid}",
        "python": version,
        "rank": as_int("RANK", 0),
        "world_size": as_int("WORLD_SIZE", 1),
        "local_rank": as_int("LOCAL_RANK", 0),
    }


class _ThreadResolver:
    """(pid, Python thread id) -> (kernel tid, name) from `py-spy dump`, re-dumped at most every 10 s per pid."""

    def __init__(self, pyspy: str, threads: list[Any]) -> None:
        self.pyspy = pyspy
        self._map = {(t.pid, t.thread_id): (t.os_tid or 0, t.name) for t in threads}
        self._dumped: dict[int, float] = {}

    def __call__(self, pid: int, thread_id: int) -> tuple[int, str] | None:
        hit = self._map.get((pid, thread_id))
        if (hit is None or not hit[0]) and time.monotonic() - self._dumped.get(pid, -1e9) > 10.0:
            self._dumped[pid] = time.monotonic()
            from collectors.pyspy.pyspy_sampler import probe_threads

            try:
                for t in probe_threads(self.pyspy, pid, timeout_s=10.0):
                    self._map[(t.pid, t.thread_id)] = (t.os_tid or 0, t.name)
            except Exception:
                pass
            hit = self._map.get((pid, thread_id))
        if hit is None or not hit[0]:
            return None
        return hit


def pick_thread(threads: list[Any], pid: int, wanted: str) -> tuple[int, int]:
    """The (pid, Python thread id) of `--thread` (kernel tid or thread name). Raises UsageError if absent."""
    for t in threads:
        if (wanted.isdigit() and t.os_tid == int(wanted)) or t.name == wanted:
            return t.pid, t.thread_id
    listing = ", ".join(f"{t.os_tid} ({t.name or '?'})" for t in threads if t.pid == pid) or "none"
    raise UsageError(f"no Python thread {wanted!r} in process {pid}; its Python threads: {listing}")


class _BusyPlacer:
    """Buffers the training thread's spans and lays NVML busy intervals over them once both are in."""

    def __init__(self, sampler: Any, sink: Any, rank: int, pid: int) -> None:
        self.sampler = sampler
        self.sink = sink
        self.rank = rank
        self.pid = pid
        self._host: list[tuple[int, int, str | None]] = []
        self._lock = threading.Lock()
        self.placed = 0

    def add(self, spans: list[Span]) -> None:
        with self._lock:
            self._host.extend((s.start_ns, s.end_ns, s.category) for s in spans)
            self._place(final=False)

    def finish(self) -> None:
        with self._lock:
            self._place(final=True)

    def _place(self, final: bool) -> None:
        from collectors.system.nvml_busy import place_busy

        if not self._host or not self.sampler.available:
            return
        self._host.sort()
        horizon = None if final else self._host[-1][1]
        busy = self.sampler.take(horizon)
        if not busy:
            return
        for span in place_busy(busy, self._host, rank=self.rank, pid=self.pid):
            self.sink.emit_span(span)
            self.placed += 1
        first_open = min(b.start_ns for b in busy) if busy else 0
        self._host = [h for h in self._host if h[1] > first_open]  # keep what later intervals may need


def _started_lowered(opts: AttachOptions, start: Callable[[], T]) -> T:
    """`start()`, from a thread at the lowest CPU priority when attach yields (the threads it starts inherit
    that priority; the caller's thread keeps its own), else from this thread."""
    if not opts.yield_cpu:
        return start()
    from collectors.pyspy.yielding import call_lowered

    return call_lowered(start)


def _start_system_samplers(opts: AttachOptions, anchor: int, rank: int, writer: Any) -> list[Any]:
    """The in-process path's /proc and NVML samplers, aimed at the target; absent modules are skipped."""
    started: list[Any] = []
    if not opts.system_samplers:
        return started
    proc = None
    try:
        from collectors.system.proc_sampler import ProcSampler

        proc = ProcSampler(1.0, anchor, pid=opts.pid, rank=rank)
        proc.start(writer)
        started.append(proc)
    except Exception as exc:  # not installed yet, or a constructor we do not know: attach goes on
        writer.note("attach_proc_sampler", f"/proc sampler not used: {type(exc).__name__}: {exc}")
    if opts.gpu:
        try:
            from collectors.system.nvml_sampler import NvmlSampler  # type: ignore[import-not-found]

            pids = proc.watched_pids if proc is not None else (lambda: {opts.pid})
            nvml = NvmlSampler(1.0, anchor, pids=pids, rank=rank)
            nvml.start(writer)
            started.append(nvml)
        except Exception as exc:
            writer.note("attach_nvml_sampler", f"NVML sampler not used: {type(exc).__name__}: {exc}")
    return started


def attach(
    opts: AttachOptions,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[str], None] | None = None,
    progress_every_s: float = 5.0,
    nvml: Any = None,
) -> AttachResult:
    """Sample `opts.pid` into a run directory until the duration, `stop`, or the target's exit.

    `nvml` replaces the `pynvml` module (tests at the NVML boundary); None imports nvidia-ml-py.

    Raises:
        UsageError: no such process, a thread id instead of a process, not a Python process, bad --thread.
        AttachError: no permission, a Python py-spy cannot read, py-spy missing, py-spy failing mid-run
            (the run written so far is kept and named in the message).
    """
    from collectors.pyspy.attach_stacks import AttachStacks
    from collectors.pyspy.pyspy_sampler import (
        PySpyRecorder,
        check_target,
        find_pyspy,
        probe_threads,
        process_alive,
        pyspy_version,
    )
    from collectors.pyspy.worker_recorders import WorkerRecorders
    from collectors.pyspy.yielding import HostReading, spare_cores_at_start
    from collectors.system.nvml_busy import NvmlBusySampler
    from gpuwatch.store.run_dir import run_for_process
    from gpuwatch.store.segment_writer import SegmentWriter

    if not 1 <= opts.rate_hz <= 1000:
        raise UsageError(f"--rate must be between 1 and 1000 samples per second, not {opts.rate_hz}")
    worker_rate = opts.worker_rate_hz or max(5, opts.rate_hz // 10)
    if not 1 <= worker_rate <= 1000:
        raise UsageError(f"--worker-rate must be between 1 and 1000 samples per second, not {worker_rate}")
    if opts.cpu_budget_pct < 0:
        raise UsageError(
            f"--cpu-budget must be 0 (off) or a positive percent of one core, not {opts.cpu_budget_pct}"
        )
    if opts.duration_s is not None and opts.duration_s <= 0:
        raise UsageError(f"--duration must be positive, not {opts.duration_s}")
    host_at_start = HostReading.now()  # is the host saturated? (the first py-spy run's rate)
    check_target(opts.pid)
    pyspy = find_pyspy(opts.pyspy)
    threads = probe_threads(pyspy, opts.pid)
    override = pick_thread(threads, opts.pid, opts.thread) if opts.thread else None
    stop = stop or threading.Event()

    facts = target_facts(opts.pid)
    out_dir = Path(opts.out_dir) if opts.out_dir is not None else default_out_dir(opts.pid)
    anchor = time.time_ns()
    run = run_for_process(
        source="attach",
        rank=facts["rank"],
        pid=opts.pid,
        command=facts["command"],
        world_size=facts["world_size"],
        started_at_unix_ns=anchor,
        meta={
            "attach": {
                "py_spy": pyspy,
                "py_spy_version": pyspy_version(pyspy),
                "python": facts["python"],
                "rate_hz": opts.rate_hz,
                "chunk_s": opts.chunk_s,
                "subprocesses": opts.subprocesses,
                "mode": "nonblocking",
            }
        },
    )
    # its flush thread at the lowest priority: writing a second later costs nobody
    writer = _started_lowered(opts, lambda: SegmentWriter(out_dir, run))
    rank = facts["rank"]
    worker_pids: list[int] = []  # filled in by the stack attribution as workers show up

    busy_sampler = NvmlBusySampler(0.2, anchor, pids=lambda: {opts.pid, *worker_pids}, rank=rank, nvml=nvml)
    placer = _BusyPlacer(busy_sampler, writer, rank, opts.pid)
    if opts.gpu:  # before the stacks: whether there is a GPU decides how `.item()` lines count
        busy_sampler.start(writer)
    stacks = AttachStacks(
        writer,
        rank=rank,
        anchor_unix_ns=anchor,
        target_pid=opts.pid,
        rate_hz=opts.rate_hz,
        resolve_thread=_ThreadResolver(pyspy, threads),
        thread_override=override,
        min_step_confidence=opts.min_step_confidence,
        on_training_spans=placer.add,
        device_syncs=busy_sampler.available,
    )
    worker_pids = stacks.workers.pids  # the lambda above reads this name: now the live list

    def on_chunk(intervals: list[Any], final: bool) -> None:
        # `final` is ignored: with two recorders the stacks are closed once both have stopped (below)
        try:
            stacks.rate_hz = recorder.governor.rate_hz  # step detection's samples-per-step expectation
            stacks.feed(intervals, False)
            writer.set_meta(attach={**run.meta["attach"], **stacks.report()})
        except Exception as exc:  # a bug here must not lose the run: note it, keep sampling
            writer.note("attach_error", f"processing samples failed: {type(exc).__name__}: {exc}")

    budget = opts.cpu_budget_pct / 100.0
    # on a saturated host the first runs keep to the budget too: at the asked rate the first (2 s) run took
    # 1.5-2x its share, and the workers' (10 s) runs twice theirs, before any run had measured its cost
    spare_at_start = spare_cores_at_start(host_at_start, stop) if budget > 0 else None
    # the training process alone at the full rate; its workers (children) sparsely, by a second py-spy
    recorder = PySpyRecorder(
        pyspy,
        opts.pid,
        rate_hz=opts.rate_hz,
        chunk_s=opts.chunk_s,
        subprocesses=False,
        on_chunk=on_chunk,
        yield_cpu=opts.yield_cpu,
        lower_pyspy=False,  # see PySpyRecorder: yielding here undercounted CPU work by 4-15 pp
        cpu_budget_cores=budget * TRAINING_SHARE,
        spare_cores_at_start=spare_at_start,
    )
    # the workers (children), each by a py-spy of its own, sparsely: found by gpuwatch, not --subprocesses
    # (collectors/pyspy/worker_recorders.py: a third of the cost)
    workers = (
        WorkerRecorders(
            opts.pid,
            lambda worker_pid, share: PySpyRecorder(
                pyspy,
                worker_pid,
                rate_hz=worker_rate,
                # a py-spy start costs ~0.08 CPU-s: long runs (the breakdown can lag)
                chunk_s=max(opts.chunk_s, WORKER_CHUNK_S),
                subprocesses=False,
                on_chunk=on_chunk,
                yield_cpu=opts.yield_cpu,
                cpu_budget_cores=share,
                min_rate_hz=1,
                spare_cores_at_start=spare_at_start,
            ),
            budget * WORKERS_SHARE,
        )
        if opts.subprocesses
        else None
    )
    if progress is not None:
        until = f"for {opts.duration_s:g} s" if opts.duration_s else "until Ctrl-C"
        progress(
            f"sampling process {opts.pid} ({facts['command'][:60]}) at {opts.rate_hz} Hz {until}; "
            f"run directory {out_dir}"
        )
    t0 = time.monotonic()
    recorder.start()  # from this thread, still at normal priority: py-spy starts with an accurate clock
    # a py-spy per worker as the target's children appear (a new epoch's loader starts new ones), once the
    # training process's py-spy samples; and they stop before it. Without step markers the budget covers
    # every span of the run, and workers sampled before or after the training thread left that time
    # unattributed (10-19 points of a 10 s attach of a saturated job, whose py-spy starts and stops slowly)
    next_children_check = t0
    # the /proc and NVML samplers' threads at the lowest priority; the caller's thread keeps its own
    samplers = _started_lowered(opts, lambda: _start_system_samplers(opts, anchor, rank, writer))
    next_progress = t0 + progress_every_s
    try:
        while not recorder.done.is_set() and not stop.is_set():
            if opts.duration_s is not None and time.monotonic() - t0 >= opts.duration_s:
                break
            stop.wait(0.1)
            if (
                workers is not None
                and recorder.started_unix_ns is not None
                and time.monotonic() >= next_children_check
            ):
                next_children_check = time.monotonic() + CHILDREN_CHECK_S
                workers.poll()
            if progress is not None and time.monotonic() >= next_progress:
                next_progress += progress_every_s
                progress(_progress_line(time.monotonic() - t0, stacks))
    finally:
        if workers is not None:
            workers.stop()
        recorder.stop()
        for s in samplers:
            s.stop()
        busy_sampler.stop()
        try:
            stacks.feed([], True)  # both recorders have stopped: close the stacks once
        except Exception as exc:
            writer.note("attach_error", f"processing samples failed: {type(exc).__name__}: {exc}")
        placer.finish()
        target_exited = recorder.target_exited or not process_alive(opts.pid)
        report = _final_report(opts, stacks, recorder, busy_sampler, placer, target_exited)
        report["sampling"] = sampling_report(
            recorder, workers if workers and workers.started else None, stacks
        )
        if workers is not None and workers.error is not None and not target_exited:
            writer.note("attach_workers_sampler", f"worker sampling stopped: {workers.error}")
        writer.set_meta(attach={**run.meta["attach"], **report})
        _final_notes(writer, report)
        status = "target_exited" if target_exited else "ended"
        writer.close(status=status)
    if recorder.error is not None and not target_exited:
        err = recorder.error
        if recorder.chunks == 0 and isinstance(err, UsageError | AttachError):
            raise err
        raise AttachError(f"{err} (the run so far is kept in {out_dir})")
    return AttachResult(out_dir, status, report["sampled_s"], report)


def _progress_line(elapsed_s: float, stacks: Any) -> str:
    tr = stacks.training
    who = "finding the training thread" if tr is None else f"training thread {tr.tid} ({tr.name or '?'})"
    det = stacks.steps
    steps = "no steps yet"
    if det is not None and stacks.steps_emitted:
        steps = f"{stacks.steps_emitted} steps (confidence {det.confidence:.2f})"
    elif det is not None:
        steps = f"steps not confident yet ({det.confidence:.2f})"
    return f"sampled {elapsed_s:.0f} s, {who}, {steps}"


def _final_report(
    opts: AttachOptions, stacks: Any, recorder: Any, busy: Any, placer: _BusyPlacer, target_exited: bool
) -> dict[str, Any]:
    report = stacks.report()
    window = stacks.sampled_unix_ns
    sampled_s = 0.0 if window is None else (window[1] - window[0]) / 1e9
    report.update(
        {
            "sampled_s": round(sampled_s, 3),
            "sampled_unix_ns": None if window is None else list(window),
            "chunks": recorder.chunks,
            "py_spy_failed_samples": recorder.pyspy_errors,
            "end_reason": "target exited" if target_exited else "stopped",
            "gpu": {
                "nvml": busy.available,
                "devices": sorted(busy.devices_used),
                "busy_spans": placer.placed,
            },
        }
    )
    return report


def _recorder_stats(rec: Any) -> dict[str, Any]:
    stats = rec.chunk_stats
    wall = sum(s.wall_s for s in stats)
    rates = [(s.per_thread_hz, s.wall_s) for s in stats if s.per_thread_hz is not None]
    rated_s = sum(w for _, w in rates)
    cpu = [s for s in stats if s.cpu_s is not None]
    cpu_wall = sum(s.wall_s for s in cpu)
    return {
        "asked_hz": rec.governor.asked_hz,
        "last_rate_hz": rec.governor.rate_hz,
        # time-weighted over py-spy runs
        "achieved_hz": round(sum(r * w for r, w in rates) / rated_s, 1) if rated_s > 0 else None,
        "cpu_pct_of_core": round(100.0 * sum(s.cpu_s for s in cpu) / cpu_wall, 2) if cpu_wall > 0 else None,
        "sampled_s": round(wall, 2),
        "priority": rec.priority,
        "runs": len(stats),
        "saturated_runs": rec.governor.saturated_runs,  # the host left < 0.5 cores idle: budget strict
    }


def sampling_report(recorder: Any, workers: Any, stacks: Any) -> dict[str, Any]:
    """What sampling cost and achieved, and the standard error it leaves on each training-thread share.

    Rates are per thread: py-spy's own sample count over the threads it saw and the seconds it sampled.
    """
    from collectors.pyspy.yielding import REAL_OVER_MODEL, share_uncertainty_pp

    main = _recorder_stats(recorder)
    rate = main["achieved_hz"] or float(main["last_rate_hz"])
    runs, window_s = stacks.category_runs()
    steps = stacks.steps_emitted  # detected steps: the stretches too short to be seen recur in each
    shares = stacks.training_shares_pct()
    wstats = None if workers is None else workers.stats()
    return {
        "training_process": main,
        "workers": wstats,
        "workers_share_uncertainty_pp": _worker_uncertainty_pp(wstats, stacks.workers),
        "share_uncertainty_pp": {
            cat: round(
                REAL_OVER_MODEL
                * share_uncertainty_pp(n, 1.0 / rate if rate > 0 else 1.0, window_s, steps, shares.get(cat)),
                2,
            )
            for cat, n in runs.items()
        },
        "training_shares_pct": shares,
    }


def _worker_uncertainty_pp(stats: dict[str, Any] | None, report: Any) -> dict[str, float]:
    """One standard error (points) of each worker-breakdown share: worker stacks are short and interleaved
    (a read, a decode, a wait for indices), so each sample counts as an independent draw,
    100 * sqrt(p (1 - p) / n), n = sampled worker-seconds x the workers' achieved rate."""
    if stats is None or not report.total_ns:
        return {}
    hz = stats["achieved_hz"] or float(stats["last_rate_hz"])
    n = max(1.0, report.total_ns / 1e9 * hz)
    return {
        label: round(100.0 * math.sqrt(pct / 100.0 * (1.0 - pct / 100.0) / n), 2)
        for label, pct in report.pct_by_label().items()
    }


def _sampling_notes(writer: Any, sampling: dict[str, Any] | None) -> None:
    if not sampling:
        return
    main = sampling["training_process"]
    achieved = main.get("achieved_hz")
    cpu = main.get("cpu_pct_of_core")
    line = (
        f"sampled the training process at {achieved if achieved is not None else '?'} Hz per thread "
        f"(asked {main['asked_hz']} Hz, py-spy at {main['priority']}, "
        f"{'?' if cpu is None else f'{cpu:.1f}'}% of one core)"
    )
    w = sampling.get("workers")
    if w:
        line += f"; workers at {w['last_rate_hz']} Hz ({'?' if w['cpu_pct_of_core'] is None else w['cpu_pct_of_core']}% of one core"
        worst = max(sampling.get("workers_share_uncertainty_pp", {}).values(), default=None)
        line += ")" if worst is None else f", their shares +- {worst:.1f} pp at most)"
    writer.note("attach_sampling", line)
    unresolved = [
        f"{cat} {share:.1f}% +- {sampling['share_uncertainty_pp'].get(cat, 0.0):.1f} pp"
        for cat, share in sampling["training_shares_pct"].items()
        if 0 < share < 2 * sampling["share_uncertainty_pp"].get(cat, 0.0)
    ]
    if unresolved:
        writer.note(
            "attach_unresolved",
            "shares this sampling rate cannot resolve (less than two standard errors): "
            + ", ".join(unresolved),
        )


def _final_notes(writer: Any, report: dict[str, Any]) -> None:
    """The attach findings as run notes, so `gpuwatch summary` shows them next to the budget."""
    _sampling_notes(writer, report.get("sampling"))
    tr = report.get("training_thread")
    if tr:
        writer.note(
            "attach_training_thread", f"training thread {tr['tid']} ({tr['name'] or '?'}): {tr['how']}"
        )
    det = report.get("step_detection")
    if det:
        if det["used"]:
            msg = (
                f"{det['steps']} steps detected from the training loop, confidence {det['confidence']:.2f} "
                f"(median {det['median_step_ms']:.0f} ms; {det['reason']})"
            )
        else:
            msg = (
                f"no steps used: detection confidence {det['confidence']:.2f} < {det['min_confidence']:.2f} "
                f"({det['reason']}); the budget covers the whole sampled window"
            )
        writer.note("attach_steps", msg)
    workers = report.get("dataloader_workers")
    if workers and workers.get("summary"):
        writer.note("attach_workers", workers["summary"])
    if report.get("end_reason") == "target exited":
        writer.note("attach_target_exited", "the target process exited while attached; the run ends there")
