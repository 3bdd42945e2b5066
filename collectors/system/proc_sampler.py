"""/proc sampler: CPU, memory, I/O and child processes (DataLoader workers) of one process, on Linux.

Used by the in-process watch (the target is the training process itself) and by `gpuwatch attach PID`
(the target is another process). Both start it the same way::

    from collectors.system.proc_sampler import ProcSampler

    sampler = ProcSampler(interval_s=1.0, anchor_unix_ns=run.started_at_unix_ns, pid=target_pid, rank=rank)
    sampler.start(writer)            # any RecordSink; samples on a daemon thread
    ...
    if not sampler.target_alive:     # attach: the target exited (noted once; the sampler thread ended)
        ...
    sampler.stop()

`ProcSampler.watched_pids` (the target plus the descendants seen on the last tick) is what the NVML
sampler's `pids` argument wants: `NvmlSampler(..., pids=proc_sampler.watched_pids)`.

Metrics, all with `device_index=-1`; `Sample.pid` says whose value it is:

| metric | `Sample.pid` | value |
| --- | --- | --- |
| `proc_cpu_pct` | target | CPU time (user+system, all threads) / wall time over the last interval x 100; 100 = one core |
| `rss_bytes` | target | resident set size |
| `thread_count` | target | threads in the target |
| `io_read_bytes_total`, `io_write_bytes_total` | target | cumulative bytes the target made the storage layer read / dirtied for writing (`read_bytes`/`write_bytes` of /proc/PID/io); None when unreadable |
| `io_syscall_read_bytes_total`, `io_syscall_write_bytes_total` | target | cumulative bytes through read()/write()-like calls, page-cache hits, pipes and sockets included (`rchar`/`wchar`); None when unreadable |
| `thread_cpu_pct` | thread id | the same as `proc_cpu_pct` for one thread of the target |
| `child_count` | target | live descendant processes (children, their children, ...), e.g. DataLoader workers |
| `children_cpu_pct` | target | summed CPU % of the descendants over the last interval |
| `children_rss_bytes` | target | summed resident set size of the descendants |
| `child_cpu_pct`, `child_rss_bytes` | descendant pid | the same per descendant |

CPU percentages come from clock-tick deltas (`SC_CLK_TCK`, usually 10 ms) over `time.monotonic` deltas, so
the first tick emits none, and CPU a descendant burns in the interval it exits is not seen. Descendants are
found through the target's own `/proc/PID/task/TID/children` lists (`child_pids`); a kernel built without
`CONFIG_PROC_CHILDREN` has none, and there every `/proc/N/stat` is scanned for its parent pid instead (about
1.5 ms for 80 processes here).
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass

from collectors.base import SamplerThread

CLK_TCK = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second: the unit of the CPU times in /proc/PID/stat."""
PAGE_SIZE_BYTES = os.sysconf("SC_PAGE_SIZE")

_GONE_STATES = frozenset("ZXx")  # zombie / dead: the process has exited, only its entry is left


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of one /proc/PID/stat (or /proc/PID/task/TID/stat) this sampler uses."""

    pid: int
    """Process id (or thread id, for a task file)."""
    ppid: int
    state: str
    """One letter: R running, S sleeping, D disk wait, Z zombie, ..."""
    cpu_ticks: int
    """utime + stime, in clock ticks (`CLK_TCK` per second); for a process it includes exited threads."""
    num_threads: int
    start_ticks: int
    """Start time in clock ticks since boot: with `pid` it names one process across pid reuse."""
    rss_bytes: int


class ProcFiles:
    """/proc files kept open and read again with `pread` (one system call instead of open, read and close:
    5 us against 22 us a file on this VM; a sampler tick of a process with a dozen threads reads thirty).

    A kept descriptor names the process or thread it was opened for, never a later one given the same id:
    once that one is gone, reading it fails (ESRCH), it is closed, and the next read opens the path anew.
    At most `max_open` are kept; past that a file is opened for each read, as without this. `sweep`
    closes those of threads and processes no longer listed."""

    def __init__(self, max_open: int = 256) -> None:
        self.max_open = max_open
        self._fds: dict[str, int] = {}
        self._read: set[str] = set()

    def read(self, path: str) -> bytes | None:
        """The file's content, or None when it (its process or thread) no longer exists. Raises OSError
        where it exists but cannot be read."""
        self._read.add(path)
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, ProcessLookupError):
                return None
            if len(self._fds) >= self.max_open:
                try:
                    return os.pread(fd, _READ_BYTES, 0)
                except ProcessLookupError:
                    return None
                finally:
                    os.close(fd)
            self._fds[path] = fd
        try:
            return os.pread(fd, _READ_BYTES, 0)
        except OSError as exc:
            self._close(path)
            if isinstance(exc, (ProcessLookupError, FileNotFoundError)):
                return None
            raise

    def sweep(self) -> None:
        """Close the kept files not read since the last sweep (threads and processes no longer listed)."""
        for path in [p for p in self._fds if p not in self._read]:
            self._close(path)
        self._read.clear()

    def close(self) -> None:
        for path in list(self._fds):
            self._close(path)

    def _close(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


_READ_BYTES = 1 << 16
"""What one read of a /proc file takes: a stat or io file is a few hundred bytes."""


def read_stat(path: str, files: ProcFiles | None = None) -> ProcStat | None:
    """Parse a /proc stat file.

    Args:
        path: `/proc/PID/stat` or `/proc/PID/task/TID/stat`.
        files: read it through these kept-open files (a sampler's), else open it for this read.

    Returns:
        The parsed fields, or None when the process or thread no longer exists.

    Raises:
        OSError: the file exists but cannot be read (e.g. /proc mounted with hidepid).
    """
    if files is not None:
        raw = files.read(path)
        if raw is None:
            return None
    else:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
    # The command name (field 2) may hold spaces and parentheses: split at the last ')'.
    head, _, tail = raw.rpartition(b")")
    if not tail:
        return None  # the process vanished mid-read (an empty file)
    rest = tail.split()  # rest[0] is field 3 (state); field N is rest[N - 3]
    return ProcStat(
        pid=int(head.split(b"(", 1)[0]),
        ppid=int(rest[1]),
        state=rest[0].decode(),
        cpu_ticks=int(rest[11]) + int(rest[12]),
        num_threads=int(rest[17]),
        start_ticks=int(rest[19]),
        rss_bytes=int(rest[21]) * PAGE_SIZE_BYTES,
    )


def read_io(pid: int, files: ProcFiles | None = None) -> dict[str, int] | None:
    """Read /proc/PID/io (rchar, wchar, read_bytes, write_bytes, ... as integers), through `files` if given.

    Returns:
        The counters, or None when the process is gone.

    Raises:
        PermissionError: the caller may not read it (another user's process without ptrace rights).
    """
    path = f"/proc/{pid}/io"
    if files is not None:
        raw = files.read(path)
        if raw is None:
            return None
        lines = raw.splitlines()
    else:
        try:
            with open(path, "rb") as f:
                lines = f.read().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            return None
    out: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(b":")
        out[key.decode()] = int(value)
    return out


def all_processes() -> dict[int, ProcStat]:
    """Stat every process visible in /proc (threads are not listed there, only processes)."""
    out: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = read_stat(f"/proc/{name}/stat")
        except OSError:  # an unreadable stranger is not one of ours
            continue
        if stat is not None and stat.state not in _GONE_STATES:
            out[stat.pid] = stat
    return out


def descendants(root_pid: int, processes: dict[int, ProcStat]) -> list[ProcStat]:
    """The live descendants of `root_pid` (children first, then their children), from `all_processes()`."""
    children_of: dict[int, list[ProcStat]] = collections.defaultdict(list)
    for stat in processes.values():
        children_of[stat.ppid].append(stat)
    out: list[ProcStat] = []
    queue = collections.deque([root_pid])
    while queue:
        for child in children_of.get(queue.popleft(), ()):
            if child.pid != root_pid:  # pid 0's children include pid 1... and never loop
                out.append(child)
                queue.append(child.pid)
    return out


def child_pids(pid: int, files: ProcFiles | None = None) -> list[int]:
    """The live children of `pid`, then theirs, from /proc/PID/task/*/children (one small read per thread of
    the process, through `files` if given), or from one scan of /proc where the kernel does not list
    children."""
    if not os.path.exists("/proc/thread-self/children"):  # no CONFIG_PROC_CHILDREN
        try:
            return [stat.pid for stat in descendants(pid, all_processes())]
        except OSError:
            return []
    out: list[int] = []
    seen = {pid}
    todo = [pid]
    while todo:
        for kid in _children(todo.pop(0), files):
            if kid not in seen:
                seen.add(kid)
                out.append(kid)
                todo.append(kid)
    return out


def _children(pid: int, files: ProcFiles | None = None) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tasks:
        path = f"/proc/{pid}/task/{tid}/children"
        try:
            if files is not None:
                out += [int(x) for x in (files.read(path) or b"").split()]
                continue
            with open(path, "rb") as f:
                out += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return out


def live_descendants(pid: int, files: ProcFiles | None = None) -> list[ProcStat]:
    """The live descendants of `pid` (children first, then theirs), each stat read once: the target's own
    /proc children lists (`child_pids`), not a stat of every process on the host (1.7 ms a call with 64
    processes here; a GPU node runs hundreds). `files`: read through these kept-open files."""
    out: list[ProcStat] = []
    for kid in child_pids(pid, files):
        try:
            stat = read_stat(f"/proc/{kid}/stat", files)
        except OSError:  # unreadable (hidepid): not one we can sample
            continue
        if stat is not None and stat.state not in _GONE_STATES:
            out.append(stat)
    return out


def process_tree_pids(root_pid: int) -> set[int]:
    """`root_pid` and all its live descendants: the pids whose GPU use belongs to a trainer."""
    return {root_pid, *(s.pid for s in live_descendants(root_pid))}


class ProcSampler(SamplerThread):
    """Samples /proc counters of one process, its threads and its descendant processes.

    Args:
        interval_s: seconds between samples.
        anchor_unix_ns: the run's wall-clock anchor (`Run.started_at_unix_ns`); sample times are relative to it.
        pid: the process to watch; None means this process (in-process watch).
        rank: written into every `Sample.rank`.
        threads: emit `thread_cpu_pct` per thread of the target.
        children: emit the descendant metrics (costs one scan of /proc per tick).
    """

    name = "proc"

    def __init__(
        self,
        interval_s: float,
        anchor_unix_ns: int,
        pid: int | None = None,
        rank: int = 0,
        *,
        threads: bool = True,
        children: bool = True,
    ) -> None:
        super().__init__(interval_s, anchor_unix_ns, rank)
        self.pid = os.getpid() if pid is None else pid
        self.threads = threads
        self.children = children
        self._alive = True
        self._start_ticks: int | None = None  # the target's start time: a changed value means pid reuse
        self._prev_mono_s: float | None = None
        self._prev_boot_ticks = 0
        self._prev_cpu_ticks: int | None = None
        # (pid or tid, start_ticks) -> cpu ticks at the previous tick; the start time guards against reuse
        self._prev_thread_ticks: dict[tuple[int, int], int] = {}
        self._prev_child_ticks: dict[tuple[int, int], int] = {}
        self._child_pids: frozenset[int] = frozenset()
        self._files = ProcFiles()  # the target's, its threads' and its descendants' files, kept open

    @property
    def target_alive(self) -> bool:
        """False once the target was seen gone (exited, zombie, or its pid reused); sampling then stops."""
        return self._alive

    def watched_pids(self) -> set[int]:
        """The target and the descendants seen on the last tick (for `NvmlSampler(pids=...)`)."""
        return {self.pid, *self._child_pids}

    def sample_once(self, t_ns: int) -> None:
        if not self._alive:
            return
        now_s = time.monotonic()
        boot_ticks = int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLK_TCK)
        stat = read_stat(f"/proc/{self.pid}/stat", self._files)
        if stat is None or stat.state in _GONE_STATES or self._start_ticks not in (None, stat.start_ticks):
            self._target_gone()
            return
        self._start_ticks = stat.start_ticks
        dt_s = None if self._prev_mono_s is None else now_s - self._prev_mono_s

        if dt_s is not None and self._prev_cpu_ticks is not None:
            self._emit("proc_cpu_pct", t_ns, _pct(stat.cpu_ticks - self._prev_cpu_ticks, dt_s))
        self._prev_cpu_ticks = stat.cpu_ticks
        self._emit("rss_bytes", t_ns, stat.rss_bytes)
        self._emit("thread_count", t_ns, stat.num_threads)
        self._sample_io(t_ns)
        if self.threads:
            self._sample_threads(t_ns, dt_s)
        if self.children:
            self._sample_children(t_ns, dt_s)
        self._prev_mono_s = now_s
        self._prev_boot_ticks = boot_ticks
        self._files.sweep()

    def stop(self) -> None:
        thread = self._thread
        super().stop()
        if thread is None or not thread.is_alive():  # one that outlived its join may still read its files
            self._files.close()

    # ---- parts of one tick ---------------------------------------------------------------------
    def _sample_io(self, t_ns: int) -> None:
        try:
            io = read_io(self.pid, self._files)
        except PermissionError:
            self._note_once(
                "proc_io_unreadable",
                f"/proc/{self.pid}/io is not readable (needs the same user or CAP_SYS_PTRACE); "
                "I/O byte counters are recorded as not available",
            )
            io = {}
        if io is None:
            return  # the target exited mid-tick; the next tick notices
        for metric, key in (
            ("io_read_bytes_total", "read_bytes"),
            ("io_write_bytes_total", "write_bytes"),
            ("io_syscall_read_bytes_total", "rchar"),
            ("io_syscall_write_bytes_total", "wchar"),
        ):
            self._emit(metric, t_ns, io.get(key))

    def _sample_threads(self, t_ns: int, dt_s: float | None) -> None:
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except FileNotFoundError:
            return
        current: dict[tuple[int, int], int] = {}
        for tid in tids:
            stat = read_stat(f"/proc/{self.pid}/task/{tid}/stat", self._files)
            if stat is None:
                continue  # the thread ended between listing and reading
            key = (stat.pid, stat.start_ticks)
            current[key] = stat.cpu_ticks
            if dt_s is not None:
                prev = self._prev_thread_ticks.get(
                    key, 0 if stat.start_ticks >= self._prev_boot_ticks else None
                )
                if prev is not None:
                    self._emit("thread_cpu_pct", t_ns, _pct(stat.cpu_ticks - prev, dt_s), pid=stat.pid)
        self._prev_thread_ticks = current

    def _sample_children(self, t_ns: int, dt_s: float | None) -> None:
        kids = live_descendants(self.pid, self._files)
        self._child_pids = frozenset(k.pid for k in kids)
        current: dict[tuple[int, int], int] = {}
        total_ticks = 0
        for kid in kids:
            key = (kid.pid, kid.start_ticks)
            current[key] = kid.cpu_ticks
            self._emit("child_rss_bytes", t_ns, kid.rss_bytes, pid=kid.pid)
            if dt_s is None:
                continue
            # A descendant not seen last tick started since then (its CPU so far is all in this interval)
            # unless it is older: then it was missed (first tick, reparented) and gets no delta yet.
            prev = self._prev_child_ticks.get(key, 0 if kid.start_ticks >= self._prev_boot_ticks else None)
            if prev is not None:
                total_ticks += kid.cpu_ticks - prev
                self._emit("child_cpu_pct", t_ns, _pct(kid.cpu_ticks - prev, dt_s), pid=kid.pid)
        self._prev_child_ticks = current
        self._emit("child_count", t_ns, len(kids))
        self._emit("children_rss_bytes", t_ns, sum(k.rss_bytes for k in kids))
        if dt_s is not None:
            self._emit("children_cpu_pct", t_ns, _pct(total_ticks, dt_s))

    # ---- helpers -------------------------------------------------------------------------------
    def _target_gone(self) -> None:
        self._alive = False
        self._note_once(
            "proc_target_exited", f"process {self.pid} exited; /proc sampling stopped", pid=self.pid
        )
        self._stop.set()  # nothing more to sample: let the thread end (stop() stays safe to call)

    def _emit(self, metric: str, t_ns: int, value: float | None, *, pid: int | None = None) -> None:
        """A host metric of the target (or of the thread or descendant `pid`)."""
        self.emit_sample(metric, t_ns, value, pid=self.pid if pid is None else pid)


def _pct(ticks: int, dt_s: float) -> float | None:
    """CPU ticks over a wall interval, as a percentage of one core (None for an empty interval)."""
    return 100.0 * ticks / CLK_TCK / dt_s if dt_s > 0 else None
