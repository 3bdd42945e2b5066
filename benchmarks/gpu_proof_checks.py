"""The checks of `gpu_proof.py` that exercise gpuwatch's own GPU paths (the trainer's are in
`gpu_proof_trainer_checks.py`), and the list of all checks in the order they run.

Each check is a `plan(ctx) -> Plan` (every reference trainer, `gpuwatch` and child-program command line it
will run, so the dry run can parse each with the real argument parsers) and a `run(ctx, plan, out)` that
runs them through `Ctx` and reports one line per assertion through `Out`; every figure also goes into
`out.figures`, which becomes the JSON file.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpu_proof_ctx import (
    PID,
    ROOT,
    Check,
    CheckFailed,
    Ctx,
    Out,
    Plan,
    evidence_names,
    hook_errors,
    last_line,
    near,
    on_gpu,
    steady_share,
)
from gpu_proof_trainer_checks import (
    plan_decode,
    plan_fsdp2,
    plan_trainer1,
    plan_trainer2,
    run_decode,
    run_fsdp2,
    run_trainer1,
    run_trainer2,
)

WATCH_MODULES = (
    "gpuwatch.capture.watch",
    "collectors.hooks.device_timer",
    "collectors.hooks.device_copy_hooks",
)
SUMMARY_MODULES = ("duckdb", "msgspec", "numpy", "gpuwatch.attribution.summary", "gpuwatch.store.run_reader")
TRAINER_MODULES = ("PIL", "reference_trainer.train", "reference_trainer.launch")


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


# ---------------------------------------------------------------------------------------------- the list


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
