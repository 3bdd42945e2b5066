"""The checks of `gpu_proof.py`: each one plans the commands it runs, runs them, and asserts on the figures.

A check is a `plan(ctx) -> Plan` (every reference trainer, `gpuwatch` and child-program command line it
will run, so the dry run can parse each with the real argument parsers) and a `run(ctx, plan, out)` that
runs them through `Ctx` (subprocesses with timeouts, killed as a group) and reports one `Line` per
assertion through `Out`. Every figure also goes into `out.figures`, which becomes the JSON file.

Rehearsal (`--cpu`): every check runs on the CPU at small sizes; a line then only says whether its figure
was produced (RAN) or not (FAIL), and lines that only a GPU can produce say N/A.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = Path(__file__).resolve().with_name("gpu_proof_programs.py")
PID = "{pid}"
"""Stands for the target's process id in a planned `gpuwatch attach` command line."""

WATCH_MODULES = (
    "gpuwatch.capture.watch",
    "collectors.hooks.device_timer",
    "collectors.hooks.device_copy_hooks",
)
SUMMARY_MODULES = ("duckdb", "msgspec", "numpy", "gpuwatch.attribution.summary", "gpuwatch.store.run_reader")
TRAINER_MODULES = ("PIL", "reference_trainer.train", "reference_trainer.launch")


class CheckFailed(Exception):
    """A step of a check could not produce its figures; the message is one line."""


@dataclass(frozen=True, slots=True)
class Line:
    check: str
    name: str
    status: str
    """PASS, FAIL, SKIP (a documented reason, e.g. HTA absent), RAN or N/A (rehearsal on the CPU)."""
    figure: str
    expected: str

    def text(self) -> str:
        return f"{self.status:<4}  {self.name:<30} {self.figure}   [expected: {self.expected}]"


@dataclass(slots=True)
class Plan:
    """What a check will run; the dry run parses every command line with the real parsers."""

    trainer: dict[str, list[str]] = field(default_factory=dict)
    """role -> `python -m reference_trainer` arguments."""
    cli: dict[str, list[str]] = field(default_factory=dict)
    """role -> `gpuwatch` arguments (`{pid}` stands for a process id known only when it runs)."""
    programs: dict[str, list[str]] = field(default_factory=dict)
    """role -> `gpu_proof_programs.py` arguments (kind first; `--out` and `--device` are added)."""
    pyspy: bool = False


@dataclass(slots=True)
class Proc:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"


class Ctx:
    """Where a check runs: the device, the work folder, the clock, and every child process (for the
    watchdog, which kills their process groups)."""

    def __init__(
        self,
        *,
        device: str,
        work: Path,
        artifacts: Path,
        env: dict[str, str],
        deadline: float,
        pyspy: str | None,
        rehearsal: bool = False,
    ) -> None:
        self.device = device
        self.rehearsal = rehearsal
        self.work = work
        self.data_root = work / "data"
        self.artifacts = artifacts
        self.env = env
        self.deadline = deadline
        self.pyspy = pyspy
        self.missing: dict[str, str] = {}
        """Modules that do not import here (found by the env check), with the reason."""
        self.optional: dict[str, bool] = {}
        """Optional modules (HTA, GPU JPEG decoders) and whether they import (found by the env check)."""
        self.procs: set[subprocess.Popen[str]] = set()
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._n = 0

    # ---- processes ---------------------------------------------------------------------------------
    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def start(self, argv: list[str]) -> subprocess.Popen[str]:
        """Start a child in its own process group (stdout piped, stderr to a log file)."""
        self._n += 1
        err = open(self.work / f"child-{self._n:03d}.stderr", "w+")  # noqa: SIM115 (closed in wait)
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )
        proc.stderr_file = err  # type: ignore[attr-defined]
        with self._lock:
            self.procs.add(proc)
        return proc

    def kill(self, proc: subprocess.Popen[str]) -> None:
        """SIGKILL a child, its process group and every descendant: torchrun's ranks and attach's py-spy
        run in sessions of their own, and would otherwise keep the pipes open and the GPU busy."""
        for pid in [proc.pid, *descendants(proc.pid)]:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def wait(self, proc: subprocess.Popen[str], argv: list[str], timeout_s: float, t0: float) -> Proc:
        """Wait for a started child (killing its group at the timeout or the global deadline)."""
        timeout = max(1.0, min(timeout_s, self.time_left() - 3))
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill(proc)
            try:
                out, _ = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:  # something unkillable holds the pipe: stop reading it
                out = ""
                if proc.stdout is not None:
                    proc.stdout.close()
                proc.wait(timeout=15)
        finally:
            with self._lock:
                self.procs.discard(proc)
        err_file = proc.stderr_file  # type: ignore[attr-defined]
        err_file.seek(0)
        err = err_file.read()
        err_file.close()
        result = Proc(argv, proc.returncode, out or "", err, time.monotonic() - t0)
        self.log.append(
            {
                "argv": [str(a) for a in argv],
                "rc": result.rc,
                "seconds": round(result.seconds, 2),
                "stderr_tail": err[-3000:],
            }
        )
        if timed_out:
            raise CheckFailed(f"{short(argv)} timed out after {timeout:.0f} s: {last_line(err)}")
        return result

    def run(self, argv: list[str], *, timeout_s: float, check: bool = True) -> Proc:
        t0 = time.monotonic()
        result = self.wait(self.start(argv), argv, timeout_s, t0)
        if check and result.rc != 0:
            raise CheckFailed(f"{short(argv)} exited {result.rc}: {last_line(result.stderr)}")
        return result

    # ---- the three kinds of command ------------------------------------------------------------------
    def trainer_argv(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "reference_trainer", *args]

    def gpuwatch_argv(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "gpuwatch", *args]

    def program_argv(self, args: list[str], out: Path) -> list[str]:
        return [sys.executable, str(PROGRAMS), *args, "--out", str(out), "--device", self.device]

    def program(self, args: list[str], *, timeout_s: float) -> dict[str, Any]:
        """Run a child program; its figures."""
        self._n += 1
        out = self.work / f"{args[0]}-{self._n:03d}.json"
        self.run(self.program_argv(args, out), timeout_s=timeout_s)
        return dict(json.loads(out.read_text()))

    def summary(self, run_dir: Path | str, *, timeout_s: float = 120) -> Any:
        """The typed Summary of a run, through `gpuwatch summary --json` as a user gets it."""
        from gpuwatch.attribution.summary import Summary

        proc = self.run(self.gpuwatch_argv(["summary", "--json", str(run_dir)]), timeout_s=timeout_s)
        return Summary.from_json(json.loads(proc.stdout))


def descendants(root: int) -> list[int]:
    """Every live descendant of a process, from /proc (read before killing: orphans lose their parent)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def short(argv: list[str]) -> str:
    text = " ".join(str(a) for a in argv[1:6] if a)
    return text.replace(str(ROOT) + "/", "")


class Out:
    """Lines of one check, printed as they come, and its figures."""

    def __init__(self, check: str, rehearsal: bool, emit: Callable[[Line], None]) -> None:
        self.check = check
        self.rehearsal = rehearsal
        self.emit = emit
        self.lines: list[Line] = []
        self.figures: dict[str, Any] = {}

    def line(self, name: str, ok: bool | None, figure: str, expected: str, *, gpu_only: bool = False) -> bool:
        """One assertion; `ok` None: the figure could not be measured."""
        if self.rehearsal:
            status = "N/A" if gpu_only else ("FAIL" if ok is None else "RAN")
        else:
            status = "PASS" if ok else "FAIL"
        self.add(Line(self.check, f"{self.check}.{name}", status, figure, expected))
        return bool(ok)

    def skip(self, name: str, figure: str, reason: str) -> None:
        self.add(Line(self.check, f"{self.check}.{name}", "SKIP", figure, reason))

    def fail(self, name: str, figure: str, expected: str) -> None:
        self.add(Line(self.check, f"{self.check}.{name}", "FAIL", figure, expected))

    def add(self, line: Line) -> None:
        self.lines.append(line)
        self.emit(line)


# ---------------------------------------------------------------------------------------------- helpers


def near(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol


def hook_errors(summary: Any) -> list[str]:
    return [n for n in summary.notes if "hook failed" in n]


def steady_share(rank: Any, category: str, indices: list[int]) -> tuple[float, float]:
    """(percent of wall time in `category`, wall ms) over the per-step rows `indices`."""
    ps = rank.per_step
    wall = sum(ps.wall_ms[i] for i in indices)
    cat = ps.category(category)
    return 100.0 * sum(cat[i] for i in indices) / wall, wall


def all_steps(rank: Any) -> int:
    """Steps of a rank, warm-up steps (left out of its budget) included."""
    w = rank.warmup
    return int(rank.steps) + (w.steps if w is not None and not w.included else 0)


def evidence_names(rank: Any, category: str) -> list[str]:
    return [e.name for e in rank.evidence if e.category == category]


def median_ms(rank: Any) -> float:
    return float(rank.step_time_ms.median)


def on_gpu(ctx: Ctx, gpu: Any, cpu: Any) -> Any:
    return gpu if ctx.device == "cuda" else cpu


def trainer_common(ctx: Ctx, steps: int) -> list[str]:
    return ["--device", ctx.device, "--steps", str(steps), "--data-dir", str(ctx.data_root)]


# ---------------------------------------------------------------------------------------------- env, data


def plan_env(ctx: Ctx) -> Plan:
    return Plan(programs={"env": ["env"]})


def run_env(ctx: Ctx, plan: Plan, out: Out) -> None:
    from gpu_proof_programs import NEEDED_MODULES

    doc = ctx.program(plan.programs["env"], timeout_s=120)
    out.figures.update(doc)
    ctx.missing = {m: why for m, why in doc["modules"].items() if why is not None and m in NEEDED_MODULES}
    ctx.optional = {m: why is None for m, why in doc["modules"].items() if m not in NEEDED_MODULES}
    cuda = bool(doc.get("cuda_available"))
    out.line(
        "cuda",
        cuda if ctx.device == "cuda" else None,
        f"{doc.get('device_name', 'no CUDA device')}, torch {doc.get('torch')} (CUDA {doc.get('torch_cuda')}), "
        f"driver {doc.get('driver')}, Python {doc.get('python')}",
        "a CUDA device torch can use",
        gpu_only=True,
    )
    missing = ", ".join(f"{m} ({why})" for m, why in ctx.missing.items())
    optional = [m for m, why in doc["modules"].items() if why is None and m not in NEEDED_MODULES]
    out.line(
        "modules",
        not ctx.missing,
        (f"missing: {missing}" if missing else f"all {len(NEEDED_MODULES)} import")
        + f"; optional present: {', '.join(optional) or 'none'}",
        "every module a check needs imports (carry missing ones as wheels: see gpu_proof.py)",
    )
    out.line("pyspy", bool(doc.get("pyspy")), str(doc.get("pyspy")), "a py-spy executable (wheel py-spy)")


def plan_data(ctx: Ctx) -> Plan:
    return Plan(programs={"data": ["data", "--data-dir", str(ctx.data_root)]})


def run_data(ctx: Ctx, plan: Plan, out: Out) -> None:
    doc = ctx.program(plan.programs["data"], timeout_s=300)
    out.figures.update(doc)
    out.line("dataset", True, f"{doc['seconds']:.1f} s ({doc['path']})", "the trainer's JPEG data, made here")


# ---------------------------------------------------------------------------------------------- watch


def plan_watch(ctx: Ctx) -> Plan:
    steps = on_gpu(ctx, 40, 12)
    run_dir = ctx.work / "runs" / "planted"
    return Plan(programs={"planted": ["planted", "--run-dir", str(run_dir), "--steps", str(steps)]})


def run_watch(ctx: Ctx, plan: Plan, out: Out) -> None:
    doc = ctx.program(plan.programs["planted"], timeout_s=180)
    out.figures["program"] = doc
    s = ctx.summary(doc["run_dir"])
    rank = s.rank(0)
    truth = doc["steps"]
    # steps 3..n-2 by id: past the loop's warm-up (and any gpuwatch left out as warm-up), before the close
    first, last = 3, len(truth) - 1
    ids = [] if rank.per_step is None else list(rank.per_step.step)
    rows = [i for i, sid in enumerate(ids) if first <= sid < last]
    out.figures.update(gpuwatch_step_ids=ids, program_steps=len(truth))
    if len(rows) < (last - first) // 2:
        raise CheckFailed(f"gpuwatch has steps {ids[:3]}..{ids[-3:]}, the program ran {len(truth)}")
    chosen = [truth[ids[i]] for i in rows]
    tw = sum(t["wall_s"] for t in chosen) * 1e3
    shares = {c: steady_share(rank, c, rows)[0] for c in ("compute", "sync", "memcpy", "data_loading")}
    gw_wall = steady_share(rank, "compute", rows)[1]
    planted = {
        "compute": 100 * sum(t["compute_dev_ms"] for t in chosen) / tw,
        "sync": 100 * sum(t["sync_dev_ms"] for t in chosen) / tw,
        "memcpy": 100 * sum(t["copy_s"] for t in chosen) * 1e3 / tw,
        "data_loading": 100 * sum(t["data_s"] for t in chosen) * 1e3 / tw,
    }
    out.figures.update(
        gpuwatch_pct=shares, truth_pct=planted, gpuwatch_wall_ms=gw_wall, truth_wall_ms=tw, mode=rank.mode,
        budget_pct=rank.budget_pct.to_json(), notes=list(s.notes),
    )  # fmt: skip
    out.line("device_mode", rank.mode == "device", f"mode {rank.mode}", "device (CUDA-event spans)")
    out.line(
        "step_wall",
        near(gw_wall, tw, 0.02 * tw),
        f"gpuwatch {gw_wall:.1f} ms vs the loop's own {tw:.1f} ms over {len(rows)} steps",
        "within 2%",
    )
    gc, tc = shares["compute"], planted["compute"]
    out.line(
        "compute_vs_cuda_events",
        near(gc, tc, 2.0),
        f"gpuwatch {gc:.2f}% vs CUDA events {tc:.2f}% (|diff| {abs(gc - tc):.2f} pp)",
        "within 2 pp",
    )
    for cat, label, ev in (("sync", "host_sync", "Tensor.item"), ("memcpy", "pageable_h2d", "h2d")):
        g, t = shares[cat], planted[cat]
        named = any(ev in n for n in evidence_names(rank, cat))
        out.line(
            label,
            near(g, t, 3.0) and t >= 3.0 and named,
            f"{cat} {g:.2f}% vs planted {t:.2f}%; evidence names {ev}: {named}",
            f"planted share (>= 3%) within 3 pp, in {cat}, named",
            gpu_only=True,
        )
    g, t = shares["data_loading"], planted["data_loading"]
    out.line("data_wait", near(g, t, 3.0), f"data_loading {g:.2f}% vs planted {t:.2f}%", "within 3 pp")
    errors = hook_errors(s)
    out.line("no_hook_errors", not errors, "; ".join(errors) or "none", "no hook failed")


# ---------------------------------------------------------------------------------------------- profile


SHARED_GPU_TRACE = ROOT.parent / "shared" / "traces" / "hta" / "trace_filter" / "sampled_rank-0.json.gz"
"""A real GPU trace (beside the repository on development machines): the rehearsal's CPU-only window has
no device events for HTA, so there the import and HTA comparison run on this one instead."""


def plan_profile(ctx: Ctx) -> Plan:
    run_dir = ctx.work / "runs" / "profiled"
    window = run_dir / "profiles" / "rank0000-steps-3-8.json.gz"
    trace = SHARED_GPU_TRACE if ctx.rehearsal and SHARED_GPU_TRACE.exists() else window
    imported = ctx.work / "runs" / "profile-imported"
    return Plan(
        programs={
            "planted": ["planted", "--run-dir", str(run_dir), "--steps", "12", "--profile", "3:8"],
            "inspect": ["inspect", "--run-dir", str(run_dir)],
            "hta": ["hta", "--trace-dir", str(ctx.work / "hta-trace")],
        },
        cli={"import": ["import", str(trace), "--out", str(imported)]},
    )


def run_profile(ctx: Ctx, plan: Plan, out: Out) -> None:
    run_dir = Path(plan.programs["planted"][2])
    ctx.program(plan.programs["planted"], timeout_s=180)
    window = run_dir / "profiles" / "rank0000-steps-3-8.json.gz"
    if not window.exists():
        raise CheckFailed(f"profile_steps=(3, 8) exported no trace at {window}")
    out.figures["trace_mb"] = window.stat().st_size / 1e6
    saved = ctx.artifacts / "gpu_proof-profile-trace.json.gz"
    shutil.copyfile(window, saved)
    kinds = ctx.program(plan.programs["inspect"], timeout_s=120)["span_kinds"]
    out.figures["watched_run_span_kinds"] = kinds
    out.line(
        "window_in_run",
        kinds.get("runtime", 0) > 0 and kinds.get("cpu_op", 0) > 0,
        f"{kinds.get('runtime', 0)} runtime calls, {kinds.get('cpu_op', 0)} CPU ops imported into the watched run",
        "the window's events in the run",
        gpu_only=True,
    )
    trace = Path(plan.cli["import"][1])
    out.figures["compared_trace"] = str(trace)
    ctx.run(ctx.gpuwatch_argv(plan.cli["import"]), timeout_s=180)
    rank = ctx.summary(plan.cli["import"][3]).rank(0)
    ours = {"idle": rank.temporal_pct.idle, "compute": rank.temporal_pct.compute}
    ours["non_compute"] = rank.temporal_pct.non_compute
    out.figures.update(ours_temporal=ours, ours_basis=rank.temporal_basis, saved_trace=str(saved))
    out.line(
        "imported_view",
        rank.temporal_basis == "device" and ours["compute"] > 0,
        f"basis {rank.temporal_basis}: idle {ours['idle']:.2f}%, compute {ours['compute']:.2f}%, "
        f"non-compute {ours['non_compute']:.2f}%",
        "a device-based temporal view with compute > 0",
    )
    has_hta = (
        ctx.optional["hta.trace_analysis"] if "hta.trace_analysis" in ctx.optional else hta_importable(ctx)
    )
    if not has_hta:
        out.skip(
            "hta_equal",
            f"our figures in the JSON, the trace in {saved.name}",
            "HTA not importable here (wheels traceinsight + plotly): compare on a machine that has it",
        )
        return
    hta_dir = Path(plan.programs["hta"][2])
    hta_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trace, hta_dir / trace.name)  # HTA reads a folder of traces
    theirs = ctx.program(plan.programs["hta"], timeout_s=180)["temporal"]
    hta0 = theirs.get("0") or next(iter(theirs.values()))
    out.figures["hta_temporal"] = hta0
    worst = max(abs(ours[k] - hta0[k]) for k in ours)
    out.line(
        "hta_equal",
        worst <= 0.05,
        f"HTA idle {hta0['idle']:.2f}%, compute {hta0['compute']:.2f}%, non-compute "
        f"{hta0['non_compute']:.2f}% (largest |diff| {worst:.3f} pp)",
        "each within 0.05 pp of ours",
    )


def hta_importable(ctx: Ctx) -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import hta.trace_analysis"], env=ctx.env, capture_output=True, timeout=120
    )
    return probe.returncode == 0


# ---------------------------------------------------------------------------------------------- attach, NVML


def plan_attach(ctx: Ctx) -> Plan:
    watched, attached = ctx.work / "runs" / "attach-target", ctx.work / "runs" / "attached"
    seconds = on_gpu(ctx, 16, 14)
    cli = ["attach", PID, "--duration", "8", "--out", str(attached), "--json", "--quiet"]
    return Plan(
        programs={
            "target": ["attach-target", "--run-dir", str(watched), "--seconds", str(seconds)],
            "inspect_watched": ["inspect", "--run-dir", str(watched)],
            "inspect_attached": ["inspect", "--run-dir", str(attached)],
        },
        cli={"attach": cli},
        pyspy=True,
    )


def run_attach(ctx: Ctx, plan: Plan, out: Out) -> None:
    if not ctx.pyspy:
        raise CheckFailed("no py-spy executable (wheel py-spy)")
    target_json = ctx.work / "attach-target.json"
    argv = ctx.program_argv(plan.programs["target"], target_json)
    t0 = time.monotonic()
    target = ctx.start(argv)
    try:
        ready = read_ready(target, timeout_s=min(150.0, ctx.time_left() - 5))
        cli = [a.replace(PID, str(ready)) for a in plan.cli["attach"]] + ["--py-spy", ctx.pyspy]
        attached = ctx.run(ctx.gpuwatch_argv(cli), timeout_s=90)
    except BaseException:
        ctx.kill(target)
        ctx.wait(target, argv, 10, t0)
        raise
    ctx.wait(target, argv, 90, t0)
    if target.returncode != 0:
        raise CheckFailed(
            f"the attach target exited {target.returncode}: {last_line(ctx.log[-1]['stderr_tail'])}"
        )
    from gpuwatch.attribution.summary import Summary

    doc = json.loads(attached.stdout)
    gpu = doc["attach"].get("gpu", {})
    a_rank = Summary.from_json(doc["summary"]).rank(0)
    w_sum = ctx.summary(plan.programs["target"][2])
    w_rank = w_sum.rank(0)
    a_kinds = ctx.program(plan.programs["inspect_attached"], timeout_s=120)["span_kinds"]
    watched = ctx.program(plan.programs["inspect_watched"], timeout_s=120)
    out.figures.update(
        attach_gpu=gpu, attach_budget=a_rank.budget_pct.to_json(), watch_budget=w_rank.budget_pct.to_json(),
        attach_mode=a_rank.mode, attach_span_kinds=a_kinds, watched_samples=watched["samples"],
        target=json.loads(target_json.read_text()),
    )  # fmt: skip
    busy = a_kinds.get("kernel", 0)
    out.line(
        "nvml_busy",
        bool(gpu.get("nvml")) and bool(gpu.get("devices")) and busy > 0 and a_rank.mode == "device",
        f"NVML {gpu.get('nvml')}, devices {gpu.get('devices')}, {busy} busy spans, mode {a_rank.mode}",
        "NVML read, busy spans written, the run analysed in device mode",
        gpu_only=True,
    )
    ac, wc = a_rank.budget_pct.get("compute"), w_rank.budget_pct.get("compute")
    out.line(
        "compute_vs_watch",
        near(ac, wc, 10.0),
        f"attach {ac:.1f}% vs watch {wc:.1f}% (|diff| {abs(ac - wc):.1f} pp)",
        "within 10 pp",
    )
    nvml_lines(out, watched["samples"])


def read_ready(proc: subprocess.Popen[str], timeout_s: float) -> int:
    import select

    assert proc.stdout is not None
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.1, end - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("READY "):
            return int(line.split()[1])
    raise CheckFailed(f"the attach target never said READY within {timeout_s:.0f} s")


def nvml_lines(out: Out, samples: dict[str, Any]) -> None:
    """NVML samples of a watched GPU run: present, non-null, plausible."""

    def got(metric: str) -> dict[str, Any]:
        return dict(samples.get(metric) or {"count": 0, "non_null": 0, "min": None, "max": None})

    def seen(s: dict[str, Any]) -> str:
        return f"{s['non_null']}/{s['count']} non-null"

    u, m, t, p = got("gpu_util_pct"), got("mem_used_bytes"), got("mem_total_bytes"), got("power_mw")
    out.line(
        "nvml_util",
        u["count"] >= 5
        and u["non_null"] == u["count"]
        and 0 <= (u["min"] or 0)
        and 10 <= (u["max"] or 0) <= 100,
        f"gpu_util_pct {seen(u)}, {u['min']}..{u['max']}%",
        ">= 5 samples, none null, within 0..100, peak >= 10% (the loop keeps the device about half busy)",
        gpu_only=True,
    )
    gib = 2**30
    used_max = (m["max"] or 0) / gib
    total = (t["max"] or 0) / gib
    out.line(
        "nvml_memory",
        m["count"] >= 5 and m["non_null"] == m["count"] and 1.0 <= used_max <= max(total, 1.0),
        f"mem_used_bytes {seen(m)}, peak {used_max:.1f} GiB of {total:.0f} GiB",
        "none null, peak >= 1 GiB (the loop holds several) and <= installed",
        gpu_only=True,
    )
    lo, hi = (p["min"] or 0) / 1e3, (p["max"] or 0) / 1e3
    out.line(
        "nvml_power",
        p["count"] >= 5 and p["non_null"] == p["count"] and 20 <= lo and hi <= 1200 and hi > lo,
        f"power_mw {seen(p)}, {lo:.0f}..{hi:.0f} W",
        "none null, within 20..1200 W, varying with load",
        gpu_only=True,
    )


# ---------------------------------------------------------------------------------------------- overhead


def plan_overhead(ctx: Ctx) -> Plan:
    return Plan(programs={"overhead": ["overhead", "--rounds", str(on_gpu(ctx, 6, 3))]})


def run_overhead(ctx: Ctx, plan: Plan, out: Out) -> None:
    doc = ctx.program(plan.programs["overhead"], timeout_s=180)
    med = doc["median_step_s"]
    ratios = {
        m: statistics.median(x / b for x, b in zip(med[m], med["bare"], strict=True))
        for m in ("watch", "profiler")
    }
    bare_ms = 1e3 * statistics.median(med["bare"])
    out.figures.update(doc, ratio_to_bare=ratios, bare_step_ms=bare_ms)
    w, p = 100 * (ratios["watch"] - 1), 100 * (ratios["profiler"] - 1)
    out.line(
        "watch",
        w < 1.0,
        f"{w:+.2f}% of a {bare_ms:.1f} ms step (median of {doc['rounds']} rounds' watched/bare)",
        "< 1% (DESIGN.md: default mode)",
    )
    out.line(
        "profiler",
        True,
        f"{p:+.2f}% (torch.profiler CPU+CUDA, recording only); gpuwatch/profiler cost ratio "
        f"{(w / p) if p > 0 else float('nan'):.2f}",
        "the peer's figure, reported",
    )


# ---------------------------------------------------------------------------------------------- trainer


def plan_trainer1(ctx: Ctx) -> Plan:
    steps = on_gpu(ctx, 12, 4)
    runs = ctx.work / "runs"
    common = trainer_common(ctx, steps)
    return Plan(
        trainer={
            "naive": ["--preset", "naive", *common, "--run-dir", str(runs / "t1-naive")],
            "fixed": ["--preset", "fixed", *common, "--run-dir", str(runs / "t1-fixed")],
            # only when the GPU decode breaks the fixed run: the other figures are still measured
            "fixed_cpu_decode": ["--preset", "fixed", "--no-gpu-decode", *common, "--run-dir", str(runs / "t1-fixed-cpu")],
        }
    )  # fmt: skip


def run_dir_of(argv: list[str]) -> Path:
    return Path(argv[argv.index("--run-dir") + 1])


def run_trainer1(ctx: Ctx, plan: Plan, out: Out) -> None:
    ctx.run(ctx.trainer_argv(plan.trainer["naive"]), timeout_s=200)
    fixed_key, gpu_decode_error = "fixed", None
    try:
        fixed = ctx.run(ctx.trainer_argv(plan.trainer["fixed"]), timeout_s=200)
    except CheckFailed as exc:  # most likely the GPU decode: measure the rest with the CPU decode
        fixed_key, gpu_decode_error = "fixed_cpu_decode", str(exc)
        fixed = ctx.run(ctx.trainer_argv(plan.trainer[fixed_key]), timeout_s=200)
    sums = {k: ctx.summary(run_dir_of(plan.trainer[k])) for k in ("naive", fixed_key)}
    steps = int(plan.trainer["naive"][plan.trainer["naive"].index("--steps") + 1])
    n, f = sums["naive"].rank(0), sums[fixed_key].rank(0)
    out.figures.update(
        {k: {"budget_pct": s.rank(0).budget_pct.to_json(), "median_step_ms": median_ms(s.rank(0)),
             "mode": s.rank(0).mode, "steps": all_steps(s.rank(0)), "notes": list(s.notes)} for k, s in sums.items()}
    )  # fmt: skip
    modes = {k: s.rank(0).mode for k, s in sums.items()}
    out.line(
        "ran",
        all(all_steps(s.rank(0)) == steps for s in sums.values()) and set(modes.values()) == {"device"},
        f"steps {all_steps(n)}/{all_steps(f)} of {steps}, modes {modes}",
        f"{steps} steps each, device mode (bf16 autocast on the GPU)",
    )
    speedup = median_ms(n) / median_ms(f)
    out.line(
        "speedup",
        speedup >= 2.0,
        f"{speedup:.2f}x (median step {median_ms(n):.0f} -> {median_ms(f):.0f} ms, {fixed_key})",
        ">= 2x, fixed over naive",
    )
    nc, fc = n.budget_pct.get("compute"), f.budget_pct.get("compute")
    out.line("compute_share", fc > nc, f"naive {nc:.1f}% -> fixed {fc:.1f}%", "fixed above naive")
    idle = n.budget_pct.get("data_loading") + n.budget_pct.get("cpu_preprocessing")
    out.line(
        "naive_input_bound", idle >= 50, f"data_loading + cpu_preprocessing {idle:.1f}%", ">= 50% in naive"
    )
    expected = "fixed decodes on the GPU (torchvision/nvImageCodec), cpu_preprocessing < 5%"
    if gpu_decode_error:
        out.fail("gpu_decode", f"the fixed preset failed: {gpu_decode_error}", expected)
    else:
        said = [ln for ln in fixed.stderr.splitlines() if "[trainer]" in ln and ", decode " in ln]
        where = said[0].split(", decode ")[1].split(";")[0] if said else "no trainer line"
        pre = f.budget_pct.get("cpu_preprocessing")
        out.line(
            "gpu_decode",
            where.startswith("gpu:") and pre < 5.0,
            f"decode {where}; fixed cpu_preprocessing {pre:.1f}%",
            expected,
            gpu_only=True,
        )
    errors = [e for s in sums.values() for e in hook_errors(s)]
    out.line("no_hook_errors", not errors, "; ".join(errors) or "none", "no hook failed")


def plan_decode(ctx: Ctx) -> Plan:
    return Plan(programs={"decode": ["decode", "--data-dir", str(ctx.data_root)]})


def run_decode(ctx: Ctx, plan: Plan, out: Out) -> None:
    doc = ctx.program(plan.programs["decode"], timeout_s=120)
    out.figures.update(doc)
    if doc.get("decoder") is None:
        out.line(
            "matches_cpu",
            None,
            "no GPU JPEG decoder imports (torchvision, nvImageCodec or TorchCodec)",
            "one present",
            gpu_only=True,
        )
        return
    diff = doc["mean_abs_diff"]
    out.line(
        "matches_cpu",
        diff < 0.12 and doc["shape_gpu"] == doc["shape_cpu"] and doc["device"].startswith("cuda"),
        f"{doc['decoder']} on {doc['device']}: mean |gpu - cpu| {diff:.4f}, shape {doc['shape_gpu']}",
        "< 0.12 (same crop/flip/jitter, another resampler), same shape",
        gpu_only=True,
    )


def plan_fsdp2(ctx: Ctx) -> Plan:
    runs = ctx.work / "runs"
    common = ["--preset", "fixed", "--no-gpu-decode", "--grad-sync", "fsdp2", "--checkpoint", "async"]
    common += ["--checkpoint-every", "3", "--log-every", "1", *trainer_common(ctx, 6)]
    first = runs / "fsdp2"
    return Plan(
        trainer={
            "first": [*common, "--run-dir", str(first)],
            "resumed": [
                *common,
                "--run-dir",
                str(runs / "fsdp2-resumed"),
                "--resume",
                str(first / "trainer" / "checkpoints" / "step-000003"),
            ],
        }
    )


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "trainer" / "metrics-rank0.jsonl").read_text().splitlines():
        doc = json.loads(line)
        if doc.get("event") == "step" and doc.get("loss") is not None:
            out[int(doc["step"])] = float(doc["loss"])
    return out


def run_fsdp2(ctx: Ctx, plan: Plan, out: Out) -> None:
    first, resumed = run_dir_of(plan.trainer["first"]), run_dir_of(plan.trainer["resumed"])
    ctx.run(ctx.trainer_argv(plan.trainer["first"]), timeout_s=200)
    ckpts = sorted(p.name for p in (first / "trainer" / "checkpoints").glob("step-*"))
    ctx.run(ctx.trainer_argv(plan.trainer["resumed"]), timeout_s=200)
    s_first, s_res = ctx.summary(first), ctx.summary(resumed)
    r1, r2 = s_first.rank(0), s_res.rank(0)
    a, b = losses(first), losses(resumed)
    out.figures.update(
        checkpoints=ckpts, losses_first=a, losses_resumed=b, budget_pct=r1.budget_pct.to_json()
    )
    out.line(
        "trained",
        all_steps(r1) == 6 and all_steps(r2) == 3 and r1.mode == "device" and "step-000003" in ckpts,
        f"{all_steps(r1)} + {all_steps(r2)} resumed steps, mode {r1.mode}, checkpoints {ckpts}",
        "6 steps, DCP async_save checkpoints kept, 3 steps resumed from step-000003, device mode",
    )
    common = sorted(set(a) & set(b))
    rel = [abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in common]
    out.line(
        "resume_loss",
        bool(rel) and rel[0] <= 1e-4 and max(rel) <= 2e-2,
        f"steps {common}: relative |diff| {', '.join(f'{r:.1e}' for r in rel) or 'none'}",
        "first resumed step <= 1e-4 (same weights, same noise), later <= 2e-2",
    )
    named = [n for n in evidence_names(r1, "checkpoint_io") if "async_save" in n or "dcp" in n.lower()]
    out.line(
        "async_save_seen",
        bool(named) or r1.budget_pct.get("checkpoint_io") < 1.0,
        f"checkpoint_io {r1.budget_pct.get('checkpoint_io'):.1f}%, evidence {named[:2] or 'none'}",
        "the async saves named, or off the critical path (< 1%)",
    )


def plan_trainer2(ctx: Ctx) -> Plan:
    steps = on_gpu(ctx, 10, 4)
    runs = ctx.work / "runs"
    common = ["--nproc", "2", "--dist-backend", "gloo", *trainer_common(ctx, steps)]
    return Plan(
        trainer={
            "naive": ["--preset", "naive", *common, "--run-dir", str(runs / "t2-naive")],
            # workers decode, so the batches come pinned and are copied non_blocking
            "fixed": ["--preset", "fixed", "--no-gpu-decode", *common, "--run-dir", str(runs / "t2-fixed")],
        },
        programs={"inspect_fixed": ["inspect", "--run-dir", str(runs / "t2-fixed")],
                  "inspect_naive": ["inspect", "--run-dir", str(runs / "t2-naive")]},
    )  # fmt: skip


def run_trainer2(ctx: Ctx, plan: Plan, out: Out) -> None:
    for argv in plan.trainer.values():
        ctx.run(ctx.trainer_argv(argv), timeout_s=240)
    sums = {name: ctx.summary(run_dir_of(argv)) for name, argv in plan.trainer.items()}
    steps = int(plan.trainer["naive"][plan.trainer["naive"].index("--steps") + 1])
    n, f = sums["naive"], sums["fixed"]
    out.figures.update(
        {k: {"ranks": [{"budget_pct": r.budget_pct.to_json(), "median_step_ms": median_ms(r), "mode": r.mode,
                        "steps": all_steps(r)} for r in s.ranks],
             "straggler": None if s.straggler is None else s.straggler.rank} for k, s in sums.items()}
    )  # fmt: skip
    shape = {k: [(r.rank, all_steps(r), r.mode) for r in s.ranks] for k, s in sums.items()}
    out.line(
        "ran",
        all(
            [(r, st, m) for r, st, m in v] == [(0, steps, "device"), (1, steps, "device")]
            for v in shape.values()
        ),
        f"(rank, steps, mode): {shape}",
        f"2 ranks on one GPU over gloo, {steps} steps each, device mode",
    )
    out.line(
        "manager_named",
        n.straggler is not None and n.straggler.rank == 0,
        f"naive: ranks wait for rank {None if n.straggler is None else n.straggler.rank}",
        "rank 0 (the manager node)",
    )

    def mean(s: Any, cat: str) -> float:
        return statistics.mean(r.budget_pct.get(cat) for r in s.ranks)

    ns, fs = mean(n, "sync"), mean(f, "sync")
    out.line(
        "sync_share", fs < ns, f"sync naive {ns:.1f}% -> fixed {fs:.1f}% (mean of ranks)", "fixed below naive"
    )
    speedup = max(median_ms(r) for r in n.ranks) / max(median_ms(r) for r in f.ranks)
    out.line("speedup", speedup >= 1.5, f"{speedup:.2f}x", ">= 1.5x, fixed (DDP) over naive (manager node)")
    fixed_copies = ctx.program(plan.programs["inspect_fixed"], timeout_s=120)["memcpy"]
    naive_copies = ctx.program(plan.programs["inspect_naive"], timeout_s=120)["memcpy"]
    out.figures.update(memcpy_fixed=fixed_copies, memcpy_naive=naive_copies)
    out.line(
        "pinned_copies",
        fixed_copies["non_blocking"] >= steps
        and naive_copies["non_blocking"] == 0
        and naive_copies["blocking"] > 0,
        f"fixed {fixed_copies}, naive {naive_copies}",
        "fixed: non_blocking copies from pinned batches; naive: blocking ones only",
        gpu_only=True,
    )


# ---------------------------------------------------------------------------------------------- the list


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    title: str
    plan: Callable[[Ctx], Plan]
    run: Callable[[Ctx, Plan, Out], None]
    requires: tuple[str, ...]
    """Modules it imports (here or in its children): a missing one fails the check without running it."""


CHECKS: tuple[Check, ...] = (
    Check("env", "CUDA device and modules", plan_env, run_env, ()),
    Check("data", "reference trainer data set", plan_data, run_data, ("PIL", "reference_trainer.data")),
    Check(
        "watch",
        "watch with device timing: compute vs CUDA events, planted sync, pageable copy, data wait",
        plan_watch,
        run_watch,
        (*WATCH_MODULES, *SUMMARY_MODULES),
    ),
    Check(
        "profile",
        "profile_steps window imported; its temporal view against HTA's",
        plan_profile,
        run_profile,
        (*WATCH_MODULES, *SUMMARY_MODULES, "collectors.kineto.kineto_import"),
    ),
    Check(
        "attach",
        "gpuwatch attach to a GPU loop (NVML busy spans) against its own watch; NVML samples",
        plan_attach,
        run_attach,
        (
            *WATCH_MODULES,
            *SUMMARY_MODULES,
            "pynvml",
            "gpuwatch.capture.attach",
            "collectors.system.nvml_busy",
        ),
    ),
    Check(
        "overhead",
        "watch and torch.profiler overhead on a GPU loop",
        plan_overhead,
        run_overhead,
        WATCH_MODULES,
    ),
    Check(
        "trainer1",
        "reference trainer, one rank (NCCL): naive vs fixed, bf16, GPU decode",
        plan_trainer1,
        run_trainer1,
        (*TRAINER_MODULES, *SUMMARY_MODULES),
    ),
    Check("decode", "GPU JPEG decode against the CPU decode", plan_decode, run_decode, TRAINER_MODULES),
    Check(
        "fsdp2",
        "FSDP2 + DCP async_save on the GPU, resumed",
        plan_fsdp2,
        run_fsdp2,
        (*TRAINER_MODULES, *SUMMARY_MODULES, "torch.distributed.fsdp", "torch.distributed.checkpoint"),
    ),
    Check(
        "trainer2",
        "reference trainer, two ranks sharing the GPU over gloo: manager node vs DDP, pinned copies",
        plan_trainer2,
        run_trainer2,
        (*TRAINER_MODULES, *SUMMARY_MODULES),
    ),
)
