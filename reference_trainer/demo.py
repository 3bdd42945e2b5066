"""`python -m reference_trainer.demo`: the main job in a few minutes on a CPU machine.

Trains the reference trainer twice with two ranks under `gpuwatch.watch` — once with every pathology
(`--preset naive`), once with every fix (`--preset fixed`) — and prints what gpuwatch says about each run
(`gpuwatch summary`: the time budget per rank, the rank the others wait for, what to change), then the two
side by side from `gpuwatch summary --json`. Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from reference_trainer.ablation import (
    CATEGORIES,
    Config,
    add_run_arguments,
    gpuwatch_summary,
    read_result,
    run_config,
    subprocess_env,
)


def _progress(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _show_summary(run_dir: Path) -> None:
    import subprocess

    sys.stdout.flush()
    subprocess.run(
        [sys.executable, "-m", "gpuwatch", "summary", str(run_dir)], env=subprocess_env(), check=False
    )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m reference_trainer.demo",
        description="Train the reference trainer naive and fixed (2 CPU ranks) under gpuwatch and show what "
        "gpuwatch says about each.",
        epilog="exit codes: 0 ok, 1 a run failed",
    )
    add_run_arguments(p, out="runs/demo", out_help="where the two run directories go")
    args = p.parse_args(argv)
    extra = [a for a in args.trainer_args if a != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from reference_trainer.data import default_data_root, ensure_dataset

    data_args = [a for a in extra if a.startswith("--data-dir")]
    if not data_args:
        root = default_data_root()
        _progress(f"procedural JPEG data set in {root} (generated on first use, a few seconds)")
        ensure_dataset(root)

    results = []
    for preset, what in (("naive", "every pathology on"), ("fixed", "every fix on")):
        config = Config(preset, preset, ())
        t0 = time.monotonic()
        _progress(
            f"training --preset {preset} ({what}): {args.nproc} ranks x {args.steps} steps under gpuwatch.watch "
            f"-> {out / preset}"
        )
        run_dir = run_config(config, out, nproc=args.nproc, steps=args.steps, extra=extra)
        _progress(f"{preset} done in {time.monotonic() - t0:.0f} s; asking gpuwatch what happened")
        results.append(read_result(config, run_dir, gpuwatch_summary(run_dir)))
        print(f"\n=== --preset {preset}: {what} ===  (gpuwatch summary {run_dir})\n", flush=True)
        _show_summary(run_dir)

    naive, fixed = results
    print("\n=== naive vs fixed, as gpuwatch measured them (all ranks) ===\n")
    print(f"{'':22s}{'naive':>10s}{'fixed':>10s}")
    print(f"{'median step (ms)':22s}{naive.median_step_ms:10.0f}{fixed.median_step_ms:10.0f}")
    for c in CATEGORIES:
        print(f"{c + ' %':22s}{naive.budget_pct[c]:10.1f}{fixed.budget_pct[c]:10.1f}")
    print(
        f"\nEvery fix together: {naive.median_step_ms / fixed.median_step_ms:.1f}x faster steps, compute share "
        f"{naive.budget_pct['compute']:.0f}% -> {fixed.budget_pct['compute']:.0f}%."
    )
    print(
        "Each fix on its own: python -m reference_trainer --preset naive --fix {data,decode,sync,checkpoint} "
        "--nproc 2 --run-dir DIR, or all of them in one table: python -m reference_trainer.ablation"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
