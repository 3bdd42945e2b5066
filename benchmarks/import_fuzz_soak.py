"""The importer fuzz soak: many more damaged traces than CI runs, with a fresh seed each time.

The same cases and oracle as tests/unit/test_import_fuzz.py (tests/support/trace_mutations.py,
tests/support/fuzz_oracle.py): pieces of the real shared traces, mutated and damaged; each must import or
fail with one clear line, within the per-case time limit. One imported case in eight is also analysed.
Prints the rate, the split between imported and refused cases, and every crash with the seed that replays
it (`--seed S --first I --cases 1`).

    python benchmarks/import_fuzz_soak.py                      # 50,000 cases, random seed
    python benchmarks/import_fuzz_soak.py --cases 200000 --seed 7
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from fuzz_oracle import CaseTimeout, run_case  # noqa: E402
from trace_mutations import load_corpus, random_trace  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces" / "hta"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    ap.add_argument("--first", type=int, default=0, help="index of the first case (to replay one)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    corpus = load_corpus(TRACES)
    print(f"seed {seed}: {args.cases} cases from {len(corpus)} pieces of the traces in {TRACES}", flush=True)
    outcomes: Counter[str] = Counter()
    crashes: list[str] = []
    slowest = (0.0, -1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.first, args.first + args.cases):
            case = random_trace(random.Random(seed * 1_000_003 + i), corpus)
            t = time.perf_counter()
            try:
                ok = run_case(case, Path(tmp), small_chunks=i % 10 == 0, analyse=i % 8 == 0)
                outcomes["imported" if ok else "refused with one line"] += 1
            except (Exception, CaseTimeout) as exc:
                outcomes["crashed"] += 1
                crashes.append(
                    f"  --seed {seed} --first {i} --cases 1: {case.steps}: {type(exc).__name__}: {exc}"
                )
            slowest = max(slowest, (time.perf_counter() - t, i))
            if (i + 1 - args.first) % 5000 == 0:
                print(f"  {i + 1 - args.first} cases, {time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - t0
    print(f"{args.cases} cases in {wall:.0f} s ({1000 * wall / args.cases:.1f} ms a case); slowest case "
          f"{slowest[1]}: {slowest[0]:.2f} s")  # fmt: skip
    for outcome, n in outcomes.most_common():
        print(f"  {outcome}: {n}")
    for line in crashes[:50]:
        print(line)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
