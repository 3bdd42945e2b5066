"""Shared fixtures: the real GPU traces in ../shared/traces, running the real `gpuwatch` CLI, a sink that keeps
what samplers emit, and a run's spans as rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gpuwatch.records import Sample, SpanColumns

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces"
HTA_TRACES = TRACES / "hta"

# Every shared trace, by a short name (its folder), with what it is there to exercise.
SHARED_TRACES: dict[str, str] = {
    "trace_filter": "trace_filter",  # 2 ranks, NCCL, no flows
    "nccl_parser_config": "nccl_parser_config/nccl_data.json.gz",  # float sub-µs ts, full NCCL args
    "trace_diff_control": "trace_diff_control/control.json.gz",  # 109k events, DataLoader, rank 3 of 8
    "critical_path_alexnet": "critical_path_alexnet",  # no ProfilerStep markers, cuda_sync events
    "amd_trace": "amd_trace",  # ROCm (hipLaunchKernel), no distributedInfo
    "cpu_only": "cpu_only",  # gloo, no device events, 30 events
    "trace_file_list": "trace_file_list/inference_rank_1.json.gz",  # old capitalized categories
}


def shared_trace_path(name: str) -> Path:
    """Path of a shared trace (file or folder); skips the test when ../shared/traces is absent."""
    if not HTA_TRACES.is_dir():
        pytest.skip(f"real traces not found: {HTA_TRACES} (they live in the shared/ folder beside the repo)")
    path = HTA_TRACES / SHARED_TRACES[name]
    if not path.exists():
        pytest.skip(f"shared trace missing: {path}")
    return path


def trace_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.json*")) if path.is_dir() else [path]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GPUWATCH_DEBUG", None)  # tests check the user-facing one-line errors
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "120"
    return env


def run_cli(*args: str | os.PathLike[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the real command line (`python -m gpuwatch ...`) in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "gpuwatch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )


def run_program(
    args: Sequence[str | os.PathLike[str]], *, cwd: str | os.PathLike[str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """A program (`python -c CODE`, a planted trainer, torchrun ...) run to its end in a fresh process with the
    command line's environment, its output captured."""
    return subprocess.run(
        [*map(str, args)], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def run_dist_api_program(base: Path) -> tuple[Path, Path]:
    """tests/support/dist_api_program.py as a real 2-rank gloo job under torchrun, `gpuwatch.watch` in each
    rank: (the run directory, the folder of what the ranks report), both made in `base`."""
    run_dir, out_dir = base / "run", base / "out"
    out_dir.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        str(ROOT / "tests" / "support" / "dist_api_program.py"), str(run_dir), str(out_dir),
    ]  # fmt: skip
    proc = run_program(cmd, cwd=base, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, out_dir


def summary_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """`gpuwatch summary --json RUN_DIR` through the real command line; fails the test if the command fails."""
    proc = run_cli("summary", run_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


class ListSink:
    """A RecordSink that keeps every sample and note, for assertions (samplers emit no spans)."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.notes: list[tuple[str, str, dict[str, Any]]] = []

    def emit_span(self, span: Any) -> None:
        raise AssertionError("samplers emit no spans")

    def emit_sample(self, sample: Sample) -> None:
        self.samples.append(sample)

    def note(self, key: str, message: str, **fields: Any) -> None:
        self.notes.append((key, message, fields))

    def get(self, t_ns: int, metric: str, device: int, pid: int = 0) -> list[float | None]:
        """Values of `metric` at `t_ns` for one device (and pid; 0 for device-wide metrics)."""
        return [
            s.value
            for s in self.samples
            if (s.t_ns, s.metric, s.device_index, s.pid) == (t_ns, metric, device, pid)
        ]

    def at(self, t_ns: int, metric: str, pid: int | None = None) -> list[Sample]:
        return [s for s in self.samples if s.t_ns == t_ns and s.metric == metric and pid in (None, s.pid)]

    def one(self, t_ns: int, metric: str, pid: int | None = None) -> float | None:
        found = self.at(t_ns, metric, pid)
        assert len(found) == 1, (metric, pid, found)
        return found[0].value


def span_rows(cols: SpanColumns) -> list[dict[str, Any]]:
    """Spans as dicts (attrs parsed, `{}` when none), by start."""
    rows = []
    for i in range(len(cols)):
        raw = cols.attrs[i]
        rows.append(
            {
                "kind": cols.kind[i],
                "name": cols.name[i],
                "category": cols.category[i],
                "tid": int(cols.tid[i]),
                "step": int(cols.step[i]),
                "bytes": int(cols.bytes[i]),
                "seq": int(cols.seq[i]),
                "start_ns": int(cols.start_ns[i]),
                "end_ns": int(cols.end_ns[i]),
                "attrs": json.loads(raw) if isinstance(raw, str) and raw else {},
            }
        )
    return sorted(rows, key=lambda r: r["start_ns"])


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Import a shared trace once per session (in-process, the same code the CLI runs); returns its run."""
    from gpuwatch.capture.trace_import import import_to_run

    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            src = shared_trace_path(name)
            out = tmp_path_factory.mktemp(f"run_{name}") / "run"
            import_to_run([str(src)], out)
            cache[name] = out
        return cache[name]

    return get


# ---- the suite's own hygiene: no test may leave processes behind or change pytest's CPU priority ----------
# Orphans (a torchrun killed before its ranks, a daemon a child started) are re-parented to pytest rather than
# to init, so they can be found, killed and reaped after their module: one leaked job otherwise burns the
# shared cores for the rest of the suite and turns every later timing-sensitive test into a flake.
_PR_SET_CHILD_SUBREAPER = 36
if sys.platform == "linux":
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _children() -> dict[int, str]:
    """pid -> command of every live (non-zombie) child of this process, read from /proc."""
    me, kids = os.getpid(), {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return kids
    for entry in entries:
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) != me or fields[0] == "Z":
                continue
            kids[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
        except (OSError, IndexError, ValueError):
            continue
    return kids


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_processes() -> Any:
    before = set(_children())
    yield
    leaked = {pid: cmd for pid, cmd in _children().items() if pid not in before}
    for pid in leaked:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            pass
    if leaked:
        import warnings

        warnings.warn(
            f"the module left processes running (killed now): {sorted(leaked.values())}", stacklevel=1
        )


def _cpu_priority() -> tuple[int, int]:
    return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)


@pytest.fixture(autouse=True)
def _cpu_priority_unchanged() -> Any:
    """pytest's thread keeps its CPU priority: a test (or the API it calls) that lowers it would run every
    later test, and every process they start, at SCHED_IDLE."""
    before = _cpu_priority()
    yield
    after = _cpu_priority()
    if after != before:
        try:  # the rest of the suite must not pay for it (root may raise it back)
            os.sched_setscheduler(0, before[0], os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, 0, before[1])
        except OSError:
            pass
        pytest.fail(f"the test changed pytest's CPU priority (policy, nice) from {before} to {after}")
