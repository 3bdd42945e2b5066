"""The checks of `gpu_proof.py` on the reference trainer's GPU paths: naive vs fixed on one rank (NCCL,
bf16, GPU JPEG decode), the GPU decode against the CPU one, FSDP2 with DCP async_save resumed, and two ranks
sharing the GPU over gloo (manager node vs DDP, pinned batches). See `gpu_proof_checks.py` for the shape.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from gpu_proof_ctx import (
    CheckFailed,
    Ctx,
    Out,
    Plan,
    all_steps,
    evidence_names,
    hook_errors,
    median_ms,
    on_gpu,
    run_dir_of,
    trainer_common,
)


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
