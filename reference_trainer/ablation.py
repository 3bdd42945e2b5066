"""`python -m reference_trainer.ablation`: naive, each single fix, all fixes — each under gpuwatch — one table.

Every configuration is a real multi-rank run of the reference trainer (`python -m reference_trainer
--preset naive --fix NAME --nproc N`), and every figure in the table is what `gpuwatch summary --json`
reports for that run: the median step time, the share of step time in `compute` and in each idle category
(all ranks together), and the utilization recovered against naive (compute share gained, in percentage
points, and the step-time speed-up). `--check` also verifies the reference trainer's promises and exits 1
when one does not hold: naive compute <= 40% on every rank, all fixes >= 80% on every rank, all fixes at
least 2x faster (median step time), and each single fix moving mostly its own category (of the idle
categories, its own shrinks the most, and by at least a third, on the rank where the cause lives; see
`fix_effect`). `--no-train` re-reads the runs a previous ablation left in `--out`.

`--source-mix` runs the data-source comparison instead: the same preset with `--source-mix independent`
(each rank draws its own source per step: a rank that drew clips makes the others wait) and `--source-mix
balanced` (every rank the same source each step), and reports the sync waiting gpuwatch measured in each
(`sync_split_pct.wait` of every rank), the waiting balanced recovers, and the tag value the straggler
analysis names (`straggler.tag_cause`). `--check` then requires the independent run's summary to name
`source=clips` and balanced to recover at least a third of the waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gpuwatch
from reference_trainer.config.presets import FIXES

CATEGORIES = tuple(c.value for c in gpuwatch.Category)
"""The budget categories as `gpuwatch summary --json` names them, compute first."""
FIX_CATEGORY = {
    "data": "data_loading",
    "decode": "cpu_preprocessing",
    "sync": "sync",
    "checkpoint": "checkpoint_io",
}
"""The budget category each single fix is meant to shrink."""
assert set(FIX_CATEGORY) == set(FIXES)


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    preset: str
    fixes: tuple[str, ...]
    extra: tuple[str, ...] = ()
    """More reference_trainer flags of this configuration (`--source-mix balanced`)."""


SOURCE_MIXES = ("independent", "balanced")


def source_mix_configurations(preset: str) -> list[Config]:
    return [Config(f"source mix {mix}", preset, (), ("--source-mix", mix)) for mix in SOURCE_MIXES]


def configurations() -> list[Config]:
    out = [Config("naive", "naive", ())]
    out += [Config(f"+{name}", "naive", (name,)) for name in FIXES]
    out.append(Config("fixed (all fixes)", "fixed", ()))
    return out


@dataclass(frozen=True, slots=True)
class Result:
    config: Config
    run_dir: Path
    median_step_ms: float
    """Median over ranks of each rank's median step time."""
    budget_pct: dict[str, float]
    """Share of all ranks' step time per category (0-100)."""
    compute_pct_by_rank: dict[int, float]
    straggler_rank: int | None
    summary: dict[str, Any]
    """The whole `gpuwatch summary --json` document."""


def _progress(msg: str) -> None:
    print(f"[ablation] {msg}", file=sys.stderr, flush=True)


def subprocess_env() -> dict[str, str]:
    """This environment with the project root on PYTHONPATH (runs from a checkout without installing)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_dir_of(config: Config, out_dir: Path) -> Path:
    name = config.name.replace(" ", "-").replace("(", "").replace(")", "").replace("+", "fix-")
    return out_dir / (f"{config.preset}-{name}" if config.extra else name)


def run_config(
    config: Config, out_dir: Path, *, nproc: int, steps: int, extra: list[str], quiet: bool = True
) -> Path:
    """Train one configuration under gpuwatch; returns its run directory."""
    run_dir = run_dir_of(config, out_dir)
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "reference_trainer", "--preset", config.preset]
    for name in config.fixes:
        cmd += ["--fix", name]
    cmd += list(config.extra)
    cmd += ["--nproc", str(nproc), "--steps", str(steps), "--run-dir", str(run_dir), *extra]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"[ablation] {config.name}: trainer exited {proc.returncode}")
    if not quiet:
        sys.stderr.write(proc.stderr)
    return run_dir


def gpuwatch_summary(run_dir: Path) -> dict[str, Any]:
    """`gpuwatch summary --json RUN_DIR`, exactly as a user would run it."""
    proc = subprocess.run(
        [sys.executable, "-m", "gpuwatch", "summary", "--json", str(run_dir)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"[ablation] gpuwatch summary {run_dir} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def read_result(config: Config, run_dir: Path, doc: dict[str, Any]) -> Result:
    """Combine the ranks of one summary: budget weighted by each rank's step time, median step time."""
    weighted = dict.fromkeys(CATEGORIES, 0.0)
    wall = 0.0
    medians, by_rank = [], {}
    for r in doc["ranks"]:
        ms = r["budget_ms_per_step"]
        n = r["steps"]
        for c in CATEGORIES:
            weighted[c] += ms.get(c, 0.0) * n
        wall += sum(ms.get(c, 0.0) for c in CATEGORIES) * n
        medians.append(r["step_time_ms"]["median"])
        by_rank[int(r["rank"])] = r["budget_pct"]["compute"]
    medians.sort()
    mid = len(medians) // 2
    median = medians[mid] if len(medians) % 2 else (medians[mid - 1] + medians[mid]) / 2
    budget = {c: 100.0 * v / wall if wall else 0.0 for c, v in weighted.items()}
    straggler = doc.get("straggler") or {}
    return Result(config, run_dir, median, budget, by_rank, straggler.get("rank"), doc)


def markdown_table(results: list[Result]) -> str:
    """The ablation table: one row per configuration, figures from gpuwatch summary --json."""
    base = results[0]
    short = {
        "data_loading": "data",
        "cpu_preprocessing": "preproc",
        "checkpoint_io": "ckpt",
        "host_overhead": "host",
        "unattributed": "unattr.",
    }
    head = ["configuration", "median step (ms)", "compute %"]
    head += [f"{short.get(c, c)} %" for c in CATEGORIES[1:]]
    head += ["compute recovered (pp)", "speed-up"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |"]
    for r in results:
        cells = [r.config.name, f"{r.median_step_ms:.0f}", f"{r.budget_pct['compute']:.1f}"]
        cells += [f"{r.budget_pct[c]:.1f}" for c in CATEGORIES[1:]]
        gained = r.budget_pct["compute"] - base.budget_pct["compute"]
        cells += [f"{gained:+.1f}", f"{base.median_step_ms / r.median_step_ms:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check(results: list[Result]) -> list[str]:
    """The reference trainer's promises (issue 4); returns the failures (empty when all hold)."""
    failures = []
    by_name = {r.config.name: r for r in results}
    naive, fixed = by_name.get("naive"), by_name.get("fixed (all fixes)")
    if naive is not None:
        worst = max(naive.compute_pct_by_rank.values())
        if worst > 40.0:
            failures.append(f"naive compute {worst:.1f}% > 40% on some rank")
    if fixed is not None:
        worst = min(fixed.compute_pct_by_rank.values())
        if worst < 80.0:
            failures.append(f"all fixes: compute {worst:.1f}% < 80% on some rank")
    if naive is not None and fixed is not None:
        speedup = naive.median_step_ms / fixed.median_step_ms
        if speedup < 2.0:
            failures.append(f"all fixes only {speedup:.2f}x faster than naive (median step time)")
    if naive is not None:
        for name, category in FIX_CATEGORY.items():
            r = by_name.get(f"+{name}")
            if r is None:
                continue
            drop, rank = fix_effect(naive, r, category)
            top = max(drop, key=lambda c: drop[c])
            if top != category or drop[category] < MIN_OWN_DROP:
                failures.append(
                    f"+{name} on rank {rank}: {category} shrank {100 * drop[category]:.0f}%, "
                    f"{top} shrank {100 * drop[top]:.0f}% (the fix should shrink its own category most, by a third or more)"
                )
    return failures


MIN_OWN_DROP = 1 / 3
"""A single fix must take at least this fraction of its own category away (and more than of any other)."""
SIGNIFICANT_MS = 10.0
"""Idle categories smaller than this per step in naive are noise for `fix_effect`."""


def fix_effect(naive: Result, fixed_one: Result, category: str) -> tuple[dict[str, float], int]:
    drop, rank, _, _ = fix_effect_ms(naive, fixed_one, category)
    return drop, rank


def fix_effect_ms(
    naive: Result, fixed_one: Result, category: str
) -> tuple[dict[str, float], int, dict[str, float], dict[str, float]]:
    """How much each significant idle category shrank (fraction of its naive ms per step) under one fix.

    Judged on the rank where the fix's cause lives (the rank where naive spends most time in its category:
    rank 0 for the checkpoint, which only it writes); for sync, without the waiting that another rank's
    synchronous checkpoint induces. Fractions, not milliseconds, because the other jobs
    on a shared machine slow every CPU-bound category of one run against another by tens of percent, while
    a fix takes most of its own category away.
    """
    ranks = [int(d["rank"]) for d in naive.summary["ranks"]]
    rank = max(ranks, key=lambda k: rank_ms(naive, k)[category])
    before, after = rank_ms(naive, rank), rank_ms(fixed_one, rank)
    if category == "sync":
        # In a lockstep job another rank's synchronous checkpoint comes back here as sync of the same length
        # (waiting at the next collective); that part belongs to the checkpoint fix, not to this one.
        for ms, result in ((before, naive), (after, fixed_one)):
            induced = max((rank_ms(result, k)["checkpoint_io"] for k in ranks if k != rank), default=0.0)
            ms["sync"] = max(ms["sync"] - induced, 0.0)
    drop = {
        c: (before[c] - after[c]) / before[c] if before[c] else 0.0
        for c in CATEGORIES[1:]
        if before[c] >= SIGNIFICANT_MS or c == category
    }
    return drop, rank, before, after


def fix_lines(results: list[Result]) -> list[str]:
    """One line per single fix: its own category before and after, in ms per step on the rank it lives on."""
    by_name = {r.config.name: r for r in results}
    naive = by_name.get("naive")
    out = []
    for name, category in FIX_CATEGORY.items():
        r = by_name.get(f"+{name}")
        if naive is None or r is None:
            continue
        drop, rank, before, after = fix_effect_ms(naive, r, category)
        others = ", ".join(f"{c} {-100 * v:+.0f}%" for c, v in drop.items() if c != category)
        beyond = " beyond the wait for rank 0's checkpoint" if category == "sync" else ""
        out.append(
            f"+{name}: {category}{beyond} {before[category]:.0f} -> {after[category]:.0f} ms/step "
            f"on rank {rank} ({-100 * drop[category]:+.0f}%; other idle categories there: {others or 'none'})"
        )
    return out


def rank_ms(r: Result, rank: int) -> dict[str, float]:
    """Mean ms per step in each category on one rank, from the summary."""
    for doc in r.summary["ranks"]:
        if int(doc["rank"]) == rank:
            return {c: float(doc["budget_ms_per_step"].get(c, 0.0)) for c in CATEGORIES}
    return dict.fromkeys(CATEGORIES, 0.0)


@dataclass(frozen=True, slots=True)
class MixResult:
    """One source-mix run as gpuwatch measured it."""

    result: Result
    wait_ms_per_step: dict[int, float]
    """Per rank, mean ms per step of sync spent waiting for a later rank (`sync_split_pct.wait`)."""
    wait_pct: float
    """Waiting as a share of all ranks' step time, percent."""
    tag_cause: str | None
    """The straggler's tag-cause sentence, or None."""
    tag_value: str | None
    """`key=value` of the tag cause, or None."""


def mix_result(r: Result) -> MixResult:
    waits: dict[int, float] = {}
    wall = waited = 0.0
    for doc in r.summary["ranks"]:
        step_ms = float(doc["step_time_ms"]["mean"])
        pct = float(doc.get("sync_split_pct", {}).get("wait", 0.0))
        waits[int(doc["rank"])] = pct * step_ms / 100.0
        wall += step_ms * doc["steps"]
        waited += pct * step_ms / 100.0 * doc["steps"]
    cause = (r.summary.get("straggler") or {}).get("tag_cause") or {}
    return MixResult(
        r,
        waits,
        100.0 * waited / wall if wall else 0.0,
        cause.get("text"),
        f"{cause['key']}={cause['value']}" if cause else None,
    )


def mix_table(mixes: list[MixResult]) -> str:
    head = ["configuration", "median step (ms)", "sync %", "sync waiting %"]
    ranks = sorted({k for m in mixes for k in m.wait_ms_per_step})
    head += [f"rank {k} waits (ms/step)" for k in ranks] + ["straggler", "its tag cause"]
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(head) - 3) + ["---", "---"]) + " |",
    ]
    for m in mixes:
        r = m.result
        cells = [r.config.name, f"{r.median_step_ms:.0f}", f"{r.budget_pct['sync']:.1f}", f"{m.wait_pct:.1f}"]
        cells += [f"{m.wait_ms_per_step.get(k, 0.0):.1f}" for k in ranks]
        cells += ["-" if r.straggler_rank is None else f"rank {r.straggler_rank}", m.tag_value or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mix_lines(mixes: list[MixResult]) -> list[str]:
    by = {m.result.config.name.split()[-1]: m for m in mixes}
    ind, bal = by.get("independent"), by.get("balanced")
    out = []
    if ind is not None and ind.tag_cause:
        out.append(f"independent: gpuwatch says {ind.tag_cause}")
    if ind is not None and bal is not None:
        before = sum(ind.wait_ms_per_step.values()) / max(len(ind.wait_ms_per_step), 1)
        after = sum(bal.wait_ms_per_step.values()) / max(len(bal.wait_ms_per_step), 1)
        out.append(
            f"balanced recovers {before - after:.0f} ms/step of sync waiting per rank ({before:.0f} -> "
            f"{after:.0f} ms/step, {ind.wait_pct:.1f}% -> {bal.wait_pct:.1f}% of step time)"
        )
    return out


def mix_check(mixes: list[MixResult]) -> list[str]:
    by = {m.result.config.name.split()[-1]: m for m in mixes}
    ind, bal = by.get("independent"), by.get("balanced")
    failures = []
    if ind is not None and ind.tag_value != "source=clips":
        failures.append(f"independent: the straggler's tag cause is {ind.tag_value}, not source=clips")
    if ind is not None and bal is not None:
        before, after = sum(ind.wait_ms_per_step.values()), sum(bal.wait_ms_per_step.values())
        if after > before * (1 - MIN_OWN_DROP):
            failures.append(
                f"balanced waits {after:.0f} ms/step (all ranks) vs {before:.0f}: less than a third recovered"
            )
    return failures


MIX_BEGIN, MIX_END = "<!-- source-mix: begin -->", "<!-- source-mix: end -->"


def _mix_section(
    table: str, mixes: list[MixResult], cmd: str, args: argparse.Namespace, failures: list[str]
) -> str:
    checks = "\n".join(f"- FAILED: {f}" for f in failures) if failures else "- both promises held (`--check`)"
    return (
        f"{MIX_BEGIN}\n## Data sources: independent vs balanced\n\n"
        f"Measured with `{cmd}`: `python -m reference_trainer --preset {args.preset} --source-mix MIX --nproc "
        f"{args.nproc} --steps {args.steps}`. With `independent` each rank draws stills or clips per step on its "
        "own (a clip batch is `clip_frames` times the work of a stills batch), so whenever the ranks drew "
        "differently the one with clips makes the other wait at the next collective (DDP's all-reduce); `balanced` gives every rank "
        "the same source each step (a data pendulum): the same batches and the same expected work, no "
        'straggler. "sync waiting" is the waiting for a later rank inside sync (`sync_split_pct.wait`), as a '
        "share of all ranks' step time and per rank in ms per step; the tag cause is what "
        "`gpuwatch summary` says about the straggler (`straggler.tag_cause`). The 1-minute load average was "
        f"{os.getloadavg()[0]:.1f} when this was written ({os.cpu_count()} cores): above that, other jobs "
        "shared the cores and every step is slower.\n\n"
        f"{table}\n\n" + "".join(f"- {line}\n" for line in mix_lines(mixes)) + f"{checks}\n{MIX_END}\n"
    )


def _write_section(path: Path, section: str) -> None:
    """Put the source-mix section into `path`, replacing an earlier one (the rest of the file is kept)."""
    text = path.read_text() if path.exists() else ""
    if MIX_BEGIN in text and MIX_END in text:
        head, rest = text.split(MIX_BEGIN, 1)
        text = head + section + rest.split(MIX_END, 1)[1].lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    path.write_text(text)


def _kept_section(path: Path) -> str:
    """The source-mix section of an existing markdown file (kept when the main table is rewritten)."""
    text = path.read_text() if path.exists() else ""
    if MIX_BEGIN in text and MIX_END in text:
        return "\n" + MIX_BEGIN + text.split(MIX_BEGIN, 1)[1].split(MIX_END, 1)[0] + MIX_END + "\n"
    return ""


def add_run_arguments(p: argparse.ArgumentParser, *, out: str, out_help: str) -> None:
    """What every driver of reference-trainer runs takes: ranks, steps, where the runs go, extra trainer flags."""
    p.add_argument("--nproc", type=int, default=2, help="ranks per run (default 2)")
    p.add_argument("--steps", type=int, default=40, help="steps per run (default 40)")
    p.add_argument("--out", default=out, help=f"{out_help} (default {out})")
    p.add_argument("trainer_args", nargs=argparse.REMAINDER, help="after --: extra reference_trainer flags")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m reference_trainer.ablation",
        description="Run naive, each single fix and all fixes under gpuwatch and print one table of what "
        "gpuwatch measured (step time, compute share, each idle category, utilization recovered).",
        epilog="exit codes: 0 ok, 1 a run failed or --check found a broken promise, 2 bad arguments",
    )
    add_run_arguments(p, out="runs/ablation", out_help="where the run directories go")
    p.add_argument(
        "--only", action="append", default=[], help="only these configurations (naive, +data, ...)"
    )
    p.add_argument("--markdown", default=None, help="also write the table (and the commands) to this file")
    p.add_argument("--check", action="store_true", help="verify the promises; exit 1 if one fails")
    p.add_argument(
        "--no-train",
        action="store_true",
        help="only re-read the run directories a previous ablation left in --out",
    )
    p.add_argument(
        "--json", action="store_true", help="print the results as JSON on stdout instead of the table"
    )
    p.add_argument(
        "--source-mix",
        action="store_true",
        help="compare --source-mix independent and balanced (on --preset) instead of the fixes",
    )
    p.add_argument(
        "--preset", default="fixed", help="the preset of the --source-mix comparison (default fixed)"
    )
    args = p.parse_args(argv)
    extra = [a for a in args.trainer_args if a != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.source_mix:
        return _main_source_mix(args, out, extra, argv)
    configs = [
        c for c in configurations() if not args.only or c.name in args.only or c.name.split()[0] in args.only
    ]
    load_before = os.getloadavg()[0]
    results = []
    for i, config in enumerate(configs, 1):
        t0 = time.monotonic()
        _progress(f"{i}/{len(configs)} {config.name}: training {args.nproc} ranks x {args.steps} steps")
        if args.no_train:
            run_dir = run_dir_of(config, out)
        else:
            run_dir = run_config(config, out, nproc=args.nproc, steps=args.steps, extra=extra)
        result = read_result(config, run_dir, gpuwatch_summary(run_dir))
        results.append(result)
        _progress(
            f"{i}/{len(configs)} {config.name}: median step {result.median_step_ms:.0f} ms, compute "
            f"{result.budget_pct['compute']:.1f}% ({time.monotonic() - t0:.0f} s)"
        )
    table = markdown_table(results)
    docs = [
        {
            "configuration": r.config.name,
            "run_dir": str(r.run_dir),
            "median_step_ms": r.median_step_ms,
            "budget_pct": r.budget_pct,
            "compute_pct_by_rank": r.compute_pct_by_rank,
            "straggler_rank": r.straggler_rank,
        }
        for r in results
    ]
    _print_results(args, table, docs, fix_lines(results))
    failures = check(results) if args.check else []
    if args.markdown:
        cmd = "python -m reference_trainer.ablation " + " ".join(argv if argv is not None else sys.argv[1:])
        loads = (load_before, os.getloadavg()[0])
        kept = _kept_section(Path(args.markdown))
        Path(args.markdown).write_text(
            _markdown_doc(table, results, cmd.strip(), args, failures, loads) + kept
        )
        _progress(f"wrote {args.markdown}")
    return _verdict(args, failures)


def _print_results(
    args: argparse.Namespace, table: str, docs: list[dict[str, Any]], lines: list[str]
) -> None:
    """The configurations as one JSON list with --json, else the table and what the lines under it say."""
    if args.json:
        json.dump(docs, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(table)
        print()
        for line in lines:
            print(line)


def _verdict(args: argparse.Namespace, failures: list[str]) -> int:
    """Say each broken promise (and, with --check, that all hold); the exit status: 1 when one broke."""
    for f in failures:
        _progress(f"FAILED: {f}")
    if args.check and not failures:
        _progress("all promises hold")
    return 1 if failures else 0


def _main_source_mix(args: argparse.Namespace, out: Path, extra: list[str], argv: list[str] | None) -> int:
    mixes = []
    for i, config in enumerate(source_mix_configurations(args.preset), 1):
        t0 = time.monotonic()
        _progress(f"{i}/2 {config.name}: training {args.nproc} ranks x {args.steps} steps")
        run_dir = run_dir_of(config, out)
        if not args.no_train:
            run_dir = run_config(config, out, nproc=args.nproc, steps=args.steps, extra=extra)
        m = mix_result(read_result(config, run_dir, gpuwatch_summary(run_dir)))
        mixes.append(m)
        _progress(f"{i}/2 {config.name}: sync waiting {m.wait_pct:.1f}% ({time.monotonic() - t0:.0f} s)")
    table = mix_table(mixes)
    docs = [
        {
            "configuration": m.result.config.name,
            "run_dir": str(m.result.run_dir),
            "median_step_ms": m.result.median_step_ms,
            "budget_pct": m.result.budget_pct,
            "sync_wait_ms_per_step": m.wait_ms_per_step,
            "sync_wait_pct": m.wait_pct,
            "straggler_rank": m.result.straggler_rank,
            "tag_cause": m.tag_cause,
        }
        for m in mixes
    ]
    _print_results(args, table, docs, mix_lines(mixes))
    failures = mix_check(mixes) if args.check else []
    if args.markdown:
        cmd = (
            f"python -m reference_trainer.ablation --source-mix --preset {args.preset} --nproc {args.nproc} "
            f"--steps {args.steps} --check --markdown {args.markdown}"
            + (" -- " + " ".join(extra) if extra else "")
        )
        _write_section(Path(args.markdown), _mix_section(table, mixes, cmd, args, failures))
        _progress(f"wrote {args.markdown}")
    return _verdict(args, failures)


def _markdown_doc(
    table: str,
    results: list[Result],
    cmd: str,
    args: argparse.Namespace,
    failures: list[str],
    loads: tuple[float, float],
) -> str:
    import platform

    by_rank = "; ".join(
        f"{r.config.name}: "
        + ", ".join(f"rank {k} {v:.1f}%" for k, v in sorted(r.compute_pct_by_rank.items()))
        for r in results
    )
    checks = "\n".join(f"- FAILED: {f}" for f in failures) if failures else "- every promise held (`--check`)"
    cores = os.cpu_count()
    return (
        "# Reference trainer ablation\n\n"
        f"Measured by gpuwatch (`gpuwatch summary --json` of each run) with `{cmd}` on {cores} CPU cores "
        f"({platform.machine()}), {args.nproc} ranks (gloo), {args.steps} steps per configuration. Each "
        f"configuration is `python -m reference_trainer --preset naive --fix NAME --nproc {args.nproc} --steps "
        f"{args.steps}` (or `--preset fixed`). The 1-minute load average was {loads[0]:.1f} before and "
        f"{loads[1]:.1f} after: above {cores}, other jobs shared the cores and every CPU-bound figure is slower.\n\n"
        'Budget columns are shares of step wall time over all ranks; "compute recovered" is the compute share '
        'gained against naive in percentage points; "speed-up" is naive\'s median step time over the '
        "configuration's.\n\n"
        f"{table}\n\n"
        f"Compute share per rank: {by_rank}.\n\n"
        "What each single fix did to its own category (the other idle categories, in the same units, drift with "
        "the machine's load):\n\n" + "".join(f"- {line}\n" for line in fix_lines(results)) + "\n"
        "Reading it: the causes are serial on the training thread, so one fix alone shortens the step by what "
        "it removes and the others' shares grow. `+decode` moves a tenth of the decode work into "
        "`DataLoader.__next__` (still `num_workers=0`), so data_loading rises. `+sync` keeps rank 0's "
        "synchronous checkpoint, so rank 1 still waits for it inside DDP's all-reduce (sync); `+checkpoint` "
        "removes that wait too. Only all fixes together leave the step to compute.\n\n"
        f"{checks}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
