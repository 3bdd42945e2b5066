"""Command line: `python -m reference_trainer --preset {naive,fixed} --nproc N --steps S --run-dir DIR`.

With `--nproc N` (outside torchrun) it starts N ranks through torch's own launcher
(`python -m torch.distributed.run --standalone --nproc-per-node N -m reference_trainer ...`); under
torchrun (`torchrun --nproc-per-node N -m reference_trainer ...`) each rank trains directly. Every switch
of the preset table can be set on its own; `--fix NAME` applies one group of them on top of the preset.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from reference_trainer.config.presets import CHOICES, FIXES, PRESETS, TrainConfig, build_config

EXIT_USAGE = 2

_HELP = {f.name: f.name.replace("_", " ") for f in fields(TrainConfig)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference_trainer",
        description="A small video diffusion transformer that reproduces each cause of accelerator idle time "
        "(--preset naive) and each fix (--preset fixed), trained under gpuwatch.watch.",
        epilog="exit codes: 0 ok, 1 a rank failed, 2 bad arguments",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="naive",
        help="which side of every switch (default naive)",
    )
    p.add_argument(
        "--fix",
        action="append",
        default=[],
        choices=sorted(FIXES),
        help="apply one fix group on top of the preset (repeatable)",
    )
    p.add_argument(
        "--nproc", type=int, default=None, help="start this many ranks through torch.distributed.run"
    )
    p.add_argument("--run-dir", default=None, help="gpuwatch run directory (default runs/reference-PRESET)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="where the generated JPEG data is kept (default ~/.cache/gpuwatch-reference-trainer)",
    )
    p.add_argument(
        "--no-watch",
        "--no-gpuwatch",
        dest="no_watch",
        action="store_true",
        help="no gpuwatch calls in the trainer (for comparisons, or to run it under `gpuwatch run`)",
    )
    g = p.add_argument_group("settings (default: the preset's)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "bool":
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif kind in ("int", "int | None"):
            g.add_argument(flag, type=int, default=None, metavar="N")
        elif kind in ("float", "float | None"):
            g.add_argument(flag, type=float, default=None, metavar="X")
        elif f.name in CHOICES:
            g.add_argument(flag, default=None, choices=CHOICES[f.name])
        else:
            g.add_argument(flag, default=None, metavar="VALUE")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    return build_config(args.preset, args.fix, **overrides)


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if cfg.resume:
            from reference_trainer.checkpoint import checkpoint_step

            checkpoint_step(cfg.resume)
    except ValueError as e:
        print(f"reference_trainer: {e}", file=sys.stderr)
        return EXIT_USAGE
    run_dir = Path(args.run_dir or f"runs/reference-{args.preset}")
    if args.nproc is not None and args.nproc < 1:
        print("reference_trainer: --nproc must be at least 1", file=sys.stderr)
        return EXIT_USAGE

    from reference_trainer.data import default_data_root, ensure_dataset

    data_root = Path(args.data_dir) if args.data_dir else default_data_root()
    if args.nproc is not None and not _under_torchrun():
        ensure_dataset(data_root, cfg.seed)  # once, before the ranks start
        rest = _strip_nproc(argv)
        if args.run_dir is None:
            rest += ["--run-dir", str(run_dir)]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={args.nproc}",
            "-m",
            "reference_trainer",
            *rest,
        ]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(cfg.cpu_threads))
        return subprocess.run(cmd, env=env).returncode

    from reference_trainer.train import train

    train(cfg, run_dir, data_root=data_root, watch=not args.no_watch)
    return 0
