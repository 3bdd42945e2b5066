"""`gpuwatch top` following a big live run: refreshes per second and CPU, against `gpuwatch summary`.

The run: 8 ranks x 10,000 steps written with the real segment writer (tests/support/synthetic_run.py: data
loading, augmentation, forward, backward, an all_reduce every rank joins, optimizer, checkpoints; 7 spans a
step a rank, 560,000 spans), written by a separate writer process that then goes on appending
`--steps-per-flush` steps to every rank every `--flush-s` seconds, as 8 live trainers do (the segment
writer's default flush interval is 1 s; 8 steps a flush is a 125 ms step).

Measured in this process while it follows that run:
- catch-up: the first poll (every segment so far) and the first view (last 50 steps of every rank);
- a refresh with new data, back to back (`RunFollower.poll` + `view`): the most refreshes per second the data
  path allows;
- the real app (Textual, headless) following at its default pace (a refresh every 0.5 s) for `--seconds`:
  views drawn per second, and this process's CPU time over wall time (the writer is another process);
- the whole-run view once (what `w` costs on this run).
The peer, in the same script: `gpuwatch summary --no-cache --json` of the same run at the moment following
stopped, as a user would rerun it to see new numbers. The ratio says how many dashboard refreshes cost one
summary recomputation.

Measured on the 2-core development VM while other jobs ran (load average 10-17), 2026-12-01:
catch-up 28.6 s wall / 4.0 s CPU for 560,020 spans; a refresh with new data (poll + last-50-step analysis)
433 ms wall / 73 ms CPU; the real app 2.03 refreshes/s, the window re-analysed every 1.7 s, CPU 8.7% of one
core; whole-run view 18.8 s wall / 2.6 s CPU; peer `gpuwatch summary --no-cache` 355 s wall / 61.3 s CPU,
so one refresh costs 1/837 of a summary recomputation (CPU).

    python benchmarks/top_follow.py                       # 8 ranks x 10,000 steps, 30 s of following
    python benchmarks/top_follow.py --steps 2000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))


def writer_main(run_dir: Path, ranks: int, steps: int, flush_s: float, per_flush: int, ready: Path) -> None:
    """The writer process: `steps` steps at once, then `per_flush` more every `flush_s` until killed."""
    from synthetic_run import SyntheticRun

    run = SyntheticRun(run_dir, ranks=ranks, steps_per_flush=10, checkpoint_every=500, notes=False)
    run.append(steps)
    run.steps_per_flush = per_flush
    ready.write_text(str(run.steps))
    next_t = time.monotonic()
    while True:
        next_t += flush_s
        time.sleep(max(0.0, next_t - time.monotonic()))
        run.append(per_flush)


def cpu_s() -> float:
    return time.process_time()


async def follow_app(run_dir: Path, seconds: float) -> tuple[float, int, int, int, float, float]:
    """The real app, headless, over `seconds`: (catch-up s, refresh ticks, views drawn, window analyses,
    wall s, CPU s)."""
    from gpuwatch.tui.app import TopApp

    app = TopApp(run_dir, window_steps=50, refresh_s=0.5)
    async with app.run_test(size=(160, 48)) as pilot:
        t0 = time.perf_counter()
        while app.view is None or app.view.summary is None:
            await pilot.pause(0.05)
        catch_up = time.perf_counter() - t0
        await pilot.pause(1.0)
        ticks0, views0, analyses0 = app.refreshes, app.views_drawn, app.follower.analyses
        wall0, cpu0 = time.perf_counter(), cpu_s()
        await asyncio.sleep(seconds)
        views, wall, cpu = app.views_drawn - views0, time.perf_counter() - wall0, cpu_s() - cpu0
        analyses, ticks = app.follower.analyses - analyses0, app.refreshes - ticks0
        await pilot.press("q")
    return catch_up, ticks, views, analyses, wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of following with the real app")
    p.add_argument("--flush-s", type=float, default=1.0, help="how often the writer flushes every rank")
    p.add_argument("--steps-per-flush", type=int, default=8, help="steps each rank adds per flush")
    p.add_argument("--back-to-back", type=int, default=20, help="refreshes with new data timed back to back")
    p.add_argument("--writer", nargs=2, metavar=("RUN_DIR", "READY_FILE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.writer:
        writer_main(
            Path(args.writer[0]),
            args.ranks,
            args.steps,
            args.flush_s,
            args.steps_per_flush,
            Path(args.writer[1]),
        )
        return

    from gpuwatch.tui.follower import RunFollower

    base = Path(tempfile.mkdtemp(prefix="gpuwatch-top-follow-"))
    run_dir, ready = base / "run", base / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, __file__, "--ranks", str(args.ranks), "--steps", str(args.steps)]
    cmd += ["--flush-s", str(args.flush_s), "--steps-per-flush", str(args.steps_per_flush)]
    cmd += ["--writer", str(run_dir), str(ready)]
    print(f"top_follow: writing {args.ranks} ranks x {args.steps} steps to {run_dir} ...", flush=True)
    t0 = time.perf_counter()
    writer = subprocess.Popen(cmd, env=env)
    try:
        while not ready.exists():
            if writer.poll() is not None:
                raise SystemExit(f"the writer process failed (exit {writer.returncode})")
            time.sleep(0.2)
        files = sum(1 for _ in run_dir.rglob("*.jsonl"))
        print(f"  written in {time.perf_counter() - t0:.1f} s ({files} segment files); the writer goes on")

        # the data path: catch-up, then refreshes with new data back to back
        follower = RunFollower(run_dir)
        t, c = time.perf_counter(), cpu_s()
        follower.poll()
        view = follower.view(50)
        assert view is not None and view.summary is not None
        spans = sum(d.spans.n for d in follower._ranks.values())
        print(
            f"catch-up: first poll + first view (last 50 steps): {time.perf_counter() - t:.2f} s wall, "
            f"{cpu_s() - c:.2f} s CPU, {spans:,} spans"
        )
        costs, cpus = [], []
        for _ in range(args.back_to_back):
            while not follower.poll().changed:  # wait for the writer's next flush, then time one view
                time.sleep(0.01)
            t, c = time.perf_counter(), cpu_s()
            follower.view(50, force=True)
            costs.append(time.perf_counter() - t)
            cpus.append(cpu_s() - c)
        polls, poll_cpus = [], []
        for _ in range(5):  # a poll that brings one flush of every rank
            time.sleep(args.flush_s)
            t, c = time.perf_counter(), cpu_s()
            follower.poll()
            polls.append(time.perf_counter() - t)
            poll_cpus.append(cpu_s() - c)

        def median(xs: list[float]) -> float:
            return sorted(xs)[len(xs) // 2]

        poll_s, view_s = median(polls), median(costs)
        refresh_s = poll_s + view_s
        refresh_cpu = median(poll_cpus) + median(cpus)
        print(
            f"refresh with new data (medians): poll {poll_s * 1e3:.1f} ms + window analysis {view_s * 1e3:.1f} ms "
            f"= {refresh_s * 1e3:.1f} ms wall, {refresh_cpu * 1e3:.1f} ms CPU -> at most "
            f"{1 / refresh_s:.1f} refreshes/s with a new analysis each (wall; {1 / refresh_cpu:.1f} by CPU)"
        )
        t, c = time.perf_counter(), cpu_s()
        whole = follower.view(None, force=True)
        whole_s, whole_cpu = time.perf_counter() - t, cpu_s() - c
        assert whole is not None
        print(f"whole-run view (`w`) on {whole.window_label}: {whole_s:.2f} s wall, {whole_cpu:.2f} s CPU")
        follower.close()

        # the real app at its default pace
        catch_up, ticks, views, analyses, wall, cpu = asyncio.run(follow_app(run_dir, args.seconds))
        print(
            f"real app (headless, refresh 0.5 s) following for {wall:.0f} s after a {catch_up:.1f} s catch-up: "
            f"{ticks / wall:.2f} refreshes/s (new segments read, view brought up to date), "
            f"{views / wall:.2f} new views drawn/s (the writer flushes every {args.flush_s:g} s), the window's "
            f"budget re-analysed {analyses} times (every {wall / max(analyses, 1):.1f} s), "
            f"CPU {100 * cpu / wall:.1f}% of one core"
        )
    finally:
        writer.kill()
        writer.wait()

    # the peer: gpuwatch summary recomputing the same run from the store
    t = time.perf_counter()
    before = os.times()
    proc = subprocess.run(
        [sys.executable, "-m", "gpuwatch", "summary", "--no-cache", "--json", str(run_dir)],
        capture_output=True,
        env=env,
    )
    summary_s = time.perf_counter() - t
    after = os.times()
    summary_cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    if proc.returncode != 0:
        raise SystemExit(f"gpuwatch summary failed: {proc.stderr.decode()[-2000:]}")
    print(
        f"peer: gpuwatch summary --no-cache --json of the same run: {summary_s:.2f} s wall, {summary_cpu:.2f} s CPU"
    )
    print(
        f"ratio (CPU): one dashboard refresh with new data costs 1/{summary_cpu / refresh_cpu:.0f} of a summary "
        f"recomputation; the whole-run view 1/{summary_cpu / whole_cpu:.1f} of it"
    )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
