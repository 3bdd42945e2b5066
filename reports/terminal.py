"""`gpuwatch summary`: the run analysis as rich tables on a terminal (stdout carries only this)."""

from __future__ import annotations

import re
from typing import Any

from gpuwatch.attribution.summary import Summary
from gpuwatch.records import CATEGORIES

SHORT = {
    "compute": "compute",
    "data_loading": "data",
    "cpu_preprocessing": "cpu_pre",
    "sync": "sync",
    "checkpoint_io": "ckpt",
    "memcpy": "memcpy",
    "host_overhead": "host",
    "unattributed": "unattr",
}


def render_summary(summary: Summary, console: Any = None) -> None:
    """Print a run's Summary as tables: budget per rank, steps, the rank others wait for, advice."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    summary = Summary.from_json(_printable(summary.to_json()))  # names are data: no terminal escapes
    console.print(Text(f"gpuwatch run {summary.run_id}  ({summary.run_dir})", style="bold"))

    budget = Table(
        title="Time budget per rank (% of step wall time)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    budget.add_column("rank", justify="right")
    budget.add_column("steps", justify="right")
    budget.add_column("step ms", justify="right")
    for c in CATEGORIES:
        budget.add_column(SHORT[c.value], justify="right")
    for r in summary.ranks:
        cells = [_pct_cell(r.budget_pct.get(c.value), c.value) for c in CATEGORIES]
        budget.add_row(str(r.rank), str(r.steps), f"{r.step_time_ms.median:.1f}", *cells)
    console.print(budget)
    console.print(
        Padding(
            Text(", ".join(f"{short}={name}" for name, short in SHORT.items() if short != name), style="dim"),
            (0, 0, 0, 1),
        )
    )

    temporal = Table(
        title="Device time (HTA temporal breakdown, % of window)", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for name in ("rank", "basis", "idle", "compute", "non-compute", "sync: transfer", "sync: waiting"):
        temporal.add_column(name, justify="right")
    for r in summary.ranks:
        t = r.temporal_pct
        s = r.sync_split_pct
        temporal.add_row(
            str(r.rank),
            str(r.temporal_basis or "-"),
            f"{t.idle:.1f}",
            f"{t.compute:.1f}",
            f"{t.non_compute:.1f}",
            f"{s.transfer:.1f}",
            f"{s.wait:.1f}",
        )
    console.print(temporal)

    st = summary.straggler
    if st:
        doing = ", ".join(f"{escape(k)} {v:.0f} ms" for k, v in st.doing_ms[:3])  # names are data, not markup
        console.print(
            f"[bold]Ranks wait for rank {st.rank}[/bold]: {st.caused_wait_ms:.0f} ms of waiting "
            f"({st.share_pct:.0f}% of all), over {st.matched_collectives} matched collectives; "
            f"meanwhile it was doing: {doing}"
        )
        if st.tag_cause is not None:
            console.print(Padding(Text(st.tag_cause.text), (0, 0, 0, 2)))
    if summary.stages:
        console.print(_stage_table(summary))

    recs = summary.recommendations
    if recs:
        console.print(Text("What to change", style="bold underline"))
        for i, rec in enumerate(recs[:6], 1):
            where = "all ranks" if rec.rank is None else f"rank {rec.rank}"
            console.print(Text(f"{i}. [{rec.category}, {where}] {rec.title}", style="bold"))
            console.print(Padding(Text(rec.evidence), (0, 0, 0, 3)))
            console.print(Padding(Text(f"-> {rec.change}", style="cyan"), (0, 0, 0, 3)))
    else:
        console.print("No category above its threshold: nothing to change.")
    for note in summary.notes:
        console.print(Text(f"note: {note}", style="yellow"))


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(value: Any) -> Any:
    """Every string of a summary document with its control characters shown as U+FFFD: a kernel or tag
    name from a trace must not move the cursor, clear the screen or retitle the terminal (rich passes ESC
    through)."""
    if isinstance(value, str):
        return _CONTROL.sub("\ufffd", value)
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def _stage_table(summary: Summary) -> Any:
    """Per stage and rank: steps, median step time and the budget (% of the stage's step wall time)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Time budget per stage (% of the stage's step wall time)", box=box.SIMPLE_HEAD)
    for name in ("stage", "rank", "steps", "step ms"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    for c in CATEGORIES:
        table.add_column(SHORT[c.value], justify="right")
    for stage in summary.stages:
        for r in stage.ranks:
            cells = [_pct_cell(r.budget_pct.get(c.value), c.value) for c in CATEGORIES]
            table.add_row(
                escape(stage.stage), str(r.rank), str(r.steps), f"{r.step_time_ms.median:.1f}", *cells
            )
    return table


def _pct_cell(value: float, category: str) -> Any:
    from rich.text import Text

    style = "green" if category == "compute" else ("red" if value >= 10 else ("yellow" if value >= 3 else ""))
    return Text(f"{value:.1f}", style=style)
