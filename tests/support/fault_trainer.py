"""A small deterministic CPU training program for the fault, kill and hook-fault tests (issue 15).

Every step goes through what gpuwatch hooks: a DataLoader (num_workers=0, seeded shuffle), a user span,
forward, backward, an optimizer step, a `torch.save` checkpoint every `--checkpoint-every` steps, and with
`--world 2` a gloo all_reduce of the gradients (ranks started by the test with RANK/WORLD_SIZE/MASTER_*).
The program logs its own truth: with `--progress` a line `step I T_UNIX` after every step (flushed, so a
SIGKILL loses none), and at the end `--result FILE` gets the loss of every step as float.hex (for
bit-identity with the bare run), the wall time of every step, and the writer's drop counts and notes.

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
    p.add_argument("--progress", action="store_true")
    p.add_argument("--result", default=None)
    p.add_argument("--fault", default=None, help="a hook fault to inject (tests/support/hook_faults.py)")
    args = p.parse_args()

    rank = int(os.environ.get("RANK", "0"))
    if args.world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=args.world)
    torch.manual_seed(1234)
    g = torch.Generator().manual_seed(99)
    data = TensorDataset(torch.randn(512, 32, generator=g), torch.randn(512, 1, generator=g))
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(7))
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    watch: Any = contextlib.nullcontext(None)
    if not args.no_watch:
        import gpuwatch

        if args.fault:
            from hook_faults import inject

            inject(args.fault)
        watch = gpuwatch.watch(args.run_dir, flush_interval_s=args.flush_interval)
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
            if args.world > 1:
                for param in model.parameters():
                    dist.all_reduce(param.grad)
                    param.grad /= args.world
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
    if args.result:
        writer = getattr(gw, "writer", None)
        result = {
            "rank": rank,
            "losses": losses,
            "step_s": step_s,
            "dropped_spans": getattr(writer, "dropped_spans", None),
            "dropped_samples": getattr(writer, "dropped_samples", None),
            "notes": dict(getattr(writer, "_notes", {}) or {}),
        }
        Path(args.result).write_text(json.dumps(result))
    if args.world > 1:
        dist.destroy_process_group()


def gpuwatch_span(name: str) -> Any:
    import gpuwatch

    return gpuwatch.span(name, category="cpu_preprocessing")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
