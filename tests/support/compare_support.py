"""Helpers of the compare tests: planted noisy runs from synthetic traces, hand-made summaries for the job
view, and the two format checks (GFM tables with markdown-it-py, JUnit against tests/support/junit.xsd).

Noisy synthetic runs: every phase of every step of `synthetic_kineto.Plan` is scaled by its own lognormal
jitter (10%), a step now and then gets a host-overhead spike (a logging flush), and the whole run by a
run-level factor (3%: separate runs of one GPU job differ a little). A planted regression adds 10% of the
base step time to one category in every step: a slower input pipeline (`data_loading`) or a synchronous
checkpoint put back (`checkpoint_io`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from synthetic_kineto import MS, Plan, RankTrace

SUPPORT = Path(__file__).resolve().parent
JUNIT_XSD = SUPPORT / "junit.xsd"

BASE_PLAN = Plan(kernels=8, data_loading_ns=6 * MS, checkpoint_ns=1 * MS)
JITTERED = (
    "data_loading_ns",
    "cpu_preprocessing_ns",
    "copy_ns",
    "memset_ns",
    "kernel_ns",
    "exposed_sync_ns",
    "host_overhead_ns",
    "checkpoint_ns",
    "unattributed_ns",
)


def base_step_ns(plan: Plan = BASE_PLAN, *, device: bool = True) -> int:
    """Wall time of one un-jittered step of `plan` (what 10% of the step time is measured against)."""
    tr = RankTrace(device=device)
    tr.planted_step(1, 0, plan)
    return tr.wall_ns()


def noisy_trace(
    seed: int,
    *,
    steps: int = 14,
    device: bool = True,
    regress: str | None = None,
    regress_pct: float = 10.0,
    rank: int = 0,
    world_size: int = 1,
) -> RankTrace:
    """One run: `steps` jittered steps (seeded), with `regress` ("data_loading" or "checkpoint_io") grown
    by `regress_pct` percent of the base step time in every step."""
    rng = np.random.default_rng(seed)
    run_scale = 1.0 + rng.normal(0.0, 0.03)
    extra = int(base_step_ns(device=device) * regress_pct / 100.0) if regress else 0
    tr = RankTrace(rank, world_size, device=device)
    t = 100_000
    for i in range(steps):
        jitter = {
            name: max(1_000, int(getattr(BASE_PLAN, name) * run_scale * rng.lognormal(0.0, 0.10)))
            for name in JITTERED
        }
        if rng.random() < 0.1:
            jitter["host_overhead_ns"] *= 4
        if regress == "data_loading":
            jitter["data_loading_ns"] += extra
        elif regress == "checkpoint_io":
            jitter["checkpoint_ns"] += extra
        elif regress is not None:
            raise ValueError(regress)
        # kernel_ns is per kernel; keep it a whole number of microseconds for the integer-ts writers
        jitter["kernel_ns"] = max(1_000, jitter["kernel_ns"] // 1_000 * 1_000)
        t = tr.planted_step(i + 1, t, replace(BASE_PLAN, **jitter))
    return tr


def import_run(trace: RankTrace, out: Path):
    """Write the trace, import it as a run (the real importer and budget engine), return its Summary."""
    from gpuwatch.attribution.summary import load_summary
    from gpuwatch.capture.trace_import import import_to_run

    out.mkdir(parents=True, exist_ok=True)
    path = trace.write(out / f"rank{trace.rank}.pt.trace.json")
    import_to_run([str(path)], out / "run")
    return load_summary(out / "run")


def gfm_tables(markdown: str) -> list[list[list[str]]]:
    """Every table of a Markdown document as parsed by markdown-it-py (CommonMark + GFM tables): a list of
    rows (header first), each a list of cell texts."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")
    tables: list[list[list[str]]] = []
    row: list[str] | None = None
    for tok in md.parse(markdown):
        if tok.type == "table_open":
            tables.append([])
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "inline" and row is not None:
            row.append(tok.content)
        elif tok.type == "tr_close" and row is not None:
            tables[-1].append(row)
            row = None
    return tables


def validate_junit(xml_text: str) -> None:
    """Raise unless the document is valid against the JUnit (Surefire/Jenkins) schema."""
    import xmlschema

    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(xml_text)
