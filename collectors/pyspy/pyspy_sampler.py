"""py-spy as a subprocess: every Python thread's stack over time, for `gpuwatch attach`, with no code change.

Why this shape (measured on py-spy 0.4.3, see the attach note in the issue):
- `record --format chrometrace` is the only output with a timestamp per sample (microseconds since py-spy
  started); `speedscope` gives one profile per thread with constant weights (time only by sample index,
  which drifts when py-spy falls behind or a read fails) and `raw` is folded counts with no time at all.
- py-spy writes its file only when it stops, so sampling runs in chunks: chunk k+1 is started and has
  printed "Sampling process..." before chunk k gets SIGINT, and the two are cut at that instant. The run
  directory therefore grows while it samples, with one chunk of latency.
- chrometrace merges consecutive identical stacks of a thread into one B/E slice and keys threads by
  Python thread id only. A forked DataLoader worker's main thread has the same id as the parent thread that
  forked it, so their events interleave on one track; every increment carries the `process N:` frames that
  `--subprocesses` adds at the root, which is how `decode_chrometrace` tells them apart again.
- Always `--nonblocking`: py-spy's default mode ptrace-stops every thread of the target on every sample.

The output is a stream of `ThreadState` changes (a thread's stack from a time on), stitched across chunks
into closed `StackInterval`s by `IntervalStitcher`.
"""

from __future__ import annotations

import collections
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from gpuwatch.errors import AttachError, UsageError

Frame = tuple[str, str, int]
"""One Python frame: (file path, function name as py-spy reports it, line number)."""

PROCESS_FRAME_RE = re.compile(r"^process (\d+):")
READY_LINE = b"Sampling process"
ANCHOR_LAG_NS = 1_000_000
"""py-spy's chrometrace clock starts about 1 ms after `Popen` returns (Rust start-up); measured against a
target that switches functions on wall-clock boundaries (offsets -0.6..+13 ms at 100 Hz, so the lag is
~1 ms, within one sampling interval either way)."""


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """One Python thread of the target as `py-spy dump` saw it."""

    pid: int
    thread_id: int
    """Python's thread id (pthread_t), the key py-spy's chrometrace uses."""
    os_tid: int
    """Kernel thread id (what /proc and the run's `tid` column use); 0 if py-spy could not read it."""
    name: str
    active: bool
    frames: tuple[Frame, ...]
    """Root first."""


@dataclass(frozen=True, slots=True)
class ThreadState:
    """From `t_unix_ns` on, thread (`pid`, `thread_id`) had this stack (until its next state)."""

    t_unix_ns: int
    pid: int
    thread_id: int
    frames: tuple[Frame, ...]
    """Root first; empty means the thread (or the chunk) ended here."""


@dataclass(frozen=True, slots=True)
class StackInterval:
    """One thread ran `frames` during [start_unix_ns, end_unix_ns): consecutive equal samples merged."""

    pid: int
    thread_id: int
    start_unix_ns: int
    end_unix_ns: int
    frames: tuple[Frame, ...]


# ---- finding py-spy and mapping its failures -------------------------------------------------------------


def find_pyspy(explicit: str | None = None) -> str:
    """The py-spy executable: `explicit`, else $GPUWATCH_PYSPY, else next to this Python, else on PATH.

    Raises:
        AttachError: py-spy is not installed (names the fix).
    """
    candidates = [explicit or os.environ.get("GPUWATCH_PYSPY") or ""]
    if not candidates[0]:
        candidates = [str(Path(sys.executable).parent / "py-spy"), shutil.which("py-spy") or ""]
    for cand in candidates:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    if explicit or os.environ.get("GPUWATCH_PYSPY"):
        raise AttachError(f"py-spy not found or not executable: {candidates[0]}")
    raise AttachError(
        "py-spy not found: install it in this environment (pip install py-spy) or pass --py-spy PATH"
    )


def process_state(pid: int) -> str | None:
    """The one-letter state of a process from /proc ("R", "S", "Z", ...), or None when there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[-1].split()[0]


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def process_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def check_target(pid: int) -> None:
    """Reject pids that cannot be a target before starting py-spy (clear messages, no py-spy noise).

    Raises:
        UsageError: no such process, or the id names a thread of another process.
        AttachError: the process has already exited (a zombie).
    """
    if pid <= 0:
        raise UsageError(f"not a process id: {pid}")
    state = process_state(pid)
    if state is None:
        raise UsageError(f"no such process: {pid}")
    if state in ("Z", "X"):
        raise AttachError(f"process {pid} ({process_comm(pid)}) has already exited (zombie)")
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        tgid = int(re.search(r"^Tgid:\s*(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        return
    if tgid != pid:
        raise UsageError(
            f"{pid} is a thread of process {tgid}, not a process: run `gpuwatch attach {tgid} --thread {pid}`"
        )


def permission_hint() -> str:
    """The ways to get ptrace access, most specific first (reads kernel.yama.ptrace_scope when present)."""
    scope = None
    try:
        scope = int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip())
    except (OSError, ValueError):
        pass
    parts = ["run gpuwatch as the same user as the target or as root"]
    parts.append("grant CAP_SYS_PTRACE (containers: docker run --cap-add SYS_PTRACE)")
    if scope is None:
        parts.append("and check kernel.yama.ptrace_scope if your kernel has Yama")
    elif scope >= 1:
        parts.append(
            f"or lower kernel.yama.ptrace_scope (now {scope}; sudo sysctl kernel.yama.ptrace_scope=0)"
        )
    else:
        parts.append(
            "(kernel.yama.ptrace_scope is 0; the target may be non-dumpable or owned by another user)"
        )
    return ", ".join(parts[:-1]) + ", " + parts[-1]


def pyspy_failure(pid: int, output: str) -> Exception:
    """Turn py-spy's error output for `pid` into the one-line gpuwatch error to raise."""
    text = output.strip()
    comm = process_comm(pid)
    if not process_alive(pid):
        if process_state(pid) is None:
            return UsageError(f"no such process: {pid}")
        return AttachError(f"process {pid} ({comm}) exited before py-spy could attach")
    if re.search(r"permission denied|operation not permitted", text, re.I):
        return AttachError(f"no permission to read process {pid} ({comm}): {permission_hint()}")
    m = re.search(r"Unsupported version of Python:?\s*([^\s\n]*)", text)
    if m:
        version = m.group(1) or "?"
        return AttachError(
            f"process {pid} ({comm}) runs Python {version}, which this py-spy cannot read: "
            "upgrade py-spy (pip install -U py-spy) or attach to a supported interpreter"
        )
    if re.search(
        r"Failed to find python version|No python processes found|Failed to find a python interpreter|"
        r"failed to find _PyRuntime|Both python and libpython are invalid",
        text,
        re.I,
    ):
        return UsageError(
            f"process {pid} ({comm}) is not a Python process: py-spy found no Python interpreter"
        )
    first = next(
        (ln for ln in text.splitlines() if ln.startswith("Error")), text.splitlines()[0] if text else ""
    )
    return AttachError(f"py-spy could not sample process {pid} ({comm}): {first or 'no output'}")


def pyspy_version(pyspy: str) -> str:
    try:
        out = subprocess.run([pyspy, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.strip().split()[-1] if out.strip() else "?"


# ---- one-off dump ------------------------------------------------------------------------------------


class _DumpFrame(msgspec.Struct):
    name: str
    filename: str
    line: int = 0


class _DumpThread(msgspec.Struct):
    pid: int
    thread_id: int
    frames: list[_DumpFrame]
    thread_name: str | None = None
    os_thread_id: int | None = None
    active: bool = False


def probe_threads(pyspy: str, pid: int, *, timeout_s: float = 30.0) -> list[ThreadInfo]:
    """The Python threads of `pid` now (`py-spy dump --json --nonblocking`); also the attach pre-flight.

    Raises:
        UsageError / AttachError: mapped from py-spy's failure (no such process, not Python, no permission,
            unsupported Python version).
    """
    cmd = [pyspy, "dump", "--json", "--nonblocking", "--pid", str(pid)]
    for attempt in range(LAUNCH_TRIES):  # a trainer just started changes its interpreter under the reads
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AttachError(
                f"py-spy dump of process {pid} did not finish within {timeout_s:.0f} s"
            ) from None
        except OSError as exc:
            raise AttachError(f"cannot run py-spy ({pyspy}): {exc.strerror or exc}") from None
        if proc.returncode == 0:
            break
        output = (proc.stderr + proc.stdout).decode(errors="replace")
        if attempt + 1 == LAUNCH_TRIES or not TRANSIENT_FAILURE.search(output):
            raise pyspy_failure(pid, output)
        time.sleep(LAUNCH_RETRY_S)
    try:
        threads = msgspec.json.decode(proc.stdout, type=list[_DumpThread])
    except msgspec.DecodeError as exc:
        raise AttachError(f"unexpected py-spy dump output for process {pid}: {exc}") from None
    return [
        ThreadInfo(
            pid=t.pid,
            thread_id=t.thread_id,
            os_tid=t.os_thread_id or 0,
            name=t.thread_name or "",
            active=t.active,
            frames=tuple((f.filename, f.name, f.line) for f in reversed(t.frames)),
        )
        for t in threads
    ]


# ---- chrometrace decoding ------------------------------------------------------------------------------


class _Args(msgspec.Struct):
    filename: str = ""
    line: int | None = None
    name: str | None = None


class _Event(msgspec.Struct):
    name: str
    ph: str
    pid: int
    tid: int
    ts: int
    args: _Args = msgspec.field(default_factory=_Args)


_EVENTS = msgspec.json.Decoder(list[_Event])


def decode_chrometrace(data: bytes, anchor_unix_ns: int) -> list[ThreadState]:
    """Every stack change py-spy recorded, in time order.

    Args:
        data: py-spy's `--format chrometrace` output (a JSON array of B/E events, `ts` in microseconds).
        anchor_unix_ns: wall-clock time of `ts == 0` (when that py-spy process started).

    One py-spy increment is the run of events of one track at one `ts` that closes frames (E) and then opens
    frames (B); the stack after it is one sample. The deepest `process N:` frame names the process the
    sample came from (tracks of forked workers and their parent coincide, see the module docstring).
    """
    if not data.strip():
        return []
    events = _EVENTS.decode(data)
    thread_names: dict[int, int] = {}  # newer py-spy remaps tids and names them "<thread_id>: <name>"
    stacks: dict[int, list[tuple[str, str, int, int]]] = {}
    last_ts: dict[int, int] = {}
    last_ph: dict[int, str] = {}
    last_pid: dict[int, int] = {}
    pending: set[int] = set()
    out: list[ThreadState] = []

    def snapshot(track: int) -> None:
        pending.discard(track)
        owner = last_pid.get(track, 0)
        frames: list[Frame] = []
        for filename, name, line, _pid in stacks.get(track, ()):
            if not filename:
                m = PROCESS_FRAME_RE.match(name)
                if m:
                    owner = int(m.group(1))
                    continue
            frames.append((filename, name, line))
        t = anchor_unix_ns + ANCHOR_LAG_NS + last_ts[track] * 1000
        out.append(ThreadState(t, owner, thread_names.get(track, track), tuple(frames)))

    for ev in events:
        if ev.ph == "M":
            if ev.name == "thread_name" and ev.args.name:
                head = ev.args.name.split(":", 1)[0].strip()
                if head.isdigit():
                    thread_names[ev.tid] = int(head)
            continue
        track = ev.tid
        if track in pending and (ev.ts != last_ts[track] or (ev.ph == "E" and last_ph[track] == "B")):
            snapshot(track)
        stack = stacks.setdefault(track, [])
        if ev.ph == "B":
            stack.append((ev.args.filename, ev.name, ev.args.line or 0, ev.pid))
            last_pid[track] = ev.pid
        elif ev.ph == "E" and stack:
            stack.pop()
        last_ts[track] = ev.ts
        last_ph[track] = ev.ph
        pending.add(track)
    for track in list(pending):
        snapshot(track)
    out.sort(key=lambda s: s.t_unix_ns)
    return out


class IntervalStitcher:
    """Turns stack changes from consecutive chunks into closed intervals, one open state per thread.

    Chunk k+1 starts at `cut_unix_ns`: chunk k's states before the cut and chunk k+1's states from the cut on
    are used. A thread absent from chunk k+1 (with `--idle` every live thread appears in its first sample)
    ended: its interval closes at the cut.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[int, int], tuple[int, tuple[Frame, ...]]] = {}

    def feed_chunk(
        self, states: list[ThreadState], *, cut_from_ns: int | None, cut_to_ns: int | None, final: bool
    ) -> list[StackInterval]:
        """Intervals closed by one chunk's states (kept only within [cut_from_ns, cut_to_ns))."""
        out: list[StackInterval] = []
        seen: set[tuple[int, int]] = set()
        chunk_end = cut_from_ns or 0
        if cut_from_ns is not None:
            states = _clamp_before(states, cut_from_ns)
        for s in states:
            if cut_to_ns is not None and s.t_unix_ns >= cut_to_ns:
                continue
            chunk_end = max(chunk_end, s.t_unix_ns)
            key = (s.pid, s.thread_id)
            seen.add(key)
            prev = self._open.get(key)
            if prev is not None and prev[1] == s.frames:
                continue  # same stack as before the cut: the interval goes on
            if prev is not None and s.t_unix_ns > prev[0]:
                out.append(StackInterval(key[0], key[1], prev[0], s.t_unix_ns, prev[1]))
            if s.frames:
                self._open[key] = (s.t_unix_ns, s.frames)
            else:
                self._open.pop(key, None)
        if cut_from_ns is not None:  # threads that did not show up in this chunk ended at its start
            for key in [k for k in self._open if k not in seen]:
                start, frames = self._open.pop(key)
                if cut_from_ns > start:
                    out.append(StackInterval(key[0], key[1], start, cut_from_ns, frames))
        if final:
            end = cut_to_ns if cut_to_ns is not None else chunk_end
            for key, (start, frames) in list(self._open.items()):
                if end > start:
                    out.append(StackInterval(key[0], key[1], start, end, frames))
            self._open.clear()
        out.sort(key=lambda i: i.start_unix_ns)
        return out


def _clamp_before(states: list[ThreadState], cut_ns: int) -> list[ThreadState]:
    """A chunk's states from `cut_ns` on, where each thread's last state before the cut moves to the cut.

    py-spy may take its first samples just before it prints that it is sampling; a thread whose stack then
    stays the same has no later state, and dropping that first one would look like the thread ended.
    """
    last_before: dict[tuple[int, int], ThreadState] = {}
    after: list[ThreadState] = []
    for s in states:
        if s.t_unix_ns < cut_ns:
            last_before[(s.pid, s.thread_id)] = s
        else:
            after.append(s)
    moved = [ThreadState(cut_ns, s.pid, s.thread_id, s.frames) for s in last_before.values() if s.frames]
    return moved + after


# ---- the chunked recorder -----------------------------------------------------------------------------

LAUNCH_TRIES = 3
TRANSIENT_FAILURE = re.compile(r"Failed to get stack traces|Failed to copy PyThreadState", re.I)
"""What a non-blocking py-spy says when it read the target's interpreter while that changed under it (a
process still importing torch, a thread starting): the next try succeeds. One of 5-15 attaches to a trainer
that had just printed its pid failed so (tests/integration/test_attach_errors.py, ctrl_c); the pre-flight
`py-spy dump` of `probe_threads` too (1 in 5 of that test's runs)."""
LAUNCH_RETRY_S = 0.3


def _own_cpu_s() -> float:
    """This process's user + system CPU seconds (all its threads)."""
    t = os.times()
    return t.user + t.system


POLL_S = 0.25
"""How often the pacing thread (at the job's priority) looks for a py-spy run that ended by itself and for
decoded chunks to deliver: each wake-up can preempt the job on a host whose cores it keeps busy."""
SATURATED_CHUNK_FACTOR = 5
"""While the host is saturated, py-spy runs last this many chunks (10 s at the default 2 s chunk): each restart
parses the target's symbols again at the job's priority, so they cost a fifth; the live run directory lags by
that much more."""


@dataclass
class _Chunk:
    proc: subprocess.Popen[bytes]
    path: Path
    anchor_unix_ns: int
    ready_unix_ns: int
    """When py-spy said it was sampling: the cut between this chunk and the previous one."""
    idle_jiffies: int | None = None
    """The host's idle CPU ticks at `ready_unix_ns` (was the host saturated while this chunk ran?)."""
    rate_hz: int = 0
    """The rate this run samples at."""
    cpu_at_ready_s: float | None = None
    """py-spy's CPU seconds when it said it samples: its start-up (parsing the target's symbols), which the
    chunk length pays for, not the rate."""
    own_cpu_at_ready_s: float = 0.0
    """This process's CPU seconds then (gpuwatch's own work is not the job's)."""


@dataclass(frozen=True, slots=True)
class _RunCost:
    """What one py-spy run cost so far (`PySpyRecorder._cost`)."""

    cpu_s: float | None
    """py-spy's CPU seconds in all, start-up included (reported)."""
    sampling_cpu_s: float | None
    """Its CPU seconds since it said it samples (what the rate governs)."""
    wall_s: float
    spare_cores: float | None
    """Cores the job left: idle ones, plus what py-spy and this process used. An attach starting up (its
    imports, py-spy's start-up) must not make an idle host look saturated and cut the rate for nothing."""


@dataclass(slots=True)
class _Ended:
    """A finished py-spy run on its way to `on_chunk`: its file read by the pacing thread, decoded by the
    lowered decoder (`states`), or by the pacing thread itself once it `claimed` it (at the end of sampling,
    so that stopping never waits for a thread the job's work starves)."""

    data: bytes
    anchor_unix_ns: int
    cut_from: int | None
    cut_to: int | None
    final: bool
    exited_itself: bool
    stats: tuple[int, float, float | None, int | None]
    """`ChunkStats` without the thread count, which takes decoding."""
    states: list[ThreadState] | None = None
    claimed: bool = False


def _decode_chunk(item: _Ended) -> list[ThreadState]:
    try:
        return decode_chrometrace(item.data, item.anchor_unix_ns)
    except msgspec.DecodeError:
        return []  # py-spy killed mid-write: this chunk is lost, the run goes on


@dataclass(frozen=True, slots=True)
class ChunkStats:
    """What one py-spy run cost and achieved."""

    rate_hz: int
    """The rate it was asked for."""
    wall_s: float
    """From when it said it was sampling to when it was stopped (or ended)."""
    cpu_s: float | None
    """py-spy's own CPU time over its life (user + system), None when it could not be read."""
    samples: int | None
    """Samples py-spy says it took (one per thread per tick, over every process it followed), None when it
    did not say."""
    threads: int
    """Distinct threads (of every process followed) in its output: samples / threads / wall_s is the rate
    each thread was actually sampled at."""

    @property
    def per_thread_hz(self) -> float | None:
        if self.samples is None or self.threads == 0 or self.wall_s <= 0:
            return None
        return self.samples / self.threads / self.wall_s


ChunkCallback = Callable[[list[StackInterval], bool], None]
"""Called from the recorder's pacing thread with each chunk's closed intervals; True on the last chunk."""


class PySpyRecorder:
    """Samples `pid` (and, by default, its child processes) with chunked `py-spy record` runs.

    Args:
        pyspy: the py-spy executable.
        pid: the target process.
        rate_hz: samples per second per thread.
        chunk_s: seconds per py-spy run (the latency of the live run directory).
        subprocesses: follow child processes (DataLoader workers).
        on_chunk: receives each chunk's intervals (the pacing thread, in order).
        workdir: where py-spy writes its chunk files (a temporary directory by default).
        yield_cpu: decode py-spy's output on a thread at the lowest CPU priority (SCHED_IDLE / nice 19), and
            run py-spy there too unless `lower_pyspy` says otherwise. The thread that paces py-spy's runs
            (and stitches, and calls `on_chunk`) keeps the caller's priority: it mostly sleeps.
        lower_pyspy: py-spy itself at the lowest priority (None: as `yield_cpu`). A py-spy at SCHED_IDLE only
            samples when a core is free, so on a saturated host it sees a thread's CPU work late and its
            waits early: the training process's py-spy stays at normal priority, held by its CPU budget.
        cpu_budget_cores: py-spy's CPU allowance as a fraction of one core; a run over it lowers the rate of
            the next (0 = no budget).
        keep_pid: only stacks of processes for which this is True reach `on_chunk` (None = all).
        spare_cores_at_start: the cores the job left while the caller started (`yielding.HostReading`): on a
            saturated host the first run already keeps to the budget (`RateGovernor.begin`). None: the rate
            asked until a run has measured its cost.

    `stop()` ends sampling (SIGINT to the running py-spy, which then writes its last chunk). When the target
    exits, py-spy ends on its own; `target_exited` is then True. A py-spy failure is kept in `error`.
    """

    def __init__(
        self,
        pyspy: str,
        pid: int,
        *,
        rate_hz: int,
        chunk_s: float,
        subprocesses: bool,
        on_chunk: ChunkCallback,
        workdir: str | os.PathLike[str] | None = None,
        yield_cpu: bool = True,
        lower_pyspy: bool | None = None,
        cpu_budget_cores: float = 0.0,
        min_rate_hz: int = 5,
        keep_pid: Callable[[int], bool] | None = None,
        spare_cores_at_start: float | None = None,
    ) -> None:
        from collectors.pyspy.yielding import RateGovernor

        self.pyspy = pyspy
        self.pid = pid
        self.rate_hz = rate_hz
        self.chunk_s = chunk_s
        self.subprocesses = subprocesses
        self.on_chunk = on_chunk
        self.yield_cpu = yield_cpu
        self.lower_pyspy = yield_cpu if lower_pyspy is None else lower_pyspy
        self.keep_pid = keep_pid
        self.governor = RateGovernor(rate_hz, cpu_budget_cores, min_hz=min(min_rate_hz, rate_hz))
        self.governor.begin(spare_cores_at_start)
        self.priority = "normal"
        """The CPU priority py-spy ran at ("SCHED_IDLE", "nice 19", ...)."""
        self.chunk_stats: list[ChunkStats] = []
        self._spawner: Any = None
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="gpuwatch-pyspy-")
        self.workdir = Path(workdir if workdir is not None else self._tmp.name)  # type: ignore[union-attr]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stitcher = IntervalStitcher()
        self._seq = 0
        self.target_exited = False
        self.error: Exception | None = None
        self.chunks = 0
        self.pyspy_errors = 0
        """Samples py-spy reported as failed (torn non-blocking reads), summed over chunks."""
        self.started_unix_ns: int | None = None
        self.ended_unix_ns: int | None = None
        self.done = threading.Event()
        self._to_decode: queue.SimpleQueue[_Ended | None] = queue.SimpleQueue()
        self._undelivered: collections.deque[_Ended] = collections.deque()
        self._claim_lock = threading.Lock()

    def command(self, out: Path) -> list[str]:
        cmd = [self.pyspy, "record", "--nonblocking", "--idle", "--format", "chrometrace"]
        cmd += ["--rate", str(self.governor.rate_hz), "--pid", str(self.pid), "--output", str(out)]
        if self.subprocesses:
            cmd.append("--subprocesses")
        return cmd

    def start(self) -> None:
        """Start sampling. Call it from a thread of normal priority: py-spy runs are started (and lowered
        once sampling) by a thread made here, which keeps the priority of the caller."""
        if self._thread is None:
            from concurrent.futures import ThreadPoolExecutor

            self._spawner = ThreadPoolExecutor(1, thread_name_prefix="gpuwatch-pyspy-start")
            self._spawner.submit(lambda: None).result()  # its thread exists now, at the caller's priority
            self._thread = threading.Thread(target=self._run, name="gpuwatch-pyspy", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop sampling and deliver the last chunks. The pacing thread keeps the caller's priority and
        decodes itself whatever the lowered decoder has not finished (see `_Ended`), so on a saturated host
        attach ends in seconds, not a minute after --duration."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _launch(self) -> _Chunk:
        if self._spawner is None:
            return self._launch_now()
        return self._spawner.submit(self._launch_now).result()

    def _launch_now(self) -> _Chunk:
        for attempt in range(LAUNCH_TRIES):
            self._seq += 1
            path = self.workdir / f"chunk-{self._seq:06d}.json"
            anchor = time.time_ns()
            # own session: a Ctrl-C at the terminal reaches gpuwatch, which then stops py-spy in order
            proc = subprocess.Popen(
                self.command(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
            anchor = (anchor + time.time_ns()) // 2
            try:
                ready = self._wait_ready(proc)
                break
            except AttachError as exc:
                path.unlink(missing_ok=True)
                if attempt + 1 == LAUNCH_TRIES or not TRANSIENT_FAILURE.search(str(exc)):
                    raise
                if self._stop.wait(LAUNCH_RETRY_S):
                    raise
        if self.lower_pyspy:
            from collectors.pyspy.yielding import lower_process

            self.priority = lower_process(proc.pid)
        from collectors.pyspy.yielding import host_idle_jiffies, process_cpu_s

        return _Chunk(
            proc,
            path,
            anchor,
            ready,
            host_idle_jiffies(),
            self.governor.rate_hz,
            process_cpu_s(proc.pid),
            _own_cpu_s(),
        )

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
        """Block until py-spy prints that it samples; returns that time. Raises the mapped failure."""
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:  # py-spy exited before sampling: attach failed (or the target is gone)
                proc.wait()
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise pyspy_failure(self.pid, err)
            if READY_LINE in line:
                return time.time_ns()
        proc.kill()
        proc.wait()
        raise AttachError(f"py-spy did not start sampling process {self.pid} within {timeout_s:.0f} s")

    def _cost(self, chunk: _Chunk) -> _RunCost:
        """What a run cost so far, and the cores the job left meanwhile."""
        from collectors.pyspy.yielding import host_idle_jiffies, idle_cores, process_cpu_s

        cpu_s = None if chunk.proc.poll() is not None else process_cpu_s(chunk.proc.pid)
        wall_s = (time.time_ns() - chunk.ready_unix_ns) / 1e9
        sampling = None if cpu_s is None or chunk.cpu_at_ready_s is None else cpu_s - chunk.cpu_at_ready_s
        idle = idle_cores(chunk.idle_jiffies, host_idle_jiffies(), wall_s)
        spare = idle
        if idle is not None and wall_s > 0:
            ours = (_own_cpu_s() - chunk.own_cpu_at_ready_s) + (sampling or 0.0)
            spare = idle + max(0.0, ours) / wall_s
        return _RunCost(cpu_s, sampling, wall_s, spare)

    def _end(
        self,
        chunk: _Chunk,
        cut_from: int | None,
        nxt: _Chunk | None,
        cost: _RunCost | None = None,
    ) -> _Ended:
        """Stop one py-spy run (if still running), read its file and account its cost (pacing thread).
        `cost`: what `_cost` said just before the next run was launched, already given to the governor."""
        exited_itself = chunk.proc.poll() is not None
        spent = cost if cost is not None else self._cost(chunk)
        if not exited_itself:
            chunk.proc.send_signal(signal.SIGINT)
        try:
            out, err = chunk.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            chunk.proc.kill()
            out, err = chunk.proc.communicate()
        text = (out + err).decode(errors="replace")
        m = re.search(r"Errors: (\d+)", text)
        if m:
            self.pyspy_errors += int(m.group(1))
        samples = re.search(r"Samples: (\d+)", text)
        if "process exited" in text or "process ended" in text:
            exited_itself = True
        try:
            data = chunk.path.read_bytes()
        except OSError:
            data = b""
        chunk.path.unlink(missing_ok=True)
        if cost is None:
            self.governor.after_run(spent.sampling_cpu_s, spent.wall_s, spent.spare_cores)
        return _Ended(
            data=data,
            anchor_unix_ns=chunk.anchor_unix_ns,
            cut_from=cut_from,
            cut_to=nxt.ready_unix_ns if nxt is not None else None,
            final=nxt is None,
            exited_itself=exited_itself,
            stats=(chunk.rate_hz, spent.wall_s, spent.cpu_s, int(samples.group(1)) if samples else None),
        )

    def _run(self) -> None:
        """The pacing thread, at the caller's priority: mostly asleep, it starts and stops py-spy runs on
        time and delivers decoded chunks in order. Decoding runs on a thread at the lowest priority (with
        `yield_cpu`), which on a saturated host may barely run: the pacing thread never waits for it."""
        decoder = threading.Thread(target=self._decode_loop, name="gpuwatch-pyspy-decode", daemon=True)
        decoder.start()
        try:
            self._loop()
        except Exception as exc:  # reported by the orchestrator; never an unhandled thread exception
            self.error = exc
        finally:
            try:
                self._deliver_ready(everything=True)
            except Exception as exc:
                self.error = self.error or exc
            self._to_decode.put(None)
            self.ended_unix_ns = time.time_ns()
            self._close()

    def _decode_loop(self) -> None:
        if self.yield_cpu:  # decoding: never ahead of the job
            from collectors.pyspy.yielding import lowest_priority

            lowest_priority()
        while (item := self._to_decode.get()) is not None:
            with self._claim_lock:
                if item.claimed:
                    continue
            states = _decode_chunk(item)
            with self._claim_lock:
                if not item.claimed:
                    item.states = states

    def _close(self) -> None:
        self.done.set()
        if self._spawner is not None:
            self._spawner.shutdown(wait=False)
        if self._tmp is not None:
            self._tmp.cleanup()

    def _loop(self) -> None:
        cur = self._launch()
        self.started_unix_ns = cur.ready_unix_ns
        cut_from: int | None = cur.ready_unix_ns
        while True:
            # while the host is saturated, py-spy restarts (2 points of a core at 2 s chunks) cost the job
            next_at = time.monotonic() + self.chunk_s * (
                SATURATED_CHUNK_FACTOR if self.governor.last_saturated else 1
            )
            while not self._stop.is_set() and time.monotonic() < next_at:
                if cur.proc.poll() is not None:
                    break
                self._deliver_ready()
                self._stop.wait(POLL_S)
            ended_early = cur.proc.poll() is not None
            nxt: _Chunk | None = None
            cost = None
            if not self._stop.is_set() and not ended_early:
                # the next run's rate from this run's cost so far: decided after it ended, the rate would
                # lag a whole run, and an attach of a few runs would never keep to its budget
                cost = self._cost(cur)
                self.governor.after_run(cost.sampling_cpu_s, cost.wall_s, cost.spare_cores)
                try:
                    nxt = self._launch()
                except Exception as exc:
                    if not process_alive(self.pid):
                        self.target_exited = True
                    else:
                        self.error = exc
            ended = self._end(cur, cut_from, nxt, cost)
            self._undelivered.append(ended)
            self._to_decode.put(ended)
            if nxt is None:
                return
            cur, cut_from = nxt, nxt.ready_unix_ns

    def _deliver_ready(self, *, everything: bool = False) -> None:
        """Hand the chunks the decoder has finished to `on_chunk`, in order; with `everything`, decode the
        rest here (the decoder may be starved: never wait for it)."""
        while self._undelivered:
            item = self._undelivered[0]
            with self._claim_lock:
                states = item.states
                if states is None:
                    if not everything:
                        return
                    item.claimed = True
            if states is None:
                states = _decode_chunk(item)
            self._undelivered.popleft()
            self._deliver(item, states)

    def _deliver(self, item: _Ended, states: list[ThreadState]) -> None:
        self.chunk_stats.append(ChunkStats(*item.stats, len({(s.pid, s.thread_id) for s in states})))
        if self.keep_pid is not None:
            states = [s for s in states if self.keep_pid(s.pid)]
        self.chunks += 1
        if item.final and item.exited_itself and not process_alive(self.pid):
            self.target_exited = True
        intervals = self._stitcher.feed_chunk(
            states, cut_from_ns=item.cut_from, cut_to_ns=item.cut_to, final=item.final
        )
        self.on_chunk(intervals, item.final)
