"""benchmarks/gpu_proof.py on a machine without a GPU: the dry run validates every check it would run on one
(modules, and each planned command line parsed by the real parsers of the reference trainer, the gpuwatch
CLI and the proof's child programs), says in one line that there is no GPU and exits 0; without --dry-run it
says so in one line and exits 2. A plan with a flag that a parser rejects is caught by the validation."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

import pytest
from gpu_proof_support import PROOF, run_proof


def proof_modules():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(PROOF.parent))
    try:
        return importlib.import_module("gpu_proof"), importlib.import_module("gpu_proof_checks")
    finally:
        sys.path.remove(str(PROOF.parent))


def no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def test_dry_run_validates_every_check_and_says_there_is_no_gpu_in_one_line() -> None:
    _, checks = proof_modules()
    n = len(checks.CHECKS)
    proc = run_proof("--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert f"dry run only: {n} of {n} checks validated" in lines[0]
    if no_gpu():
        assert lines[0].startswith("gpu_proof: no CUDA GPU here")

    verbose = run_proof("--dry-run", "--verbose").stdout.splitlines()
    assert [ln.split()[1] for ln in verbose[:-1]] == [c.name for c in checks.CHECKS]
    assert all(ln.startswith("OK ") for ln in verbose[:-1])


def test_every_gpu_path_the_issue_names_has_a_check() -> None:
    _, checks = proof_modules()
    names = {c.name for c in checks.CHECKS}
    assert {"watch", "profile", "attach", "overhead", "trainer1", "trainer2", "fsdp2", "decode"} <= names
    planned = " ".join(" ".join(a) for c in checks.CHECKS for a in c.plan(ctx_for(checks)).trainer.values())
    for flag in (
        "--device cuda",
        "--dist-backend gloo",
        "--nproc 2",
        "--grad-sync fsdp2",
        "--checkpoint async",
    ):
        assert flag in planned


def ctx_for(checks):  # type: ignore[no-untyped-def]
    import os
    import time

    return checks.Ctx(
        device="cuda", work=Path("/nonexistent"), artifacts=Path("."), env=dict(os.environ),
        deadline=time.monotonic() + 60, pyspy=None,
    )  # fmt: skip


def test_validation_names_each_command_a_parser_rejects() -> None:
    proof, checks = proof_modules()
    bad = checks.Check(
        "bad",
        "planted mistakes",
        lambda ctx: checks.Plan(
            trainer={
                "run": ["--preset", "fixed", "--grad-sync", "allreduce-by-hand"],
                "flag": ["--no-such-flag"],
            },
            cli={"attach": ["attach", checks.PID, "--frobnicate"]},
            programs={"prog": ["no-such-program"]},
        ),
        lambda ctx, plan, out: None,
        ("gpuwatch.no_such_module",),
    )
    problems = proof.validate(bad, ctx_for(checks))
    assert len(problems) == 5, problems
    joined = "\n".join(problems)
    for part in (
        "gpuwatch.no_such_module",
        "reference_trainer run",
        "reference_trainer flag",
        "gpuwatch attach",
    ):
        assert part in joined
    assert "program prog" in joined
    assert "allreduce-by-hand" in joined  # the trainer's own ValueError, from its config


@pytest.mark.skipif(not no_gpu(), reason="the machine has a GPU")
def test_without_a_gpu_and_without_dry_run_it_says_so_and_exits_2(tmp_path: Path) -> None:
    proc = run_proof("--out", str(tmp_path / "proof.json"))
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()]
    assert "no CUDA GPU here" in proc.stdout and "nothing proved" in proc.stdout
    assert not (tmp_path / "proof.json").exists()


def test_watchdog_kills_the_children_fails_what_is_left_and_writes_the_figures(
    tmp_path: Path, monkeypatch
) -> None:
    """What happens at the 9-minute limit, when something in the proof itself hangs (children of a check are
    cut short before it by their own timeouts): process groups killed, lines failed, JSON written, exit 1."""
    proof_mod, checks = proof_modules()
    ctx = checks.Ctx(
        device="cpu", work=tmp_path, artifacts=tmp_path, env=dict(os.environ),
        deadline=time.monotonic() + 60, pyspy=None, rehearsal=True,
    )  # fmt: skip
    child = ctx.start(["sleep", "100"])
    args = proof_mod.build_parser().parse_args(["--out", str(tmp_path / "proof.json")])
    proof = proof_mod.Proof(args, ctx, list(checks.CHECKS[:3]), time.monotonic())
    proof.done.add(checks.CHECKS[0].name)
    proof.current = checks.CHECKS[1].name
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    proof.on_time_limit()
    assert exits == [1]
    assert child.wait(timeout=10) == -9  # SIGKILL to its process group
    child.stderr_file.close()
    doc = json.loads((tmp_path / "proof.json").read_text())
    status = {ln["name"]: ln["status"] for ln in doc["lines"]}
    assert status == {
        f"{checks.CHECKS[1].name}.time_limit": "FAIL",
        f"{checks.CHECKS[2].name}.not_run": "FAIL",
    }
