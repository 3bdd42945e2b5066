"""The /proc sampler against real processes this test starts, checked against what they measure themselves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from conftest import ListSink

from collectors.system.proc_sampler import CLK_TCK, ProcSampler, process_tree_pids


def spawn(code: str) -> subprocess.Popen[str]:
    """A Python child driven line by line through its stdin/stdout."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def send(proc: subprocess.Popen[str], line: str = "go") -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def recv(proc: subprocess.Popen[str]) -> Any:
    assert proc.stdout is not None
    return json.loads(proc.stdout.readline())


def finish(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


class Window:
    """Brackets the sampler's interval between its two readings, so the truth has an honest range.

    The sampler divides by the time between the starts of its two `sample_once` calls, which lies between
    `inner_s` (end of the first call to start of the second) and `outer_s` (start of the first to end of
    the second); the child's own CPU seconds over either gives the bounds of the expected percentage.
    """

    def first(self, sampler: ProcSampler) -> None:
        self.t0 = time.monotonic()
        sampler.sample_once(1)
        self.t1 = time.monotonic()

    def second(self, sampler: ProcSampler) -> None:
        self.t2 = time.monotonic()
        sampler.sample_once(2)
        self.t3 = time.monotonic()
        self.inner_s, self.outer_s = self.t2 - self.t1, self.t3 - self.t0

    def check(self, got_pct: float | None, truth_cpu_s: float, ticks: int = 3) -> None:
        """`got_pct` agrees with `truth_cpu_s`, give or take a few clock ticks of rounding and 3 pp of
        CPU the child spends outside its measured phase (reading stdin, printing)."""
        slack = 3.0 + 100.0 * ticks / CLK_TCK / self.inner_s
        low = 100.0 * truth_cpu_s / self.outer_s - slack
        high = 100.0 * truth_cpu_s / self.inner_s + slack
        assert got_pct is not None and low <= got_pct <= high, (got_pct, low, high)


BURNER = """
    import json, os, sys, threading, time
    out, burnt, leave = {}, threading.Event(), threading.Event()
    def burn():  # stays alive after burning: the sampler sees a thread's CPU only while it exists
        out["tid"] = threading.get_native_id()
        c0 = time.thread_time()  # burn a fixed amount of CPU, however long a loaded machine takes
        while time.thread_time() - c0 < 1.0:
            pass
        out["thread_cpu_s"] = time.thread_time() - c0
        burnt.set()
        leave.wait()
    print(json.dumps({"main_tid": threading.get_native_id()}), flush=True)
    sys.stdin.readline()
    t0 = os.times()
    worker = threading.Thread(target=burn); worker.start(); burnt.wait()
    t1 = os.times()
    out["cpu_s"] = (t1.user + t1.system) - (t0.user + t0.system)
    print(json.dumps(out), flush=True)
    sys.stdin.readline()
    leave.set()
"""


def test_busy_child_cpu_and_threads_match_its_own_clock() -> None:
    proc = spawn(BURNER)
    try:
        main_tid = recv(proc)["main_tid"]
        sink = ListSink()
        sampler = ProcSampler(interval_s=1.0, anchor_unix_ns=time.time_ns(), pid=proc.pid)
        sampler.sink = sink
        window = Window()
        window.first(sampler)
        assert sink.at(1, "proc_cpu_pct") == []  # CPU % needs two readings
        send(proc)
        measured = recv(proc)
        window.second(sampler)

        # Independent truth: the child's own os.times()/thread_time() over its busy phase.
        window.check(sink.one(2, "proc_cpu_pct", proc.pid), measured["cpu_s"])
        window.check(sink.one(2, "thread_cpu_pct", measured["tid"]), measured["thread_cpu_s"])
        assert measured["cpu_s"] >= 0.95
        idle_main = sink.one(2, "thread_cpu_pct", main_tid)
        assert idle_main is not None and idle_main <= 5.0
        assert sink.one(2, "thread_count", proc.pid) == 2.0
        rss = sink.one(2, "rss_bytes", proc.pid)
        assert rss is not None and 1 << 20 < rss < 1 << 30
        assert sampler.target_alive and sink.notes == []
    finally:
        finish(proc)


WRITER = """
    import json, sys
    def io():
        with open("/proc/self/io") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f)}
    print("{}", flush=True)
    path, n = sys.stdin.readline().split()
    before = io()
    with open(path, "wb") as f:
        for _ in range(int(n) // (1 << 20)):
            f.write(b"x" * (1 << 20))
    after = io()
    print(json.dumps({k: after[k] - before[k] for k in after}), flush=True)
    sys.stdin.readline()
"""


def test_written_bytes_show_in_io_counters(tmp_path: Any) -> None:
    n_bytes = 4 << 20
    proc = spawn(WRITER)
    try:
        recv(proc)
        sink = ListSink()
        sampler = ProcSampler(interval_s=1.0, anchor_unix_ns=time.time_ns(), pid=proc.pid, children=False)
        sampler.sink = sink
        sampler.sample_once(1)
        send(proc, f"{tmp_path / 'out.bin'} {n_bytes}")
        own = recv(proc)  # the child's own /proc/self/io delta around its writes
        sampler.sample_once(2)

        def delta(metric: str) -> float:
            a, b = sink.one(1, metric, proc.pid), sink.one(2, metric, proc.pid)
            assert a is not None and b is not None
            return b - a

        wchar = delta("io_syscall_write_bytes_total")
        assert n_bytes <= wchar <= n_bytes + 4096  # + the child's one short line on stdout
        # Storage-level bytes depend on the filesystem (tmpfs counts none): compare with the child's own view.
        assert abs(delta("io_write_bytes_total") - own["write_bytes"]) <= 64 << 10
        assert delta("io_read_bytes_total") >= 0
    finally:
        finish(proc)


PARENT = """
    import json, subprocess, sys
    KID = '''
    import os, sys, time
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = os.times(); c0 = time.process_time()
    while time.process_time() - c0 < 0.6:
        pass
    t1 = os.times()
    print((t1.user + t1.system) - (t0.user + t0.system), flush=True)
    sys.stdin.readline()
    '''
    kids = [subprocess.Popen([sys.executable, "-c", KID], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True) for _ in range(2)]
    for k in kids:
        k.stdout.readline()
    print(json.dumps([k.pid for k in kids]), flush=True)
    sys.stdin.readline()
    for k in kids:
        k.stdin.write("go\\n"); k.stdin.flush()
    print(json.dumps([float(k.stdout.readline()) for k in kids]), flush=True)
    sys.stdin.readline()
    for k in kids:
        k.stdin.close(); k.wait()
"""


def test_children_counted_with_their_cpu() -> None:
    proc = spawn(PARENT)
    try:
        kid_pids = recv(proc)
        sink = ListSink()
        sampler = ProcSampler(interval_s=1.0, anchor_unix_ns=time.time_ns(), pid=proc.pid, threads=False)
        sampler.sink = sink
        window = Window()
        window.first(sampler)
        assert sink.one(1, "child_count", proc.pid) == 2.0
        assert sampler.watched_pids() == {proc.pid, *kid_pids} == process_tree_pids(proc.pid)
        send(proc)
        kid_cpu_s = recv(proc)
        window.second(sampler)

        for pid, cpu_s in zip(kid_pids, kid_cpu_s):
            window.check(sink.one(2, "child_cpu_pct", pid), cpu_s)
            rss = sink.one(2, "child_rss_bytes", pid)
            assert rss is not None and rss > 1 << 20
        window.check(sink.one(2, "children_cpu_pct", proc.pid), sum(kid_cpu_s), ticks=6)
        assert min(kid_cpu_s) >= 0.55
        assert sink.one(2, "child_count", proc.pid) == 2.0
        children_rss = sink.one(2, "children_rss_bytes", proc.pid)
        assert children_rss == sum(sink.one(2, "child_rss_bytes", p) or 0 for p in kid_pids)
        # The parent itself only waited on pipes.
        parent_cpu = sink.one(2, "proc_cpu_pct", proc.pid)
        assert parent_cpu is not None and parent_cpu < 10.0
    finally:
        send(proc)
        finish(proc)


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_vanished_target_is_noted_once_and_stops(reap: bool) -> None:
    proc = spawn("import sys; print('{}', flush=True); sys.stdin.readline()")
    try:
        recv(proc)
        sink = ListSink()
        sampler = ProcSampler(interval_s=1.0, anchor_unix_ns=time.time_ns(), pid=proc.pid)
        sampler.sink = sink
        sampler.sample_once(1)
        assert sampler.target_alive and sink.at(1, "rss_bytes")
        os.kill(proc.pid, signal.SIGKILL)
        if reap:
            proc.wait(timeout=10)
        else:  # unreaped: /proc/PID still exists, in state Z
            while open(f"/proc/{proc.pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
                time.sleep(0.01)
        before = len(sink.samples)
        sampler.sample_once(2)
        sampler.sample_once(3)
        assert not sampler.target_alive
        assert len(sink.samples) == before
        assert [n[0] for n in sink.notes] == ["proc_target_exited"]
        assert str(proc.pid) in sink.notes[0][1]
    finally:
        finish(proc)


def test_thread_runs_on_this_process_and_ends_when_target_exits() -> None:
    sink = ListSink()
    own = ProcSampler(interval_s=0.02, anchor_unix_ns=time.time_ns())
    assert own.pid == os.getpid()
    own.start(sink)
    deadline = time.monotonic() + 20
    while len([s for s in sink.samples if s.metric == "proc_cpu_pct"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    own.stop()
    own.stop()  # idempotent
    assert len([s for s in sink.samples if s.metric == "proc_cpu_pct" and s.pid == os.getpid()]) >= 3
    assert sink.notes == []

    proc = spawn("import sys; print('{}', flush=True); sys.stdin.readline()")
    try:
        recv(proc)
        attach = ProcSampler(interval_s=0.02, anchor_unix_ns=time.time_ns(), pid=proc.pid)
        attach.start(sink)
        thread = attach._thread
        assert thread is not None
        send(proc)  # the child exits on its own
        proc.wait(timeout=10)
        thread.join(timeout=20)
        assert not thread.is_alive() and not attach.target_alive
        attach.stop()
        assert [n[0] for n in sink.notes] == ["proc_target_exited"]
    finally:
        finish(proc)


def test_unreadable_io_is_none_and_noted_once() -> None:
    """Another user's process: /proc/PID/io needs ptrace rights, stat does not."""
    if os.geteuid() != 0:  # we only ever read processes we started: make the sampler another user instead
        pytest.skip("needs root: a forked sampler drops to user nobody to be refused our own /proc/PID/io")
    target, drop_to = os.getpid(), 65534  # a forked child runs as nobody and samples this process
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the forked sampler: report through the pipe, never return into pytest
        try:
            os.close(read_end)
            if drop_to is not None:
                os.setgid(drop_to)
                os.setuid(drop_to)
            sink = ListSink()
            sampler = ProcSampler(interval_s=1.0, anchor_unix_ns=0, pid=target, threads=False, children=False)
            sampler.sink = sink
            sampler.sample_once(1)
            sampler.sample_once(2)
            out = {"samples": [[s.metric, s.t_ns, s.value] for s in sink.samples], "notes": sink.notes}
            os.write(write_end, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        report = json.loads(f.read())
    os.waitpid(child, 0)
    io_values = [v for m, _, v in report["samples"] if m.startswith("io_")]
    assert len(io_values) == 8 and all(v is None for v in io_values)
    assert [n[0] for n in report["notes"]] == ["proc_io_unreadable"]
    cpu = [v for m, t, v in report["samples"] if m == "proc_cpu_pct"]
    assert len(cpu) == 1 and cpu[0] is not None and cpu[0] >= 0  # the rest still works


def test_files_stay_open_between_ticks_and_close_with_their_thread_and_on_stop() -> None:
    """The sampler re-reads its /proc files through kept descriptors: one per file between ticks, the file of
    a thread that ended closed at the next tick, and all of them on stop."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    baseline = open_fds()
    sink = ListSink()
    sampler = ProcSampler(interval_s=1.0, anchor_unix_ns=time.time_ns(), children=False)
    sampler.sink = sink
    release = threading.Event()
    extra = threading.Thread(target=release.wait, daemon=True)
    extra.start()
    try:
        sampler.sample_once(1)
        kept = open_fds() - baseline
        threads = len(os.listdir("/proc/self/task"))
        assert kept == threads + 2  # each thread's stat, and the process's stat and io
        sampler.sample_once(2)
        assert open_fds() - baseline == kept  # read again, not opened again
        assert sink.one(2, "thread_cpu_pct", extra.native_id) is not None
    finally:
        release.set()
        extra.join(timeout=10)
    sampler.sample_once(3)
    assert open_fds() - baseline == kept - 1
    assert not sink.at(3, "thread_cpu_pct", extra.native_id)
    sampler.stop()
    assert open_fds() == baseline
