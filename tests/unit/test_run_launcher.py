"""`gpuwatch run`'s decisions that need no training job: which commands are Python, which processes are
launchers, which interpreter options defeat the start-up hook, what the children's environment holds, and the
bootstrap `sitecustomize` chaining to the one it hides and staying cheap where nothing trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from gpuwatch.capture.launcher import BOOTSTRAP_DIR, check_python_options, child_env, python_of
from gpuwatch.capture.run_child import ENV_OPTIONS, ENV_WATCHED, is_launcher, program_of
from gpuwatch.cli.run_cmd import parse_steps
from gpuwatch.errors import UsageError

PY = sys.executable


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["python", "train.py", "--lr", "1"], ("script", "train.py")),
        (["python", "-u", "-W", "ignore", "train.py"], ("script", "train.py")),
        (["python", "-Wignore", "-X", "dev", "train.py"], ("script", "train.py")),
        (["python", "-m", "torch.distributed.run", "--nproc-per-node", "2", "t.py"], ("module", "torch.distributed.run")),
        (["python", "-um", "pkg.train"], ("module", "pkg.train")),
        (["python", "-mpkg.train"], ("module", "pkg.train")),
        (["python", "-c", "print(1)"], ("code", "")),
        (["python"], ("stdin", "")),
    ],
)  # fmt: skip
def test_program_of_a_python_command_line(argv: list[str], expected: tuple[str, str]) -> None:
    assert program_of(argv) == expected


def test_torchs_launchers_are_not_watched_their_ranks_are() -> None:
    assert is_launcher(["/venv/bin/python", "/venv/bin/torchrun", "--nproc-per-node", "2", "train.py"])
    assert is_launcher(["python", "-m", "torch.distributed.run", "--standalone", "train.py"])
    assert is_launcher(["python", "-m", "torch.distributed.launch", "train.py"])
    assert not is_launcher(["python", "-u", "train.py", "--local-rank", "0"])  # what the agent starts
    assert not is_launcher(["python", "-m", "reference_trainer"])


def test_python_commands_are_found_through_their_interpreter(tmp_path: Path) -> None:
    assert python_of((PY, "train.py"))[0] == PY
    script = tmp_path / "train"
    script.write_text(f"#!{PY} -u\nprint(1)\n")
    script.chmod(0o755)
    assert python_of((str(script), "--lr", "1")) == (PY, ["-u"])
    env_script = tmp_path / "train_env"
    env_script.write_text("#!/usr/bin/env python3\nprint(1)\n")
    env_script.chmod(0o755)
    assert os.path.basename(python_of((str(env_script),))[0]).startswith("python3")
    long_path = tmp_path / "console-script"  # pip's trampoline for interpreters on very long paths
    long_path.write_text(f"#!/bin/sh\n'''exec' \"{PY}\" \"$0\" \"$@\"\n' '''\nimport sys\n")
    long_path.chmod(0o755)
    assert python_of((str(long_path),))[0] == PY


def test_commands_that_are_not_python_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="command not found: no-such-program-xyz"):
        python_of(("no-such-program-xyz", "a"))
    shell = tmp_path / "train.sh"
    shell.write_text("#!/bin/sh\npython train.py\n")
    shell.chmod(0o755)
    with pytest.raises(UsageError, match="not a Python command.*gpuwatch attach.*gpuwatch.watch"):
        python_of((str(shell),))
    with pytest.raises(UsageError, match="no command given"):
        python_of(())


@pytest.mark.parametrize("flag", ["-I", "-E", "-S", "-uI", "-sE"])
def test_interpreter_options_that_skip_the_start_up_hook_are_refused(flag: str) -> None:
    with pytest.raises(UsageError, match=f"python -{flag[-1]}"):
        check_python_options([flag, "train.py"])


def test_other_interpreter_options_and_the_programs_own_pass() -> None:
    check_python_options(["-u", "-X", "importtime", "-W", "ignore", "train.py", "-I", "-S"])
    check_python_options(["-c", "import sys; print(sys.argv)", "-E"])
    check_python_options(["-m", "pkg", "-I"])


def test_profile_steps_flag() -> None:
    assert parse_steps("10..12") == [10, 13]
    assert parse_steps("5") == [1, 6]
    for bad in ("x", "5..2", "-1..3"):
        with pytest.raises(Exception, match="expected"):
            parse_steps(bad)


def test_the_childrens_environment(tmp_path: Path) -> None:
    env = child_env(tmp_path / "run", {"sample_hz": 0}, {"PYTHONPATH": "/mine", ENV_WATCHED: "1"})
    assert env["PYTHONPATH"] == f"{BOOTSTRAP_DIR}{os.pathsep}/mine"
    assert ENV_WATCHED not in env  # a nested `gpuwatch run` watches its own job
    assert json.loads(env[ENV_OPTIONS]) == {"run_dir": str(tmp_path / "run"), "watch": {"sample_hz": 0}}
    assert env["GPUWATCH_RUN_DIR"] == str(tmp_path / "run")


def _python_with_bootstrap(tmp_path: Path, code: str, *, armed: bool) -> subprocess.CompletedProcess[str]:
    user = tmp_path / "user_site"
    user.mkdir(exist_ok=True)
    (user / "sitecustomize.py").write_text("import os\nos.environ['USER_SITECUSTOMIZE_RAN'] = '1'\n")
    env = child_env(tmp_path / "run", {}) if armed else dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP_DIR), str(user), root])
    if not armed:
        env.pop(ENV_OPTIONS, None)
    return subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("armed", [True, False])
def test_the_bootstrap_runs_the_sitecustomize_it_hides(tmp_path: Path, armed: bool) -> None:
    proc = _python_with_bootstrap(
        tmp_path, "import os, sitecustomize; print(os.environ.get('USER_SITECUSTOMIZE_RAN'))", armed=armed
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
    assert proc.stderr == ""


def test_a_process_that_never_imports_torch_loads_nothing_and_writes_nothing(tmp_path: Path) -> None:
    code = (
        "import sys, json; print(json.dumps(sorted(m for m in sys.modules "
        "if m.startswith(('gpuwatch', 'collectors', 'torch', 'numpy', 'msgspec')))))"
    )
    proc = _python_with_bootstrap(tmp_path, code, armed=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []  # not even gpuwatch: the bootstrap waits for torch
    assert not (tmp_path / "run").exists()


def test_run_without_a_command_is_a_usage_error() -> None:
    proc = run_cli("run")
    assert proc.returncode == 2 and "no command given" in proc.stderr
