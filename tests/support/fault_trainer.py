"""A small deterministic CPU training program for the fault, kill and hook-fault tests (issue 15).

Every step goes through what gpuwatch hooks: a DataLoader (num_workers=0, seeded shuffle), a user span,
forward, backward, an optimizer step, a `torch.save` checkpoint every `--checkpoint-every` steps, and with
`--world 2` a gloo all_reduce of the gradients (ranks started by the test with RANK/WORLD_SIZE/MASTER_*).
The program logs its own truth: with `--progress` a line `step I T_UNIX` after every step (flushed, so a
SIGKILL loses none), and at the end `--result FILE` gets the loss of every step as float.hex (for
bit-identity with the bare run), the wall time of every step, and the writer's drop counts and notes.
`--fault-matrix` trains bare, then once under each hook fault of tests/support/hook_faults.py, all in one
process (torch is imported once).

    python tests/support/fault_trainer.py --run-dir run --steps 60 --result out.json
    python tests/support/fault_trainer.py --no-watch --steps 60 --result bare.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", default="run")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--no-watch", action="store_true")
    p.add_argument("--flush-interval", type=float, default=0.2)
    p.add_argument("--step-ms", type=float, default=5.0, help="sleep per step, to pace the run")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--world", type=int, default=1, help="2: a gloo all_reduce per step (RANK from env)")
    p.add_argument("--gloo-single", action="store_true", help="a one-rank gloo group: the all_reduce hooked")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--result", default=None)
    p.add_argument(
        "--fault-matrix",
        action="store_true",
        help="train bare, then once per hook fault of tests/support/hook_faults.py (run dirs RUN_DIR/<fault>)",
    )
    args = p.parse_args()

    rank = int(os.environ.get("RANK", "0"))
    world = args.world
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=world)
    elif args.gloo_single:
        import tempfile

        import torch.distributed as dist

        init = Path(tempfile.mkdtemp()) / "pg"
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1)
        world = -1  # all_reduce each step in a group of one

    def run(run_dir: str | None) -> dict[str, Any]:
        out = train(args, world, run_dir)
        out["rank"] = rank
        return out

    if args.fault_matrix:
        from hook_faults import HOOKS, MODES, inject

        result = {"bare": run(None)}
        for spec in (f"{hook}:{mode}" for hook in HOOKS for mode in MODES):
            undo = inject(spec)
            try:
                result[spec] = run(str(Path(args.run_dir) / spec.replace(":", "-")))
            finally:
                undo()
    else:
        result = run(None if args.no_watch else args.run_dir)
    if args.result:
        Path(args.result).write_text(json.dumps(result))
    if world != 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def train(args: argparse.Namespace, world: int, run_dir: str | None) -> dict[str, Any]:
    """One training run from the same seed: its losses (float.hex), step wall times, writer counters."""
    torch.manual_seed(1234)
    g = torch.Generator().manual_seed(99)
    data = TensorDataset(torch.randn(512, 32, generator=g), torch.randn(512, 1, generator=g))
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(7))
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    watch: Any = contextlib.nullcontext(None)
    if run_dir is not None:
        import gpuwatch

        watch = gpuwatch.watch(run_dir, flush_interval_s=args.flush_interval)
    losses: list[str] = []
    step_s: list[float] = []
    with watch as gw:
        it = iter(loader)
        for step in range(args.steps):
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(loader)
                x, y = next(it)
            span = gpuwatch_span("normalize") if gw is not None else contextlib.nullcontext()
            with span:
                x = (x - x.mean()) / (x.std() + 1e-6)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            if world != 1:
                import torch.distributed as dist

                for param in model.parameters():
                    dist.all_reduce(param.grad)
                    param.grad /= abs(world)
            opt.step()
            if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
                torch.save(model.state_dict(), io.BytesIO())
            losses.append(float(loss.item()).hex())
            if gw is not None:
                gw.step()
            time.sleep(args.step_ms / 1000)
            step_s.append(time.perf_counter() - t0)
            if args.progress:
                print(f"step {step} {time.time():.6f}", flush=True)
    writer = getattr(gw, "writer", None)
    return {
        "losses": losses,
        "step_s": step_s,
        "dropped_spans": getattr(writer, "dropped_spans", None),
        "dropped_samples": getattr(writer, "dropped_samples", None),
        "notes": dict(getattr(writer, "_notes", {}) or {}),
    }


def gpuwatch_span(name: str) -> Any:
    import gpuwatch

    return gpuwatch.span(name, category="cpu_preprocessing")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
