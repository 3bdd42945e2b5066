"""`gpuwatch attach` when things go wrong or end: one clear line on stderr and the documented exit code.

Each case uses a real process the test started itself: a reaped child (no such pid), `sleep` (not Python),
a non-dumpable Python (no permission), a thread id, a trainer that exits while attached, Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from attach_support import Target, start_cli, wait_for
from conftest import ROOT, cli_env, run_cli


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("gpuwatch attach: ")
    return lines[0]


def test_no_such_pid(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names nothing now
    proc = run_cli("attach", child.pid, "--duration", "1", "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert f"no such process: {child.pid}" in one_line_error(proc)
    assert not (tmp_path / "run").exists()


def test_not_a_python_process(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        proc = run_cli("attach", sleeper.pid, "--duration", "1", "--out", tmp_path / "run")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert f"process {sleeper.pid} (sleep) is not a Python process" in line
    assert not (tmp_path / "run").exists()


def test_a_thread_id_is_not_a_process(tmp_path: Path) -> None:
    code = "import threading,time,os\nthreading.Thread(target=time.sleep,args=(60,),daemon=True).start()\n"
    code += "print(os.getpid(),flush=True)\ntime.sleep(60)\n"
    proc_ = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc_.stdout.readline())  # type: ignore[union-attr]
        assert wait_for(lambda: len(os.listdir(f"/proc/{pid}/task")) > 1, 10)
        tid = max(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        proc = run_cli("attach", tid, "--duration", "1", "--out", tmp_path / "run")
    finally:
        proc_.kill()
        proc_.wait()
    assert proc.returncode == 2
    assert f"{tid} is a thread of process {pid}" in one_line_error(proc)


def test_no_permission_names_the_fix(tmp_path: Path) -> None:
    """A real ptrace refusal: the target made itself non-dumpable, so reading it needs CAP_SYS_PTRACE even
    for its own user. As root (which holds that capability), gpuwatch runs with CAP_SYS_PTRACE dropped from
    its bounding set (setpriv); as another user the refusal needs nothing extra."""
    cmd = [sys.executable, "-m", "gpuwatch", "attach"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root without setpriv (util-linux): cannot drop CAP_SYS_PTRACE to provoke a refusal")
        cmd = [setpriv, "--bounding-set", "-sys_ptrace", *cmd]
    with Target("nondumpable", "--seconds", "60") as target:
        proc = subprocess.run(
            [*cmd, str(target.pid), "--duration", "1", "--out", str(tmp_path / "run")],
            capture_output=True,
            text=True,
            env=cli_env(),
            cwd=ROOT,
            timeout=120,
        )
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert f"no permission to read process {target.pid}" in line
    for fix in ("same user", "root", "CAP_SYS_PTRACE", "ptrace_scope"):
        assert fix in line, line


def _fake_pyspy(tmp_path: Path, stderr_text: str) -> Path:
    fake = tmp_path / "py-spy"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' {stderr_text!r} >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


def test_python_version_pyspy_cannot_read(tmp_path: Path) -> None:
    """Simulated at the py-spy boundary: every interpreter installed here (2.7-3.13) is one py-spy 0.4
    reads, so a stand-in py-spy prints py-spy's own message for an unsupported version. The target is real."""
    fake = _fake_pyspy(tmp_path, "Error: Unsupported version of Python: 3.99.0a1")
    with Target("nondumpable", "--seconds", "60") as target:  # any live Python process
        proc = run_cli("attach", target.pid, "--py-spy", fake, "--duration", "1", "--out", tmp_path / "run")
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "runs Python 3.99.0a1, which this py-spy cannot read" in line and "pip install -U py-spy" in line


def test_pyspy_missing(tmp_path: Path) -> None:
    with Target("nondumpable", "--seconds", "60") as target:
        by_flag = run_cli(
            "attach", target.pid, "--py-spy", tmp_path / "nope" / "py-spy", "--out", tmp_path / "r"
        )
        env = {**cli_env(), "GPUWATCH_PYSPY": str(tmp_path / "missing-py-spy")}
        by_env = subprocess.run(
            [sys.executable, "-m", "gpuwatch", "attach", str(target.pid), "--out", str(tmp_path / "r2")],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
    for proc in (by_flag, by_env):
        assert proc.returncode == 1
        assert "py-spy not found" in one_line_error(proc)


def test_bad_flags_are_usage_errors(tmp_path: Path) -> None:
    for args in (["abc"], ["123", "--rate", "0"], ["123", "--duration", "-1"]):
        proc = run_cli("attach", *args, "--out", tmp_path / "run")
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with Target("exit-after", "--seconds", "60") as target:
        proc = run_cli("attach", target.pid, "--thread", "no-such-thread", "--out", tmp_path / "run")
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "no Python thread 'no-such-thread'" in line and f"{target.pid} (MainThread)" in line


def test_target_exits_while_attached_keeps_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with Target("exit-after", "--seconds", "4") as target:
        t0 = time.monotonic()
        proc = run_cli("attach", target.pid, "--duration", "120", "--out", run, "--json", timeout=180)
        took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert took < 60  # it noticed the exit instead of waiting out --duration
    assert f"process {target.pid} exited while attached; the run is kept in {run}" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["attach"]["status"] == "target_exited"
    writer = json.loads(next(run.glob("rank*/writer.json")).read_text())
    assert writer["status"] == "target_exited"
    summary = run_cli("summary", run, "--json")
    assert summary.returncode == 0, summary.stderr
    budget = json.loads(summary.stdout)["ranks"][0]["budget_pct"]
    assert budget["compute"] > 0
    assert any("exited while attached" in n for n in json.loads(summary.stdout)["notes"])


def test_ctrl_c_stops_cleanly_with_a_complete_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with Target("bench", "--width", "256", "--depth", "2", "--batch", "32") as target:
        attach = start_cli("attach", target.pid, "--out", run)  # no --duration: until Ctrl-C
        if not wait_for(lambda: any(run.glob("rank*/spans-*.jsonl")) or attach.poll() is not None, 60):
            attach.kill()
            out, err = attach.communicate(timeout=30)
            files = sorted(str(p.relative_to(run)) for p in run.rglob("*")) if run.exists() else []
            raise AssertionError(
                f"no span segment (attach ended or 60 s); files={files}; stderr:\n{err[-3000:]}"
            )
        attach.send_signal(signal.SIGINT)
        out, err = attach.communicate(timeout=60)
    assert attach.returncode == 0, err
    assert "stopping" in err and "Traceback" not in err
    assert "Time budget per rank" in out  # the report with the summary tables
    writer = json.loads(next(run.glob("rank*/writer.json")).read_text())
    assert writer["status"] == "ended"
    assert writer["meta"]["attach"]["training_thread"]["tid"] == target.pid


def test_a_python_process_that_does_not_train_falls_back_to_its_main_thread(tmp_path: Path) -> None:
    """No forward/backward anywhere: the main thread is taken, no steps are claimed, and the report says why."""
    run = tmp_path / "run"
    with Target("nondumpable", "--seconds", "60") as target:  # a plain sleep loop (root may still read it)
        if os.geteuid() != 0:
            pytest.skip("the idle target is non-dumpable; only root can read it")
        proc = run_cli("attach", target.pid, "--duration", "3", "--out", run, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["attach"]
    assert report["training_thread"]["tid"] == target.pid
    assert report["training_thread"]["how"].startswith("main thread")
    det = report["step_detection"]
    assert not det["used"] and det["confidence"] == 0.0
