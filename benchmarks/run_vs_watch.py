"""`gpuwatch run` against the built-in watch on the reference trainer: the budget of each, run by run.

    python benchmarks/run_vs_watch.py [--rounds 2] [--steps 16] [--batch-size 8] [--presets naive fixed]

Per round and preset (2 ranks, gloo), alternating which goes first:

  watch  python -m reference_trainer --preset P --nproc 2 ...                (its own gpuwatch.watch + gw.step)
  run    gpuwatch run -- python -m reference_trainer --preset P --nproc 2 --no-gpuwatch ...

Prints, per preset and rank, each budget category's mean over the rounds in both modes and their difference
(run - watch, percentage points), next to the spread of the watch mode's own rounds (max - min): two runs of
one configuration differ by that much on a shared machine, whatever measures them.
tests/integration/test_run_reference_trainer.py makes the same comparison inside one execution, where
that noise does not enter.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import gpuwatch

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = tuple(c.value for c in gpuwatch.Category)
"""The budget categories as `gpuwatch summary --json` names them, compute first."""


def one(mode: str, preset: str, args: argparse.Namespace, tmp: Path, tag: str) -> dict[int, dict[str, float]]:
    run_dir, trainer_dir = tmp / f"{tag}-run", tmp / f"{tag}-trainer"
    trainer = [
        sys.executable, "-m", "reference_trainer", "--preset", preset, "--nproc", "2",
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--data-dir", str(args.data_dir),
    ]  # fmt: skip
    if mode == "watch":
        cmd = [*trainer, "--run-dir", str(run_dir)]
    else:
        cmd = [sys.executable, "-m", "gpuwatch", "run", "-q", "--out", str(run_dir), "--"]
        cmd += [*trainer, "--no-gpuwatch", "--run-dir", str(trainer_dir)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"{mode} {preset} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = subprocess.run(
        [sys.executable, "-m", "gpuwatch", "summary", "--json", str(run_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(summary.stdout)
    return {r["rank"]: r["budget_pct"] for r in doc["ranks"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--presets", nargs="+", default=["naive", "fixed"])
    p.add_argument(
        "--data-dir", default=str(Path(tempfile.gettempdir()) / "gpuwatch-reference-trainer-tests")
    )
    args = p.parse_args()

    got: dict[tuple[str, str], list[dict[int, dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="gpuwatch-run-vs-watch-") as name:
        tmp = Path(name)
        for r in range(args.rounds):
            for preset in args.presets:
                order = ["watch", "run"] if r % 2 == 0 else ["run", "watch"]
                for mode in order:
                    got.setdefault((preset, mode), []).append(
                        one(mode, preset, args, tmp, f"{preset}-{mode}-{r}")
                    )
                    print(f"round {r + 1}/{args.rounds}: {preset} {mode} done", file=sys.stderr, flush=True)

    worst = 0.0
    for preset in args.presets:
        watch, run = got[(preset, "watch")], got[(preset, "run")]
        for rank in sorted(watch[0]):
            print(f"\n{preset}, rank {rank} ({args.rounds} rounds of {args.steps} steps)")
            print(
                f"  {'category':18s} {'watch %':>8s} {'run %':>8s} {'run-watch':>10s} {'watch spread':>13s}"
            )
            for c in CATEGORIES:
                w = [x[rank][c] for x in watch]
                u = [x[rank][c] for x in run]
                diff = statistics.mean(u) - statistics.mean(w)
                worst = max(worst, abs(diff))
                print(
                    f"  {c:18s} {statistics.mean(w):8.1f} {statistics.mean(u):8.1f} {diff:+10.1f} "
                    f"{max(w) - min(w):13.1f}"
                )
    print(f"\nlargest |run - watch| over presets, ranks and categories: {worst:.1f} pp")


if __name__ == "__main__":
    main()
