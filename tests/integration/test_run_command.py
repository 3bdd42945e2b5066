"""`gpuwatch run -- COMMAND` on real jobs: who is watched, where the steps come from, exit status, signals,
failed runs, errors, and a training script written without gpuwatch in mind timing its own input pipeline.

The programs are real (DataLoader workers forked and spawned, gloo ranks from torchrun and from
torch.multiprocessing.spawn, PIL decode); none of them calls gpuwatch (tests/support/run_targets.py,
imagefolder_trainer.py, planted_trainer.py --no-watch), except the one that checks a script's own
`gpuwatch.watch()` joins the run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, summary_json
from run_support import ROOT, gpuwatch_run, run_env

from gpuwatch.store.run_dir import WRITER_FILE, list_writer_dirs
from gpuwatch.store.run_reader import RunReader

SUPPORT = ROOT / "tests" / "support"
TARGETS = SUPPORT / "run_targets.py"
PY = sys.executable


def writers(run_dir: Path) -> list[dict]:
    return [json.loads((w / WRITER_FILE).read_text()) for w in list_writer_dirs(run_dir)]


def steps_found(run_dir: Path) -> dict[int, int]:
    """Step spans per rank: the steps gpuwatch cut (the budget may leave warm-up steps out of its count)."""
    reader = RunReader(run_dir)
    try:
        return {rank: int((reader.span_columns(rank).kind == "step").sum()) for rank in reader.ranks}
    finally:
        reader.close()


def steps_note(doc: dict) -> str:
    return " | ".join(n for n in doc["notes"] if "run_steps:" in n)


# ---- errors -----------------------------------------------------------------------------------------------
def _one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    _one_line(gpuwatch_run(tmp_path / "a", "no-such-trainer-xyz", "x"), 2, "command not found")
    _one_line(
        gpuwatch_run(tmp_path / "b", "true"), 2, "not a Python command", "gpuwatch attach", "gpuwatch.watch"
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _one_line(gpuwatch_run(blocker / "run", PY, TARGETS, "helper"), 2, "cannot write the run directory")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("")
    _one_line(gpuwatch_run(busy, PY, TARGETS, "helper"), 2, "not empty")
    _one_line(gpuwatch_run(tmp_path / "c", PY, "-I", TARGETS, "helper"), 2, "python -I")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


# ---- who is watched ---------------------------------------------------------------------------------------
def test_a_helper_that_never_trains_is_not_watched(tmp_path: Path) -> None:
    proc = gpuwatch_run(tmp_path / "run", PY, TARGETS, "helper")
    assert proc.returncode == 0, proc.stderr
    assert writers(tmp_path / "run") == []
    assert "no process of it made a training call" in proc.stderr
    job = json.loads((tmp_path / "run" / "gpuwatch-job.json").read_text())
    assert job["exit_code"] == 0 and job["status"] == "ended"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["spawn_ranks", "fork_ranks"])
def test_ranks_a_script_starts_itself_are_watched_not_their_parent(tmp_path: Path, case: str) -> None:
    """torch.multiprocessing.spawn, and multiprocessing's fork of a parent that has imported torch."""
    proc = gpuwatch_run(tmp_path / "run", PY, TARGETS, case, "--steps", "8")
    assert proc.returncode == 0, proc.stderr
    found = writers(tmp_path / "run")
    assert sorted(w["rank"] for w in found) == [0, 1]  # the mp.spawn parent never trains: no writer
    assert steps_found(tmp_path / "run") == {0: 8, 1: 8}
    assert "optimizer steps (SGD.step()" in steps_note(summary_json(tmp_path / "run"))


@pytest.mark.slow
def test_spawned_dataloader_workers_are_not_watched(tmp_path: Path) -> None:
    proc = gpuwatch_run(tmp_path / "run", PY, TARGETS, "spawn_workers", "--steps", "6")
    assert proc.returncode == 0, proc.stderr
    assert len(writers(tmp_path / "run")) == 1
    assert steps_found(tmp_path / "run") == {0: 6}


@pytest.mark.slow
def test_torchrun_ranks_land_in_one_run_and_rank_0_is_the_manager_they_wait_for(tmp_path: Path) -> None:
    """The manager-node planted program, unmodified (its own watch off), under the torchrun console script:
    rank 0 steps the optimizer, rank 1 never does (its steps come from its loop's structure)."""
    torchrun = Path(PY).parent / "torchrun"
    launcher = [str(torchrun)] if torchrun.exists() else [PY, "-m", "torch.distributed.run"]
    out = tmp_path / "run"
    proc = gpuwatch_run(
        out, *launcher, "--standalone", "--nproc-per-node", "2", SUPPORT / "planted_trainer.py", "manager",
        "--run-dir", tmp_path / "unused", "--truth", tmp_path / "truth.json", "--steps", "16", "--no-watch",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(w["rank"] for w in writers(out)) == [0, 1]  # the elastic agent is not watched
    assert not (tmp_path / "unused").exists()
    doc = summary_json(out)
    assert doc["straggler"]["rank"] == 0
    assert [r["rank"] for r in doc["ranks"]] == [0, 1]
    found = steps_found(out)
    assert found[0] == 16 and found[1] >= 14
    note = steps_note(doc)
    assert "rank 0" in note and "optimizer steps (SGD.step()" in note
    assert "rank 1" in note and "training loop's structure" in note


# ---- steps ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_script_calling_gw_step_keeps_its_own_steps(tmp_path: Path) -> None:
    """The planted program with its own `gpuwatch.watch(other_dir)`: it joins the run's watch."""
    out, own = tmp_path / "run", tmp_path / "own"
    proc = gpuwatch_run(
        out, PY, SUPPORT / "planted_trainer.py", "slow_loader", "--run-dir", own,
        "--truth", tmp_path / "truth.json", "--steps", "12",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr
    assert not own.exists()  # one run: gpuwatch run's
    assert steps_found(out) == {0: 12}
    doc = summary_json(out)
    assert "the script's own gw.step() calls" in steps_note(doc)
    assert any("run_script_watch" in n for n in doc["notes"])


# ---- exit status, failures, signals -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("case, code", [("train", 3), ("crash", 1)])
def test_the_jobs_exit_status_is_gpuwatchs_and_a_failed_run_is_readable_and_marked(
    tmp_path: Path, case: str, code: int
) -> None:
    out = tmp_path / "run"
    proc = gpuwatch_run(out, PY, TARGETS, case, "--steps", "6", "--exit-code", str(code))
    assert proc.returncode == code, proc.stderr
    assert all(w["status"] == "failed" and w["notes"]["job_exit"] for w in writers(out))
    assert steps_found(out) == {0: 6}
    doc = summary_json(out)
    assert any(f"job_exit: the job exited with code {code}" in n for n in doc["notes"])
    assert json.loads((out / "gpuwatch-job.json").read_text())["exit_code"] == code


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_go_to_the_job_and_the_summary_works_while_it_runs(
    tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [PY, "-m", "gpuwatch", "run", "--out", str(out), "--", PY, str(TARGETS), "train", "--steps", "100000"],
        cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("step 30"):
                break
        # while the job runs; its writer flushes once a second, so the first steps may not be on disk yet
        deadline = time.monotonic() + 30
        while (live_cli := run_cli("summary", out, "--json")).returncode != 0 and time.monotonic() < deadline:
            assert "no spans yet" in live_cli.stderr, live_cli.stderr
            time.sleep(0.2)
        assert live_cli.returncode == 0, live_cli.stderr
        live = json.loads(live_cli.stdout)
        assert sum(live["ranks"][0]["per_step"]["wall_ms"]) > 0
        assert steps_found(out)[0] >= 20
        assert any("still running" in n for n in live["notes"])
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == -sig  # it ended as the job did: by that signal
    finally:
        proc.kill()
        proc.wait()
    doc = summary_json(out)
    assert any(f"the job was killed by {sig.name}" in n for n in doc["notes"])
    assert all(w["status"] == "failed" for w in writers(out))


# ---- a script nobody wrote for gpuwatch -------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imagefolder") / "data"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_an_imagefolder_scripts_own_data_time_matches_data_loading_plus_preprocessing(
    tmp_path: Path, image_folder: Path, workers: int
) -> None:
    """pytorch/examples-style `data_time` / `batch_time` meters against gpuwatch's budget of the same run,
    over the same iterations (the budget leaves warm-up steps out; gpuwatch's step i is iteration i)."""
    out, result = tmp_path / "run", tmp_path / "result.json"
    proc = gpuwatch_run(
        out, PY, SUPPORT / "imagefolder_trainer.py", "--data", image_folder, "--make-data",
        "--workers", str(workers), "--epochs", "3", "--result", result,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    own = json.loads(result.read_text())
    assert len(writers(out)) == 1  # the workers are not watched
    assert steps_found(out) == {0: own["iterations"]}
    doc = summary_json(out)
    rank = doc["ranks"][0]
    kept = rank["per_step"]["step"]
    assert len(kept) >= own["iterations"] - 3
    data_pct = 100 * sum(own["data_s_per_iteration"][i] for i in kept)
    data_pct /= sum(own["batch_s_per_iteration"][i] for i in kept)
    b = rank["budget_pct"]
    assert b["data_loading"] + b["cpu_preprocessing"] == pytest.approx(data_pct, abs=3.0)
    assert "optimizer steps (SGD.step()" in steps_note(doc)
