"""compare a candidate run with a baseline: fail CI on an efficiency regression, not on noise

Compare two runs (run directories or `gpuwatch summary --json` files) step by step: step time, compute share
and every idle category, each with a bootstrap interval over the steps both runs share. A check fails only
when its change is past its limit and beyond the runs' own step-to-step spread; the verdict names what
regressed, by how much, and the regions that grew.

`gpuwatch compare BASE CAND`: a CI gate on training efficiency (Markdown, JUnit, JSON; exit 1 on a
regression, 2 when the runs cannot be compared or there are too few steps to decide).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gpuwatch.cli.arguments import CommandText, finite_nonnegative
from gpuwatch.errors import UsageError

EPILOG = """\
limits (a change fails only when it is past its limit across its whole 95% interval, so step-to-step
noise never fails a build on its own; on CPU-only runs, whose math speeds up and slows down with whatever
else the machine runs, step time and compute share are shown but gated only when a limit is given):
  --max-step-time-increase PCT   median step time, percent of the base   (default 10 on device runs;
                                 CPU-only runs: shown, gated only when given)
  --max-compute-drop PP          compute share of step time, points     (default 5 on device runs;
                                 CPU-only runs: shown, gated only when given)
  --max-increase CATEGORY=PP     an idle category's time per step, percent of the base step time
                                 (default 5 for each of data_loading, cpu_preprocessing, sync,
                                 checkpoint_io, memcpy, host_overhead, unattributed)

outputs: Markdown on stdout (appended to $GITHUB_STEP_SUMMARY when set), --json instead, --junit FILE.
exit codes: 0 pass, 1 regression, 2 usage error, runs that cannot be compared, or too few steps.

  gpuwatch summary --json runs/main > baseline.json     # keep as a CI artifact
  gpuwatch compare baseline.json runs/pr --junit compare.xml
"""


TEXT = CommandText.from_doc(__doc__, epilog=EPILOG, as_written=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from reports.compare.model import DEFAULT_MIN_STEPS, DEFAULT_WARMUP_STEPS

    p.add_argument("base", metavar="BASE", help="baseline: a run directory or a summary --json file")
    p.add_argument("cand", metavar="CAND", help="candidate: a run directory or a summary --json file")
    p.add_argument("--max-step-time-increase", type=finite_nonnegative, metavar="PCT", default=None)
    p.add_argument("--max-compute-drop", type=finite_nonnegative, metavar="PP", default=None)
    p.add_argument(
        "--max-increase",
        action="append",
        default=[],
        metavar="CATEGORY=PP",
        help="limit for one idle category (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as one JSON document on stdout")
    p.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report (one testcase per check)")
    p.add_argument(
        "--min-steps",
        type=int,
        default=DEFAULT_MIN_STEPS,
        metavar="N",
        help=f"fewer common steps: undecided, exit 2 (default {DEFAULT_MIN_STEPS})",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=DEFAULT_WARMUP_STEPS,
        metavar="N",
        help=f"first steps of each run left out (default {DEFAULT_WARMUP_STEPS})",
    )
    p.add_argument("--confidence", type=float, default=0.95, metavar="X", help="interval confidence (0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0: reproducible)")


def run(args: argparse.Namespace) -> int:
    from reports.compare import compare, load_side, render_junit, render_markdown
    from reports.compare.model import Thresholds, Verdict

    thresholds = _thresholds(args, Thresholds)
    base, cand = load_side(args.base), load_side(args.cand)
    cmp = compare(base, cand, thresholds, base_label=str(args.base), cand_label=str(args.cand))

    markdown = render_markdown(cmp)
    if args.junit:
        _write(Path(args.junit), render_junit(cmp), "--junit")
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        try:
            with open(summary_path, "a", encoding="utf-8") as fh:
                fh.write(markdown + "\n")
        except OSError as exc:  # the verdict still stands; say once that the job summary did not get it
            print(f"gpuwatch compare: could not append to $GITHUB_STEP_SUMMARY: {exc}", file=sys.stderr)
    if args.json:
        json.dump(cmp.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(markdown)
    if cmp.verdict in (Verdict.INCOMPARABLE, Verdict.UNDECIDED):
        what = "cannot compare" if cmp.verdict is Verdict.INCOMPARABLE else "undecided"
        print(f"gpuwatch compare: {what}: {'; '.join(cmp.reasons)}", file=sys.stderr)
    elif cmp.verdict is Verdict.REGRESSION:
        names = ", ".join(dict.fromkeys(c.metric for c in cmp.job_checks() if c.outcome.value == "regressed"))
        print(f"gpuwatch compare: regression: {names}", file=sys.stderr)
    return cmp.exit_code


def _thresholds(args: argparse.Namespace, thresholds_cls: Any) -> Any:
    from reports.compare.model import IDLE_CATEGORIES

    limits: dict[str, float] = {}
    for item in args.max_increase:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise UsageError(f"--max-increase {item!r}: expected CATEGORY=PP, e.g. data_loading=5")
        if name == "compute":
            raise UsageError(
                "--max-increase compute: compute growing is not a regression; use --max-compute-drop"
            )
        if name not in IDLE_CATEGORIES:
            raise UsageError(
                f"--max-increase {item!r}: unknown category {name!r}; one of {', '.join(IDLE_CATEGORIES)}"
            )
        limits[name] = finite_nonnegative(value)
    if args.min_steps < 2:
        raise UsageError("--min-steps must be at least 2 (a spread needs two steps)")
    if args.warmup_steps < 0:
        raise UsageError("--warmup-steps must be 0 or more")
    if not 0.5 <= args.confidence < 1.0:
        raise UsageError("--confidence must be in [0.5, 1), e.g. 0.95")
    defaults = thresholds_cls()
    return thresholds_cls(
        step_time_increase_pct=args.max_step_time_increase,
        compute_drop_pp=args.max_compute_drop,
        category_increase_pp={**defaults.category_increase_pp, **limits},
        min_steps=args.min_steps,
        warmup_steps=args.warmup_steps,
        confidence=args.confidence,
        seed=args.seed,
    )


def _write(path: Path, text: str, flag: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write ({exc.strerror or exc})") from None
