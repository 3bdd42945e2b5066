"""The segment writer under faults while a real training program runs (tests/support/fault_trainer.py):
a full disk (RLIMIT_FSIZE lowered on the running process), a run directory that turns read-only and back,
and a run directory removed while it is written. The program's losses stay bit-identical to the bare run,
its steps keep their pace, it exits 0; records are dropped and counted, and one note says what happened.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, cli_env, run_cli

PROGRAM = ROOT / "tests" / "support" / "fault_trainer.py"
STEPS = 60
FAULT_FROM, FAULT_TO = 15, 40  # the fault lasts from the end of this step to the end of that one


def trainer(run_dir: Path, result: Path, *extra: str) -> subprocess.Popen[str]:
    args = [sys.executable, str(PROGRAM), "--run-dir", str(run_dir), "--steps", str(STEPS), "--progress"]
    args += ["--result", str(result), "--step-ms", "20", "--flush-interval", "0.1", *extra]
    return subprocess.Popen(
        args, cwd=run_dir.parent, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_with_fault(
    tmp_path: Path, run_dir: Path, start: Callable[[int], None], stop: Callable[[int], None] | None
) -> tuple[dict[str, Any], str]:
    """Run the trainer; `start(pid)` after step FAULT_FROM, `stop(pid)` after FAULT_TO. Returns the
    program's result and its stderr."""
    result = tmp_path / "result.json"
    proc = trainer(run_dir, result)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            step = int(line.split()[1])
            if step == FAULT_FROM:
                start(proc.pid)
            if step == FAULT_TO and stop is not None:
                stop(proc.pid)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return json.loads(result.read_text()), err


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bare")
    result = tmp / "bare.json"
    proc = trainer(tmp / "run", result, "--no-watch")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(result.read_text())


def check_the_job_did_not_notice(got: dict[str, Any], bare: dict[str, Any]) -> None:
    assert got["losses"] == bare["losses"]  # bit-identical training
    inside = got["step_s"][FAULT_FROM + 1 : FAULT_TO + 1]
    outside = got["step_s"][5:FAULT_FROM] + got["step_s"][FAULT_TO + 1 :]
    # the writer's failures stay on its own thread: steps keep their pace (loose: a busy two-core host)
    assert statistics.median(inside) < 3 * statistics.median(outside), (inside, outside)


def check_dropped_and_noted(writer: dict[str, Any]) -> None:
    assert writer["dropped_spans"] > 0
    notes = writer["notes"]
    assert "writer_error" in notes and notes["writer_error"]["count"] >= 1
    assert "dropped and counted" in notes["writer_error"]["message"]
    assert [k for k in notes if k.startswith("writer")] in (
        ["writer_error"],
        ["writer_error", "writer_compaction"],
    )


def test_disk_full(tmp_path: Path, bare: dict[str, Any]) -> None:
    """RLIMIT_FSIZE lowered to 4 KB on the running trainer: every span segment (tens of KB) fails with
    EFBIG, the small writer record still lands; raised again, writing resumes."""
    run_dir = tmp_path / "run"

    def limit(pid: int, soft: int | None) -> None:  # the soft limit only: raising a hard one needs privilege
        hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if soft is None else soft, hard))

    got, err = run_with_fault(tmp_path, run_dir, lambda pid: limit(pid, 4096), lambda pid: limit(pid, None))
    check_the_job_did_not_notice(got, bare)
    (record,) = run_dir.glob("rank*/writer.json")
    on_disk = json.loads(record.read_text())
    check_dropped_and_noted(on_disk)
    assert on_disk["dropped_spans"] == got["dropped_spans"] and on_disk["status"] == "ended"
    assert "File too large" in on_disk["notes"]["writer_error"]["message"]
    assert len([ln for ln in err.splitlines() if ln.startswith("gpuwatch:")]) == 1
    assert not list(run_dir.glob("rank*/.*.tmp"))  # no half-written file left behind
    summary = run_cli("summary", run_dir, "--json")
    assert summary.returncode == 0, summary.stderr
    notes = json.loads(summary.stdout)["notes"]
    assert sum("writer_error" in n for n in notes) == 1, notes
    assert any(f"dropped {got['dropped_spans']} spans" in n for n in notes), notes


def _mount_tmpfs(path: Path) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], capture_output=True)
    return proc.returncode == 0


def test_run_directory_turns_read_only_and_back(tmp_path: Path, bare: dict[str, Any]) -> None:
    """A remount read-only (a tmpfs when root may mount; else chmod, which binds a non-root user)."""
    run_dir = tmp_path / "run"
    mounted = _mount_tmpfs(run_dir)
    if not mounted and os.geteuid() == 0:
        pytest.skip("root without mount: chmod does not bind root, and no read-only filesystem to use")

    def read_only(on: bool) -> None:
        if mounted:
            opts = "remount,ro" if on else "remount,rw"
            subprocess.run(["mount", "-o", opts, str(run_dir)], check=True, capture_output=True)
        else:
            for folder in [run_dir, *run_dir.glob("rank*")]:
                folder.chmod(0o555 if on else 0o755)

    try:
        got, err = run_with_fault(tmp_path, run_dir, lambda _: read_only(True), lambda _: read_only(False))
        check_the_job_did_not_notice(got, bare)
        (record,) = run_dir.glob("rank*/writer.json")
        on_disk = json.loads(record.read_text())
        check_dropped_and_noted(on_disk)
        assert on_disk["dropped_spans"] == got["dropped_spans"]
        assert len([ln for ln in err.splitlines() if ln.startswith("gpuwatch:")]) == 1
        summary = run_cli("summary", run_dir, "--json")
        assert summary.returncode == 0, summary.stderr
        doc = json.loads(summary.stdout)
        assert doc["ranks"][0]["steps"] + doc["ranks"][0]["warmup"]["steps"] < STEPS  # the window is lost
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(run_dir)], capture_output=True)


def test_run_directory_removed_while_writing(tmp_path: Path, bare: dict[str, Any]) -> None:
    run_dir = tmp_path / "run"
    got, err = run_with_fault(tmp_path, run_dir, lambda _: shutil.rmtree(run_dir), None)
    check_the_job_did_not_notice(got, bare)
    check_dropped_and_noted(got)  # nowhere left to write it: the program's own writer says so
    assert "No such file or directory" in got["notes"]["writer_error"]["message"]
    assert len([ln for ln in err.splitlines() if ln.startswith("gpuwatch:")]) == 1
    assert not run_dir.exists()  # gpuwatch does not bring back what the user removed
