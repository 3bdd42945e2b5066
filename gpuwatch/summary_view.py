"""`gpuwatch summary`: the run analysis as rich tables on a terminal (stdout carries only this)."""

from __future__ import annotations

from typing import Any

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


def render_summary(doc: dict[str, Any], console: Any = None) -> None:
    """Print the summary document (`analysis.to_json` shape) as tables: budget per rank, steps, advice."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    console.print(Text(f"gpuwatch run {doc['run_id']}  ({doc['run_dir']})", style="bold"))

    budget = Table(title="Time budget per rank (% of step wall time)", show_lines=False)
    budget.add_column("rank", justify="right")
    budget.add_column("steps", justify="right")
    budget.add_column("step ms", justify="right")
    for c in CATEGORIES:
        budget.add_column(SHORT[c.value], justify="right")
    for r in doc["ranks"]:
        pct = r["budget_pct"]
        cells = [_pct_cell(pct[c.value], c.value) for c in CATEGORIES]
        budget.add_row(str(r["rank"]), str(r["steps"]), f"{r['step_time_ms']['median']:.1f}", *cells)
    console.print(budget)
    console.print(
        "  " + ", ".join(f"{short}={name}" for name, short in SHORT.items() if short != name), style="dim"
    )

    temporal = Table(title="Device time (HTA temporal breakdown, % of window)")
    for name in ("rank", "basis", "idle", "compute", "non-compute", "sync: transfer", "sync: waiting"):
        temporal.add_column(name, justify="right")
    for r in doc["ranks"]:
        t = r["temporal_pct"]
        s = r["sync_split_pct"]
        temporal.add_row(
            str(r["rank"]),
            str(r.get("temporal_basis") or "-"),
            f"{t['idle']:.1f}",
            f"{t['compute']:.1f}",
            f"{t['non_compute']:.1f}",
            f"{s['transfer']:.1f}",
            f"{s['wait']:.1f}",
        )
    console.print(temporal)

    s = doc.get("straggler")
    if s:
        doing = ", ".join(f"{k} {v:.0f} ms" for k, v in list(s["doing_ms"].items())[:3])
        console.print(
            f"[bold]Ranks wait for rank {s['rank']}[/bold]: {s['caused_wait_ms']:.0f} ms of waiting "
            f"({s['share_pct']:.0f}% of all), over {s['matched_collectives']} matched collectives; "
            f"meanwhile it was doing: {doing}"
        )

    recs = doc["recommendations"]
    if recs:
        table = Table(title="What to change", show_lines=True)
        table.add_column("category")
        table.add_column("rank", justify="right")
        table.add_column("finding and evidence")
        table.add_column("change")
        for rec in recs[:6]:
            rank = "all" if rec["rank"] is None else str(rec["rank"])
            table.add_row(
                rec["category"], rank, Text(f"{rec['title']}\n{rec['evidence']}"), Text(rec["change"])
            )
        console.print(table)
    else:
        console.print("No category above its threshold: nothing to change.")
    for note in doc.get("notes", []):
        console.print(Text(f"note: {note}", style="yellow"))


def _pct_cell(value: float, category: str) -> Any:
    from rich.text import Text

    style = "green" if category == "compute" else ("red" if value >= 10 else ("yellow" if value >= 3 else ""))
    return Text(f"{value:.1f}", style=style)
