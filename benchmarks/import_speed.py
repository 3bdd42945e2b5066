"""Import + time-budget throughput: `gpuwatch import` then `gpuwatch summary --json`, as a user runs them
(two processes), against HolisticTraceAnalysis's parse + temporal breakdown on the same files.

`gpuwatch import` leaves the run's summary next to it (it analyses the columns it has just written), so the
`summary` a user runs next only reads that back; the table also shows `summary --no-cache`, the summary
recomputed from the store (what a run gpuwatch did not import costs), and the ratio with that instead.

Each tool runs in its own process; wall time is the best of `--repeat` runs, peak RSS the largest
resident set of a process (`os.wait4`'s rusage of that very child). HTA runs in its own virtualenv
(`--hta-python`, default /work/hta-venv/bin/python or $GPUWATCH_HTA_PYTHON; create it with
`python3 -m venv /work/hta-venv && /work/hta-venv/bin/pip install traceinsight`, the package that ships
HTA 0.6); without it the benchmark still runs and says so.

Inputs: the real traces in ../shared/traces (when present), real traces named with --trace, and generated
ones (benchmarks/make_big_trace.py): a 54 MB / 216k-event trace (the size of HTA's largest test traces, with
the event mix of the real trace_diff_control/control.json.gz) and a million-event trace. Generated files are
cached in --cache.

The real production trace of issue 14 is HTA's own largest test trace (53.7 MB, 216,092 events):

    git clone --depth 1 https://github.com/facebookresearch/HolisticTraceAnalysis /tmp/hta-src
    python benchmarks/import_speed.py --trace /tmp/hta-src/tests/data/df_index_resolver/df_index_resolver.json.gz

Scale (--scale): trace sets far beyond HTA's reach (8 ranks x 1M events, about 2 GB of JSON), imported and
summarized as one run; the table gives events/s and peak RSS from 100k to 10M events (1 x 100k, 1 x 1M,
8 x 1M, 8 x 1.25M). HTA is not run on them. Generating them takes about 7 minutes the first time.

    python benchmarks/import_speed.py                 # shared, --trace and generated inputs
    python benchmarks/import_speed.py --only 216k     # one input
    python benchmarks/import_speed.py --scale         # the scale table only

gpuwatch's own modules are byte-compiled first (`compileall`), as `pip install` does: a checkout run with
PYTHONDONTWRITEBYTECODE=1 would otherwise compile them in every process (0.08 s of a 0.3 s start).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "traces" / "hta"
DEFAULT_HTA = os.environ.get("GPUWATCH_HTA_PYTHON", "/work/hta-venv/bin/python")

HTA_SCRIPT = r"""
import json, logging, sys, time, warnings
logging.disable(logging.CRITICAL)
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
from hta.trace_analysis import TraceAnalysis
analysis = TraceAnalysis(trace_dir=sys.argv[1])
df = analysis.get_temporal_breakdown(visualize=False)
out = {int(r["rank"]): [float(r["idle_time_pctg"]), float(r["compute_time_pctg"]),
                        float(r["non_compute_time_pctg"])] for _, r in df.iterrows()}
print(json.dumps({"seconds_in_process": time.perf_counter() - t0, "temporal": out}))
"""


@dataclass
class Measured:
    seconds: float
    """Wall time, best of the runs."""
    cpu_seconds: float
    """User + system CPU time of that run (less sensitive than wall time to other work on the machine)."""
    peak_rss_mib: float
    """Largest resident set over the runs."""
    stdout: str


# Runs one command as its own child and reports that child alone: wall time, CPU time and peak RSS
# (RUSAGE_CHILDREN of a process whose only child it is). Its stdout passes through.
_PROBE = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "code = subprocess.run(sys.argv[1:], stderr=subprocess.DEVNULL).returncode\n"
    "wall = time.perf_counter() - t\n"
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'code': code, 'wall': wall, 'cpu': ru.ru_utime + ru.ru_stime,"
    " 'rss_mib': ru.ru_maxrss / 1024}), file=sys.stderr)\n"
)


def run_once(argv: list[str]) -> tuple[float, float, float, str]:
    """One run of `argv` in its own process: (wall s, CPU s, peak RSS MiB, stdout)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, env=env)
    m = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    if m["code"] != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... failed with exit code {m['code']}")
    return m["wall"], m["cpu"], m["rss_mib"], proc.stdout.decode()


def measure(make_argv: Callable[[], list[str]], repeat: int) -> Measured:
    """Best wall time of `repeat` runs (with that run's CPU time), and the largest peak RSS."""
    runs = [run_once(make_argv()) for _ in range(repeat)]
    wall, cpu, _, stdout = min(runs, key=lambda r: r[0])
    return Measured(wall, cpu, max(r[2] for r in runs), stdout)


@dataclass
class Input:
    label: str
    path: Path
    """A trace file, or a directory of per-rank trace files (one run)."""
    events: int
    mbytes: float
    hta: bool = True
    """Also run HTA on it (not on the scale sets: far beyond its patience and this machine's memory)."""


class _EventCount(msgspec.Struct):
    traceEvents: list[msgspec.Raw] = []


def count_events(path: Path) -> tuple[int, float]:
    """Events in a trace (or every trace of a directory) and the uncompressed size in MB."""
    if path.is_dir():
        counts = [count_events(p) for p in sorted(path.glob("*.json*"))]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return len(msgspec.json.decode(data, type=_EventCount).traceEvents), len(data) / 1e6


SCALE_SETS = (
    ("1 x 100k", 1, 100_000),
    ("1 x 1M", 1, 1_000_000),
    ("8 x 1M", 8, 1_000_000),
    ("8 x 1.25M", 8, 1_250_000),
)
"""The scale table: (label, ranks, events per rank)."""


def scale_inputs(cache: Path) -> list[Input]:
    """The scale sets, generated on first use (one directory of per-rank traces each), then cached."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_big_trace import GENERATOR_VERSION, generate

    found = []
    for label, ranks, events in SCALE_SETS:
        folder = cache / f"scale_{ranks}x{events}_v{GENERATOR_VERSION}"
        folder.mkdir(parents=True, exist_ok=True)
        for rank in range(ranks):
            path = folder / f"rank{rank}.json.gz"
            if not path.exists():
                t = time.perf_counter()
                tmp = path.with_name(f".{path.name}.tmp.json.gz")
                n, size = generate(tmp, events, rank=rank)  # ranks of one 8-rank job
                tmp.replace(path)
                print(
                    f"generated {path} ({n} events, {size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s",
                    file=sys.stderr,
                )
        found.append(Input(f"scale {label}", folder, *count_events(folder), hta=False))
    return found


def inputs(cache: Path, only: str | None, traces: list[Path]) -> list[Input]:
    """The shared real traces that exist and those named with --trace, then the generated ones (made on
    first use, then cached)."""

    def wanted(label: str) -> bool:
        return not only or only.lower() in label.lower()

    found: list[Input] = []
    shared = {
        "control (35 MB, real)": SHARED / "trace_diff_control" / "control.json.gz",
        "nccl_parser_config (real)": SHARED / "nccl_parser_config" / "nccl_data.json.gz",
        "trace_filter rank 0 (real)": SHARED / "trace_filter" / "sampled_rank-0.json.gz",
    }
    if not SHARED.exists():
        print(f"shared traces not found at {SHARED}: generated traces only", file=sys.stderr)
    for label, path in shared.items():
        if path.exists() and wanted(label):
            found.append(Input(label, path, *count_events(path)))
    for path in traces:
        label = f"{path.name} (real, --trace)"
        if wanted(label):
            found.append(Input(label, path, *count_events(path)))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_big_trace import GENERATOR_VERSION, generate

    cache.mkdir(parents=True, exist_ok=True)
    for label, events in (("generated 216k", 216_000), ("generated 1M", 1_000_000)):
        if not wanted(label):
            continue
        path = cache / f"big_{events}_v{GENERATOR_VERSION}.json.gz"
        if not path.exists():
            t = time.perf_counter()
            n, size = generate(path, events)
            print(
                f"generated {path} ({n} events, {size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s",
                file=sys.stderr,
            )
        found.append(Input(label, path, *count_events(path)))
    return found


def hta_python(arg: str | None) -> str | None:
    exe = arg or DEFAULT_HTA
    if not exe or not Path(exe).exists():
        return None
    probe = subprocess.run([exe, "-c", "import hta.trace_analysis"], capture_output=True)
    return exe if probe.returncode == 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--repeat", type=int, help="runs per measurement, the best time kept (default 3; 1 with --scale)"
    )
    ap.add_argument("--only", help="only inputs whose label contains this")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "gpuwatch-bench")
    ap.add_argument("--hta-python", help="python of a virtualenv where HTA imports")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--trace", type=Path, action="append", default=[], help="a real trace file to add (repeatable)"
    )
    ap.add_argument("--scale", action="store_true", help="the scale table (8 x 1M events and more) instead")
    args = ap.parse_args()
    args.repeat = args.repeat or (1 if args.scale else 3)
    for path in args.trace:
        if not path.is_file():
            ap.error(f"--trace {path}: no such file")
    import compileall  # as `pip install` does: no process of the benchmark compiles gpuwatch's sources

    for package in ("gpuwatch", "collectors", "reports"):
        compileall.compile_dir(ROOT / package, quiet=1)

    hta = hta_python(args.hta_python)
    if hta is None:
        print(
            "HTA unavailable (no virtualenv with `hta` importable; see the docstring): gpuwatch only",
            file=sys.stderr,
        )
    rows = []
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="gpuwatch-bench-"))
    try:
        chosen = scale_inputs(args.cache) if args.scale else inputs(args.cache, args.only, args.trace)
        for inp in chosen:
            row = bench_one(inp, work, hta, args.repeat)
            rows.append(row)
            print(_line(row), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(_table(rows, hta is not None and any("hta_s" in r for r in rows)))
    # other work on the machine slows both tools; the ratios compare runs made side by side
    print(
        f"\n{os.cpu_count()} cores, load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after; "
        f"best wall time of {args.repeat} runs per tool (HTA: {max(1, args.repeat - 1)}) with that run's CPU time; "
        "largest peak RSS of the runs."
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def bench_one(inp: Input, work: Path, hta: str | None, repeat: int) -> dict:
    """gpuwatch import + summary --json on one input (and HTA on the same file); one table row."""
    gw = [sys.executable, "-m", "gpuwatch"]
    run_dir = work / "run"

    def import_once() -> list[str]:
        shutil.rmtree(run_dir, ignore_errors=True)
        return [*gw, "import", str(inp.path), "--out", str(run_dir)]

    imported = measure(import_once, repeat)
    summary = measure(lambda: [*gw, "summary", str(run_dir), "--json"], repeat)
    # the same summary recomputed from the store (what a run gpuwatch did not import itself costs)
    fresh = measure(lambda: [*gw, "summary", str(run_dir), "--json", "--no-cache"], repeat)
    doc = json.loads(summary.stdout)
    assert doc == json.loads(fresh.stdout), "stored summary differs from a fresh analysis"
    ours_t = {
        r["rank"]: [r["temporal_pct"][k] for k in ("idle", "compute", "non_compute")] for r in doc["ranks"]
    }
    total = imported.seconds + summary.seconds
    row = {
        "input": inp.label,
        "events": inp.events,
        "mb": inp.mbytes,
        "import_s": imported.seconds,
        "summary_s": summary.seconds,
        "summary_fresh_s": fresh.seconds,
        "total_s": total,
        "cpu_s": imported.cpu_seconds + summary.cpu_seconds,
        "import_rss_mib": imported.peak_rss_mib,
        "summary_rss_mib": summary.peak_rss_mib,
        "events_per_s": inp.events / total,
    }
    if hta is None or not inp.hta:
        return row
    hdir = work / "hta"  # HTA reads a directory of traces
    shutil.rmtree(hdir, ignore_errors=True)
    hdir.mkdir()
    (hdir / inp.path.name).symlink_to(inp.path)
    h = measure(lambda: [hta, "-c", HTA_SCRIPT, str(hdir)], max(1, repeat - 1))
    hta_t = {int(k): v for k, v in json.loads(h.stdout.strip().splitlines()[-1])["temporal"].items()}
    row.update(
        hta_s=h.seconds,
        hta_cpu_s=h.cpu_seconds,
        hta_rss_mib=h.peak_rss_mib,
        time_ratio=total / h.seconds,
        fresh_time_ratio=(imported.seconds + fresh.seconds) / h.seconds,
        cpu_ratio=row["cpu_s"] / h.cpu_seconds,
        rss_ratio=max(imported.peak_rss_mib, summary.peak_rss_mib) / h.peak_rss_mib,
        temporal_max_diff_pp=max(
            abs(a - b) for r in hta_t for a, b in zip(ours_t.get(r, [999.0] * 3), hta_t[r])
        ),
    )
    return row


def _line(r: dict) -> str:
    s = f"{r['input']}: import {r['import_s']:.2f} s + summary {r['summary_s']:.2f} s"
    if "hta_s" in r:
        s += f" vs HTA {r['hta_s']:.2f} s (ratio {r['time_ratio']:.3f}"
        s += f"; {r['fresh_time_ratio']:.3f} with the summary recomputed from the store)"
    return s


def _table(rows: list[dict], with_hta: bool) -> str:
    head = [
        "input",
        "events",
        "MB",
        "import s",
        "summary s",
        "summary from store s",
        "total s",
        "CPU s",
        "events/s",
        "RSS MiB (imp/sum)",
    ]
    if with_hta:
        head += [
            "HTA s",
            "HTA CPU s",
            "HTA MiB",
            "time ratio",
            "ratio, summary from store",
            "CPU ratio",
            "RSS ratio",
            "temporal diff pp",
        ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["input"],
            f"{r['events']:,}",
            f"{r['mb']:.0f}",
            f"{r['import_s']:.2f}",
            f"{r['summary_s']:.2f}",
            f"{r['summary_fresh_s']:.2f}",
            f"{r['total_s']:.2f}",
            f"{r['cpu_s']:.2f}",
            f"{r['events_per_s'] / 1e3:.0f}k",
            f"{r['import_rss_mib']:.0f} / {r['summary_rss_mib']:.0f}",
        ]
        if with_hta and "hta_s" in r:
            cells += [
                f"{r['hta_s']:.2f}",
                f"{r['hta_cpu_s']:.2f}",
                f"{r['hta_rss_mib']:.0f}",
                f"{r['time_ratio']:.3f} (1/{1 / r['time_ratio']:.1f})",
                f"{r['fresh_time_ratio']:.3f} (1/{1 / r['fresh_time_ratio']:.1f})",
                f"{r['cpu_ratio']:.3f} (1/{1 / r['cpu_ratio']:.1f})",
                f"{r['rss_ratio']:.2f}",
                f"{r['temporal_max_diff_pp']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
