"""The dashboard's panels. Each is dumb: `show(...)` hands it the view to draw, it keeps it and redraws on
resize, and it never reads the run itself."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import events
from textual.widgets import Static

from gpuwatch.attribution.summary import CATEGORY_NAMES, RankSummary, Summary
from gpuwatch.tui import render as r
from gpuwatch.tui.follower import LiveView, RankLive, RunEvent
from gpuwatch.tui.gauges import ProcRow
from gpuwatch.tui.messages import RankPicked

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(text: Text) -> Text:
    """Names from traces and jobs are data: a control character is drawn as U+FFFD, never written to the
    terminal (an escape sequence in a kernel or stage name would move the cursor or retitle the window)."""
    plain = text.plain
    if not _CONTROL.search(plain):
        return text
    out = text.copy()
    out.plain = _CONTROL.sub("\ufffd", plain)  # same length: the styles' spans stay where they were
    return out


class Panel(Static):
    """A Static that rebuilds its content from the last model it was shown whenever its width changes.

    Every panel draws one rich `Text` (no Table: a table is measured and rendered several times per
    layout, which was most of the dashboard's CPU), an unchanged drawing is not redrawn, and a panel
    whose height cannot change with its content (`FIXED_HEIGHT`) is redrawn without a layout pass.
    """

    WRAPS = True
    """Whether the text wraps (its height can change without its line count changing)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: tuple[Any, ...] | None = None
        self._drawn: Text | None = None

    def show(self, *model: Any) -> None:
        self._model = model
        self._draw()

    def on_resize(self, event: events.Resize) -> None:
        if self._model is not None:
            self._drawn = None
            self._draw()

    def _draw(self) -> None:
        assert self._model is not None
        text = _printable(self.build(max(self.content_size.width, 20), *self._model))
        if self._drawn is not None and text == self._drawn:
            return
        lines = text.plain.count("\n")
        layout = self.WRAPS or self._drawn is None or lines != self._drawn.plain.count("\n")
        self._drawn = text
        self.update(text, layout=layout)

    def build(self, width: int, *model: Any) -> Text:
        raise NotImplementedError


def cells(*parts: tuple[str | Text, int, str]) -> Text:
    """One table row as text: each (content, width, "<" or ">") padded or cut to its width, one space
    apart."""
    out = Text()
    for i, (content, width, align) in enumerate(parts):
        cell = content if isinstance(content, Text) else Text(content)
        cell = cell.copy()
        cell.truncate(width, overflow="ellipsis")
        pad = " " * (width - cell.cell_len)
        if i:
            out.append(" ")
        if align == ">":
            out.append(pad)
            out.append_text(cell)
        else:
            out.append_text(cell)
            out.append(pad)
    return out


def lines(rows: list[Text]) -> Text:
    return Text("\n").join(rows)


class TopHeader(Panel):
    """One line: the run, its state, the window. No clock: the screen shows run time only."""

    WRAPS = False

    def build(self, width: int, *model: Any) -> Text:
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

    WRAPS = False

    def build(self, width: int, *model: Any) -> Text:
        view, selected = model
        summary: Summary | None = view.summary if view is not None else None
        if summary is None or not summary.ranks:
            return Text("no steps yet", style="bright_black")
        live = {x.rank: x for x in view.ranks}
        return lines([self._line(width, rs, live.get(rs.rank), rs.rank == selected) for rs in summary.ranks])

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

    WRAPS = False

    def build(self, width: int, *model: Any) -> Text:
        view, rank = model
        rs = _rank(view, rank)
        if rs is None:
            return Text("waiting for the first complete step", style="bright_black")
        ps = rs.per_step
        wall = ps.wall_ms if ps is not None else ()
        fixed = 1 + 17 + 5 + 8 + 5 + 4  # marker, category, %, ms/step, delta, and the spaces between
        show_bar = width - fixed >= 11 + 16
        trend_w = width - fixed - (11 if show_bar else 0) - 1
        show_trend = trend_w >= 6
        head: list[tuple[str | Text, int, str]] = [("", 1, "<"), ("category", 17, "<")]
        head += [("share", 10, "<")] if show_bar else []
        head += [("%", 5, ">"), ("ms/step", 8, ">")]
        head += [("per step", trend_w, "<")] if show_trend else []
        head += [("Δ", 5, ">")]
        rows = [cells(*head)]
        for name in CATEGORY_NAMES:
            value = rs.budget_pct.get(name)
            per = ps.category(name) if ps is not None else ()
            share = [100.0 * c / w if w > 0 else 0.0 for c, w in zip(per, wall, strict=False)]
            half = len(share) // 2
            style = r.CATEGORY_STYLE[name]
            row: list[tuple[str | Text, int, str]] = [(Text("■", style=style), 1, "<"), (name, 17, "<")]
            if show_bar:
                row.append((Text("█" * round(value / 10), style=style), 10, "<"))
            row += [(f"{value:.1f}", 5, ">"), (f"{rs.budget_ms_per_step.get(name):.1f}", 8, ">")]
            if show_trend:
                spark = r.sparkline(per, trend_w, style=style, floor_zero=False) if any(per) else Text("")
                row.append((spark, trend_w, "<"))
            row.append((r.trend(share[:half], share[half:]), 5, ">"))
            rows.append(cells(*row))
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
        rows += [step, Text(f"mode {mode}", style="bright_black")]
        rows += _stage_rows(view, rs.rank, width)
        return lines(rows)


def _stage_rows(view: LiveView | None, rank: int, width: int) -> list[Text]:
    """One line per training stage (`gw.step(stage=...)`) of the rank in focus: steps, median step, and its
    two largest idle categories, so a stage that loads more data shows as such."""
    summary: Summary | None = view.summary if view is not None else None
    out = []
    for stage in summary.stages if summary is not None else ():
        g = next((x for x in stage.ranks if x.rank == rank), None)
        if g is None:
            continue
        idle = sorted(((v, c) for c, v in g.budget_pct.items() if c != "compute" and v > 0), reverse=True)
        text = Text(f"stage {stage.stage}: {g.steps} steps, median {r.ms(g.step_time_ms.median)}, ")
        text.append(f"compute {g.budget_pct.compute:.1f}%", style=r.CATEGORY_STYLE["compute"])
        for v, c in idle[:2]:
            text.append(f", {c} {v:.1f}%", style=r.CATEGORY_STYLE[c])
        text.truncate(width, overflow="ellipsis")
        out.append(text)
    return out


class WaitPanel(Panel):
    """The rank the others wait for, what it did while they waited, and what it is doing now."""

    def build(self, width: int, *model: Any) -> Text:
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
            if s.tag_cause is not None:
                c = s.tag_cause
                out.append(
                    f"slow when it drew {c.key}={c.value}: the others wait {r.ms(c.caused_ms_with)}/step "
                    f"for it then, {r.ms(c.caused_ms_without)}/step otherwise\n"
                )
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

    def build(self, width: int, *model: Any) -> Text:
        (view,) = model
        summary: Summary | None = view.summary if view is not None else None
        if summary is None:
            return Text("")
        if not summary.recommendations:
            return Text("nothing to change: no idle cause is above its threshold", style="green")
        parts: list[Text] = []
        for i, rec in enumerate(summary.recommendations[:3], 1):
            who = "all ranks" if rec.rank is None else f"rank {rec.rank}"
            head = Text(f"{i}. ", style="bold")
            head.append(f"[{rec.category}, {who}] ", style=r.CATEGORY_STYLE.get(rec.category, ""))
            head.append(rec.title, style="bold")
            parts.append(head)
            parts.append(Text(f"   {rec.evidence}", style="bright_black"))
            parts.append(Text(f"   → {rec.change}"))
        return lines(parts)


class DevicePanel(Panel):
    """NVML utilization, memory and power per GPU; without GPU samples, /proc of each rank's process tree."""

    WRAPS = False

    def build(self, width: int, *model: Any) -> Text:
        (view,) = model
        if view is None or (not view.gpus and not view.procs):
            return Text("no device or /proc samples in this run", style="bright_black")
        if view.gpus:
            rows = [cells(("rank", 4, ">"), ("gpu", 3, ">"), ("util", 6, ">"), ("", 12, "<"),
                          ("memory", 13, ">"), ("power", 6, ">"))]  # fmt: skip
            for g in view.gpus:
                mem = f"{r.size_short(g.mem_used_bytes)} / {r.size_short(g.mem_total_bytes)}"
                power = "n/a" if g.power_mw is None else f"{g.power_mw / 1000:.0f} W"
                rows.append(
                    cells(
                        (str(g.rank), 4, ">"),
                        (str(g.device_index), 3, ">"),
                        (r.pct(g.util_pct), 6, ">"),
                        (r.sparkline(g.util_history, 12, style="green"), 12, "<"),
                        (mem, 13, ">"),
                        (power, 6, ">"),
                    )
                )
            return lines(rows)
        cols = _fit(width, PROC_COLUMNS)
        rows = [cells(*((header, w, ">") for header, w, _ in cols))]
        rows += [cells(*((cell(p), w, ">") for _, w, cell in cols)) for p in view.procs]
        return lines(rows)


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

    def build(self, width: int, *model: Any) -> Text:
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
