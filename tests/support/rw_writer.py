"""One writing process for the readers-and-writers test: a loop of steps emitting spans through the real
`SegmentWriter` (background thread, flushing every `--flush-interval` s, compacting every 64 segments), no
torch. Prints one JSON line at the end: spans emitted, steps, each step's wall time and start, drops.

    python tests/support/rw_writer.py RUN_DIR RANK --seconds 4 [--until STOP_FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from gpuwatch.records import Run, Span
from gpuwatch.store.segment_writer import SegmentWriter


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("rank", type=int)
    p.add_argument("--seconds", type=float, default=4.0, help="at most this long")
    p.add_argument("--until", default=None, help="stop once this file exists")
    p.add_argument("--flush-interval", type=float, default=0.05)
    p.add_argument("--spans-per-step", type=int, default=40)
    p.add_argument("--step-ms", type=float, default=5.0)
    args = p.parse_args()
    anchor = time.time_ns()
    run = Run(
        run_id="",
        rank=args.rank,
        host="rw-test",
        pid=os.getpid(),
        command="rw_writer",
        world_size=8,
        started_at_unix_ns=anchor,
        tool_version="test",
        source="watch",
        meta={},
    )
    writer = SegmentWriter(args.run_dir, run, flush_interval_s=args.flush_interval)
    t0 = time.perf_counter_ns()
    emitted = steps = 0
    step_s: list[float] = []
    step_unix: list[float] = []
    deadline = time.monotonic() + args.seconds
    stop = Path(args.until) if args.until else None
    while time.monotonic() < deadline and not (stop is not None and steps % 10 == 0 and stop.exists()):
        s0 = time.perf_counter()
        step_unix.append(time.time())
        start = time.perf_counter_ns() - t0
        for i in range(args.spans_per_step):
            a = time.perf_counter_ns() - t0
            writer.emit_span(
                Span(rank=args.rank, kind="phase", name=f"op{i % 7}", start_ns=a, end_ns=a + 1000,
                     category="compute", pid=run.pid, tid=1, step=steps)
            )  # fmt: skip
            emitted += 1
        time.sleep(args.step_ms / 1000)
        end = time.perf_counter_ns() - t0
        writer.emit_span(
            Span(rank=args.rank, kind="step", name=f"step {steps}", start_ns=start, end_ns=end,
                 category=None, pid=run.pid, tid=1, step=steps)
        )  # fmt: skip
        emitted += 1
        steps += 1
        step_s.append(time.perf_counter() - s0)
    writer.close()
    out = {"rank": args.rank, "emitted": emitted, "steps": steps, "step_s": step_s, "step_unix": step_unix}
    out.update(dropped=writer.dropped_spans, notes=list(writer._notes))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
