"""benchmarks/gpu_proof.py rehearsed on the CPU (`--cpu`): the checks whose figures come from gpuwatch's own
outputs (the planted watched loop and its summary, the profiler window, its import, attach's JSON) run end to
end at small sizes, so a change to those outputs breaks this test and not the next GPU session; and the
global time limit stops a running check, kills its children and still writes the figures file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from gpu_proof_support import run_proof

pytestmark = pytest.mark.slow


def test_rehearsal_of_watch_profile_and_attach_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "proof.json"
    proc = run_proof(
        "--cpu", "--only", "env,watch,profile,attach", "--work", str(tmp_path / "work"), "--out", str(out),
        timeout=420,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    status = {ln["name"]: ln["status"] for ln in doc["lines"]}
    assert "FAIL" not in status.values(), proc.stdout
    for name in (
        "watch.compute_vs_cuda_events",
        "watch.step_wall",
        "watch.data_wait",
        "profile.imported_view",
        "attach.compute_vs_watch",
    ):
        assert status[name] == "RAN", name
    for name in ("watch.host_sync", "attach.nvml_busy", "attach.nvml_power"):
        assert status[name] == "N/A", name  # only a GPU produces these
    assert status["profile.hta_equal"] in ("SKIP", "RAN")
    figures = doc["figures"]
    assert (
        abs(figures["watch"]["gpuwatch_wall_ms"] - figures["watch"]["truth_wall_ms"])
        < 0.02 * figures["watch"]["truth_wall_ms"]
    )
    assert (tmp_path / "gpu_proof-profile-trace.json.gz").exists()  # saved beside --out for an HTA comparison
    assert all(c["rc"] == 0 for c in doc["commands"])


@pytest.mark.parametrize(("check", "limit_s"), [("attach", 20), ("trainer2", 15)])
def test_time_limit_ends_the_checks_in_time_kills_every_child_and_writes(
    tmp_path: Path, check: str, limit_s: int
) -> None:
    """Both checks need more than their limit here (attach's target loops 14 s after a start-up of several
    seconds, then attach reads its run; trainer2 trains two gloo ranks twice: 29 s on a fast CI run, which
    a 30 s limit therefore did not cut, over a minute on a loaded one). Their commands
    are cut short before the limit, the next check is not started, and the figures are written. Killed with
    them: torchrun's ranks and attach's py-spy, which run in sessions of their own."""
    from reference_trainer_support import shared_data_root

    data = shared_data_root()
    out, work = tmp_path / "proof.json", tmp_path / "work"
    t0 = time.monotonic()
    proc = run_proof(
        "--cpu", "--only", f"{check},overhead", "--limit-s", str(limit_s), "--work", str(work), "--out", str(out),
        "--data-dir", str(data), timeout=120,
    )  # fmt: skip
    assert time.monotonic() - t0 < 45
    assert proc.returncode == 1
    doc = json.loads(out.read_text())
    assert doc["lines"] and {ln["status"] for ln in doc["lines"]} == {"FAIL"}, proc.stdout
    assert {ln["check"] for ln in doc["lines"]} == {check, "overhead"}
    time.sleep(1)
    assert not processes_mentioning(str(work))


def processes_mentioning(text: str) -> list[bytes]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(cmdline)
    return found
