"""SIGKILL soak: a 2-rank watched trainer (gloo, tests/support/fault_trainer.py) killed at 50 random moments.

Each trial starts both ranks, SIGKILLs both at a random moment 1-4 s after they both stepped, and reads the
run back (tests/support/kill_trials.py). Prints, over all trials: how many runs were readable, and per rank
the steps logged by the program against the step spans the run holds, and `lost_s` (how long before the
kill the oldest logged step the run does not hold was done) against the flush interval.

    python benchmarks/kill_soak.py                # 50 trials
    python benchmarks/kill_soak.py --trials 10 --seed 3

Run it alone on the machine: two trainers per trial share its cores.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from kill_trials import FLUSH_INTERVAL_S, kill_trial  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    trials = []
    t0 = time.perf_counter()
    for i in range(args.trials):
        with tempfile.TemporaryDirectory() as tmp:
            trial = kill_trial(Path(tmp), rng)
        trials.append(trial)
        ranks = " ".join(
            f"r{r.rank}: {r.recorded}/{r.logged} steps, lost {1000 * r.lost_s:.0f} ms" for r in trial.ranks
        )
        print(f"trial {i + 1:2d}: killed {trial.kill_after_s:.2f} s in; "
              f"{'readable' if trial.readable else 'UNREADABLE ' + trial.error}; {ranks}", flush=True)  # fmt: skip
    outcomes = [r for t in trials for r in t.ranks]
    lost = [r.lost_s for r in outcomes]
    readable = sum(t.readable for t in trials)
    over = [r for r in outcomes if r.recorded > r.logged + 1]
    print(
        f"\n{args.trials} trials in {time.perf_counter() - t0:.0f} s; flush interval {FLUSH_INTERVAL_S * 1000:.0f} ms"
    )
    print(f"readable runs: {readable}/{args.trials}")
    if lost:
        print(
            f"lost per rank (kill time - oldest logged step not in the run): median {1000 * statistics.median(lost):.0f} ms, "
            f"max {1000 * max(lost):.0f} ms ({max(lost) / FLUSH_INTERVAL_S:.2f} flush intervals)"
        )
        steps_lost = [r.logged - r.recorded for r in outcomes]
        print(f"steps lost per rank: median {statistics.median(steps_lost):.0f}, max {max(steps_lost)}")
    print(f"ranks holding more steps than they logged (+1 in progress allowed): {len(over)}")
    return 0 if readable == args.trials and not over else 1


if __name__ == "__main__":
    sys.exit(main())
