"""The dashboard's panels. Each is dumb: `show(...)` hands it the view to draw, it keeps it and redraws on
resize, and it never reads the run itself."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import events
from textual.widgets import Static

from gpuwatch.attribution.summary import CATEGORY_NAMES, RankSummary, Summary
from gpuwatch.tui import render as r
from gpuwatch.tui.follower import LiveView, ProcRow, RankLive, RunEvent
from gpuwatch.tui.messages import RankPicked


class Panel(Static):
    """A Static that rebuilds its content from the last model it was shown whenever its width changes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: tuple[Any, ...] | None = None

    def show(self, *model: Any) -> None:
        self._model = model
        self.update(self.build(max(self.content_size.width, 20), *model))

    def on_resize(self, event: events.Resize) -> None:
        if self._model is not None:
            self.update(self.build(max(self.content_size.width, 20), *self._model))

    def build(self, width: int, *model: Any) -> RenderableType:
        raise NotImplementedError


class TopHeader(Panel):
    """One line: the run, its state, the window. No clock: the screen shows run time only."""

    def build(self, width: int, *model: Any) -> RenderableType:
        run_dir, view, state, window_label = model
        out = Text(" gpuwatch top ", style="bold reverse")
        out.append(f" {run_dir} · ")
        style = {"following": "green", "ended": "bold", "paused": "yellow", "waiting": "yellow"}.get(
            state, ""
        )
        out.append(f"● {state}" if state == "following" else f"■ {state}", style=style)
        out.append(f" · {window_label}")
        if view is not None:
            out.append(
                f" · {len(view.ranks)} rank{'s' if len(view.ranks) != 1 else ''} · {view.data_s:.1f} s"
            )
            out.append(f" · run {view.run_id}")
        out.truncate(width, overflow="ellipsis")
        return out


class RankBars(Panel):
    """One line per rank: its budget over the window as one stacked bar, its compute share, step time."""

    def build(self, width: int, *model: Any) -> RenderableType:
        view, selected = model
        summary: Summary | None = view.summary if view is not None else None
        if summary is None or not summary.ranks:
            return Text("no steps yet", style="bright_black")
        live = {x.rank: x for x in view.ranks}
        lines = []
        for rs in summary.ranks:
            lines.append(self._line(width, rs, live.get(rs.rank), rs.rank == selected))
        return Group(*lines)

    def _line(self, width: int, rs: RankSummary, live: RankLive | None, selected: bool) -> Text:
        label = Text(
            f"{'▶' if selected else ' '}r{rs.rank:<3d}", style="bold reverse" if selected else "bold"
        )
        wall = rs.per_step.wall_ms if rs.per_step is not None else ()
        tail = Text(f" compute{r.pct(rs.budget_pct.compute)} step {r.ms(rs.step_time_ms.median):>9} ")
        tail.append_text(r.sparkline(wall, 10, style="cyan"))
        status = live.status if live is not None else "running"
        mark = {"running": " ●", "ended": " ■", "target_exited": " ✕"}.get(status, " ?")
        tail.append(mark, style="green" if status == "running" else "bright_black")
        bar_w = max(width - label.cell_len - tail.cell_len - 1, 8)
        line = Text.assemble(label, " ", r.stacked_bar(rs.budget_pct, bar_w), tail)
        line.truncate(width, overflow="ellipsis")
        return line

    def on_click(self, event: events.Click) -> None:
        if self._model is None or self._model[0] is None or self._model[0].summary is None:
            return
        ranks = self._model[0].summary.ranks
        if 0 <= event.y < len(ranks):
            self.post_message(RankPicked(ranks[event.y].rank))


class BudgetPanel(Panel):
    """The rank in focus: each category's share of the window, ms per step, its per-step trend."""

    def build(self, width: int, *model: Any) -> RenderableType:
        view, rank = model
        rs = _rank(view, rank)
        if rs is None:
            return Text("waiting for the first complete step", style="bright_black")
        ps = rs.per_step
        wall = ps.wall_ms if ps is not None else ()
        fixed = 2 + 18 + 6 + 9 + 6  # marker, category, %, ms/step, delta (each with its padding)
        show_bar = width - fixed >= 11 + 16
        trend_w = width - fixed - (11 if show_bar else 0) - 1
        table = Table(box=None, padding=(0, 1, 0, 0), expand=False, show_edge=False)
        table.add_column("", width=1)
        table.add_column("category", width=17, no_wrap=True)
        if show_bar:
            table.add_column("share", width=10, no_wrap=True)
        table.add_column("%", justify="right", width=5)
        table.add_column("ms/step", justify="right", width=8)
        if trend_w >= 6:
            table.add_column("per step", width=trend_w, no_wrap=True)
        table.add_column("Δ", justify="right", width=5, no_wrap=True)
        for name in CATEGORY_NAMES:
            value = rs.budget_pct.get(name)
            per = ps.category(name) if ps is not None else ()
            share = [100.0 * c / w if w > 0 else 0.0 for c, w in zip(per, wall, strict=False)]
            half = len(share) // 2
            row: list[RenderableType] = [Text("■", style=r.CATEGORY_STYLE[name]), Text(name)]
            if show_bar:
                cells = round(value / 10)
                row.append(Text("█" * cells, style=r.CATEGORY_STYLE[name]))
            row.append(Text(f"{value:.1f}"))
            row.append(Text(f"{rs.budget_ms_per_step.get(name):.1f}"))
            if trend_w >= 6:
                spark = r.sparkline(per, trend_w, style=r.CATEGORY_STYLE[name], floor_zero=False)
                row.append(spark if any(per) else Text(""))
            row.append(r.trend(share[:half], share[half:]))
            table.add_row(*row)
        st = rs.step_time_ms
        step = Text(
            f"step time  median {r.ms(st.median)}  p90 {r.ms(st.p90)}  max {r.ms(st.max)}  "
            f"over {rs.steps} step{'s' if rs.steps != 1 else ''}"
            + ("" if rs.steps_from_markers else " (no step markers: the whole window is one step)"),
            style="bright_black",
        )
        step.truncate(width, overflow="ellipsis")
        mode = (
            "device: compute = kernels"
            if rs.mode == "device"
            else "CPU: compute = the training thread's math"
        )
        return Group(table, step, Text(f"mode {mode}", style="bright_black"))


class WaitPanel(Panel):
    """The rank the others wait for, what it did while they waited, and what it is doing now."""

    def build(self, width: int, *model: Any) -> RenderableType:
        view, rank = model
        summary: Summary | None = view.summary if view is not None else None
        if summary is None:
            return Text("")
        out = Text()
        s = summary.straggler
        if len(summary.ranks) < 2:
            out.append("one rank: nobody waits for another")
        elif s is None:
            out.append("no rank waited for another in this window")
        else:
            out.append(f"rank {s.rank}", style="bold red")
            out.append(
                f" keeps the others waiting: {r.ms(s.caused_wait_ms)} of their time "
                f"({s.share_pct:.0f}% of all waiting, {s.matched_collectives} collectives)\n"
            )
            doing = ", ".join(f"{c} {r.ms(v)}" for c, v in s.doing_ms[:3]) or "nothing recorded"
            out.append(f"meanwhile it was doing: {doing}\n")
            now = next((x.doing for x in view.ranks if x.rank == s.rank), None)
            out.append(f"now: {now or 'unknown'}")
        rs = _rank(view, rank)
        if rs is not None and len(summary.ranks) > 1:
            split = rs.sync_split_pct
            out.append(
                f"\nrank {rs.rank}: sync {rs.budget_pct.sync:.1f}% = transfer {split.transfer:.1f}% + "
                f"waiting {split.wait:.1f}%"
            )
        return out


class RecommendationsPanel(Panel):
    """The top changes to make, each with the numbers that triggered it."""

    def build(self, width: int, *model: Any) -> RenderableType:
        (view,) = model
        summary: Summary | None = view.summary if view is not None else None
        if summary is None:
            return Text("")
        if not summary.recommendations:
            return Text("nothing to change: no idle cause is above its threshold", style="green")
        parts: list[RenderableType] = []
        for i, rec in enumerate(summary.recommendations[:3], 1):
            who = "all ranks" if rec.rank is None else f"rank {rec.rank}"
            head = Text(f"{i}. ", style="bold")
            head.append(f"[{rec.category}, {who}] ", style=r.CATEGORY_STYLE.get(rec.category, ""))
            head.append(rec.title, style="bold")
            parts.append(head)
            parts.append(Text(f"   {rec.evidence}", style="bright_black"))
            parts.append(Text(f"   → {rec.change}"))
        return Group(*parts)


class DevicePanel(Panel):
    """NVML utilization, memory and power per GPU; without GPU samples, /proc of each rank's process tree."""

    def build(self, width: int, *model: Any) -> RenderableType:
        (view,) = model
        if view is None or (not view.gpus and not view.procs):
            return Text("no device or /proc samples in this run", style="bright_black")
        table = Table(box=None, padding=(0, 1, 0, 0), show_edge=False)
        if view.gpus:
            for col in ("rank", "gpu", "util", "", "memory", "power"):
                table.add_column(col, justify="left" if col == "" else "right", no_wrap=True)
            for g in view.gpus:
                mem = f"{r.size_short(g.mem_used_bytes)} / {r.size_short(g.mem_total_bytes)}"
                power = "n/a" if g.power_mw is None else f"{g.power_mw / 1000:.0f} W"
                table.add_row(
                    str(g.rank),
                    str(g.device_index),
                    r.pct(g.util_pct),
                    r.sparkline(g.util_history, 12, style="green"),
                    mem,
                    power,
                )
            return table
        cols = _fit(width, PROC_COLUMNS)
        for header, w, _ in cols:
            table.add_column(header, justify="right", width=w, no_wrap=True)
        for p in view.procs:
            table.add_row(*(cell(p) for _, _, cell in cols))
        return table


class EventLog(Panel):
    """Checkpoints, collector notes, dropped records, writers starting and ending: one line each, newest
    last (the last `MAX_EVENTS` are kept)."""

    MAX_EVENTS = 500

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: deque[RunEvent] = deque(maxlen=self.MAX_EVENTS)

    def add(self, batch: tuple[RunEvent, ...]) -> None:
        self.events.extend(batch)
        self.show(tuple(self.events))

    def build(self, width: int, *model: Any) -> RenderableType:
        (events,) = model
        out = Text()
        for i, e in enumerate(events):
            if i:
                out.append("\n")
            out.append(r.run_time(e.t_s), style="bright_black")
            out.append(" " + (f"r{e.rank:<2d}" if e.rank is not None else "   "), style="bold")
            style = "blue" if e.text.startswith("checkpoint") else ("yellow" if "dropped" in e.text else "")
            out.append(" " + e.text, style=style)
        return out


PROC_COLUMNS: tuple[tuple[str, int, Callable[[ProcRow], str]], ...] = (
    ("rank", 4, lambda p: str(p.rank)),
    ("pid", 7, lambda p: str(p.pid)),
    ("cpu", 5, lambda p: r.pct_short(p.cpu_pct)),
    ("rss", 6, lambda p: r.size_short(p.rss_bytes)),
    ("workers", 7, lambda p: "n/a" if p.children is None else f"{p.children:.0f}"),
    ("wrk cpu", 7, lambda p: r.pct_short(p.children_cpu_pct)),
    ("wrk rss", 7, lambda p: r.size_short(p.children_rss_bytes)),
    ("read", 8, lambda p: r.size_short(p.read_bytes_per_s, "/s")),
    ("write", 8, lambda p: r.size_short(p.write_bytes_per_s, "/s")),
)
"""The /proc table's columns in display order: (header, width, cell)."""
_PROC_PRIORITY = ("rank", "cpu", "rss", "workers", "wrk cpu", "read", "write", "wrk rss", "pid")


def _fit(width: int, columns: tuple[tuple[str, int, Any], ...]) -> list[tuple[str, int, Any]]:
    """The columns that fit in `width` (one space between), the most telling first, in display order."""
    keep: set[str] = set()
    used = 0
    for name in _PROC_PRIORITY:
        w = next(c[1] for c in columns if c[0] == name)
        if used + w + 1 <= width:
            keep.add(name)
            used += w + 1
    return [c for c in columns if c[0] in keep]


def _rank(view: LiveView | None, rank: int | None) -> RankSummary | None:
    if view is None or view.summary is None or not view.summary.ranks:
        return None
    for rs in view.summary.ranks:
        if rs.rank == rank:
            return rs
    return view.summary.ranks[0]
