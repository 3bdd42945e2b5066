"""`gpuwatch top`: the live dashboard of one run directory (Textual).

A thread worker polls the run (`RunFollower`: only the segments new since the last poll), computes the
view of the window on screen, and posts typed messages; the handlers below hand them to dumb panels. The
app never starts a capture: `gpuwatch top --pid` starts `attach` in the CLI layer and gives the app the run
directory it writes, plus a queue of its progress lines for the event log.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from gpuwatch.errors import GpuwatchError
from gpuwatch.tui.follower import LiveView, RunEvent, RunFollower
from gpuwatch.tui.messages import EventsArrived, RankPicked, ReadFailed, RunEnded, ViewUpdated, WaitReported
from gpuwatch.tui.screens import HelpScreen, RankChooser
from gpuwatch.tui.widgets import (
    BudgetPanel,
    DevicePanel,
    EventLog,
    RankBars,
    RecommendationsPanel,
    TopHeader,
    WaitPanel,
)

MIN_WIDTH, MIN_HEIGHT = 80, 24
"""Below this the panels cannot show a budget table: the screen says so instead."""
DEFAULT_WINDOW_STEPS = 50
DEFAULT_REFRESH_S = 0.5


class TopApp(App[None]):
    """The dashboard.

    Args:
        run_dir: the run directory to follow (it may not exist yet).
        window_steps: the last-N-steps window (`w` switches to the whole run and back).
        refresh_s: seconds between polls of the run.
        progress: lines from whatever writes the run (`top --pid`: attach's progress), shown as events.
        report_dir: where `e` writes the HTML report (default: the current directory).
    """

    TITLE = "gpuwatch top"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = None  # no panel takes the focus (and its highlight) by itself: keys go to the app
    CSS = """
    Screen { layout: vertical; }
    #header { height: 1; background: $panel; }
    #banner { height: auto; display: none; color: $warning; padding: 0 1; }
    #banner.-shown { display: block; }
    #too-small { display: none; content-align: center middle; height: 1fr; color: $warning; }
    Screen.-too-small #main { display: none; }
    Screen.-too-small #too-small { display: block; }
    #main { height: 1fr; }
    .box { border: round $primary 50%; border-title-color: $text; padding: 0 1; }
    #ranks-box { height: auto; max-height: 35%; }
    #middle { height: 1fr; }
    #budget-box { width: 3fr; height: 1fr; }
    #side { width: 2fr; }
    #waits-box { height: auto; max-height: 50%; }
    #recs-box { height: 1fr; }
    #bottom { height: 7; }
    #devices-box { width: 3fr; }
    #events-box { width: 2fr; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("p", "pause", "pause"),
        Binding("r", "choose_rank", "rank"),
        Binding("w", "window", "window"),
        Binding("e", "export", "HTML report"),
        Binding("question_mark", "help", "help", key_display="?"),
    ]

    def __init__(
        self,
        run_dir: str | Path,
        *,
        window_steps: int = DEFAULT_WINDOW_STEPS,
        refresh_s: float = DEFAULT_REFRESH_S,
        progress: queue.SimpleQueue[str] | None = None,
        report_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.follower = RunFollower(self.run_dir)
        self.last_n = window_steps
        self.window_steps: int | None = window_steps
        self.refresh_s = refresh_s
        self.progress = progress
        self.report_dir = Path(report_dir) if report_dir is not None else Path.cwd()
        self.paused = False
        self.rank: int | None = None
        self.view: LiveView | None = None
        self.waiting: str | None = "starting"
        self.error: str | None = None
        self.ended = False
        self.events_shown = 0
        self.views_drawn = 0
        self.refreshes = 0
        """Refresh ticks done: the run polled for new segments and the window's view brought up to date."""
        self.notices: deque[str] = deque(maxlen=20)
        """How many views were drawn (what `benchmarks/top_follow.py` counts as refreshes)."""
        self._wake = threading.Event()

    # ---- layout --------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield TopHeader(id="header")
        yield Static(id="banner")
        yield Static(id="too-small")
        with Vertical(id="main"):
            with VerticalScroll(id="ranks-box", classes="box"):
                yield RankBars(id="ranks")
            with Horizontal(id="middle"):
                with VerticalScroll(id="budget-box", classes="box"):
                    yield BudgetPanel(id="budget")
                with Vertical(id="side"):
                    with VerticalScroll(id="waits-box", classes="box"):
                        yield WaitPanel(id="waits")
                    with VerticalScroll(id="recs-box", classes="box"):
                        yield RecommendationsPanel(id="recs")
            with Horizontal(id="bottom"):
                with VerticalScroll(id="devices-box", classes="box"):
                    yield DevicePanel(id="devices")
                with VerticalScroll(id="events-box", classes="box"):
                    yield EventLog(id="events")
        yield Footer()

    def on_mount(self) -> None:
        for box, title in (
            ("#ranks-box", "ranks: budget over the window"),
            ("#budget-box", "time budget"),
            ("#waits-box", "who waits for whom"),
            ("#recs-box", "what to change"),
            ("#devices-box", "devices"),
            ("#events-box", "events (run time)"),
        ):
            self.query_one(box).border_title = title
        self._check_size()
        self._render_all()
        self.follow()

    def on_resize(self, event: events.Resize) -> None:
        self._check_size(event.size.width, event.size.height)

    def _check_size(self, w: int | None = None, h: int | None = None) -> None:
        if w is None or h is None:
            w, h = self.size
        small = w < MIN_WIDTH or h < MIN_HEIGHT
        self.screen.set_class(small, "-too-small")
        if small:
            self.query_one("#too-small", Static).update(
                f"terminal too small: {w}x{h}; gpuwatch top needs at least {MIN_WIDTH}x{MIN_HEIGHT}"
            )

    # ---- the follower thread -------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="follow")
    def follow(self) -> None:
        """Poll the run, compute the window's view, post what changed; until the app closes."""
        worker = get_current_worker()
        follower = self.follower
        posted: LiveView | None = None
        said_end = False
        next_t = time.monotonic()
        try:
            while not worker.is_cancelled:
                next_t = max(next_t + self.refresh_s, time.monotonic())  # a slow tick is not made up for
                if not self.paused:
                    self._drain_progress()
                    try:
                        result = follower.poll()
                        view = follower.view(self.window_steps)
                        self.refreshes += 1
                    except GpuwatchError as exc:
                        self.post_message(ReadFailed(str(exc)))
                    except Exception as exc:  # a bug of ours: said on screen, and following goes on
                        if os.environ.get("GPUWATCH_DEBUG"):
                            raise
                        self.post_message(ReadFailed(f"internal error: {type(exc).__name__}: {exc}"))
                    else:
                        if result.events:
                            self.post_message(EventsArrived(result.events))
                        self.post_message(WaitReported(result.waiting))
                        if view is not None and view is not posted:
                            posted = view
                            self.post_message(ViewUpdated(view))
                        if follower.ended and not said_end and view is not None:
                            said_end = True
                            self.post_message(RunEnded())
                self._wake.wait(max(0.0, next_t - time.monotonic()))
                if self._wake.is_set():  # a key asked for a refresh now: the pace restarts from here
                    self._wake.clear()
                    next_t = time.monotonic()
        finally:
            follower.close()

    def _drain_progress(self) -> None:
        lines = []
        while self.progress is not None:
            try:
                lines.append(self.progress.get_nowait())
            except queue.Empty:
                break
        if lines:
            self.post_message(EventsArrived(tuple(RunEvent(None, None, line) for line in lines)))

    def on_unmount(self) -> None:
        self._wake.set()

    # ---- messages from the thread --------------------------------------------------------------
    @on(ViewUpdated)
    def _view_updated(self, message: ViewUpdated) -> None:
        before = self.view
        self.view = message.view
        self.views_drawn += 1
        if self.view.summary is not None and self.view.summary.ranks:
            ranks = [rs.rank for rs in self.view.summary.ranks]
            if self.rank not in ranks:
                self.rank = ranks[0]
        if before is not None and before.summary is self.view.summary:
            self._render_live()  # same window analysis: only what moves between analyses
        else:
            self._render_all()

    @on(EventsArrived)
    def _events_arrived(self, message: EventsArrived) -> None:
        self.query_one(EventLog).add(message.events)
        box = self.query_one("#events-box", VerticalScroll)
        self.call_after_refresh(box.scroll_end, animate=False)  # once the new lines are laid out
        self.events_shown += len(message.events)

    @on(WaitReported)
    def _wait_reported(self, message: WaitReported) -> None:
        if message.reason != self.waiting or self.error is not None:
            self.waiting, self.error = message.reason, None
            self._render_header()

    @on(ReadFailed)
    def _read_failed(self, message: ReadFailed) -> None:
        if message.error != self.error:
            self.error = message.error
            self._render_header()

    @on(RunEnded)
    def _run_ended(self) -> None:
        self.ended = True
        self._render_header()

    @on(RankPicked)
    def _rank_picked(self, message: RankPicked) -> None:
        self.rank = message.rank
        self._render_all()

    # ---- drawing -------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self.paused:
            return "paused"
        if self.view is None or self.waiting:
            return "waiting"
        return "ended" if self.view.ended else "following"

    def _window_label(self) -> str:
        if self.view is not None and self.view.window_steps == self.window_steps:
            return self.view.window_label
        return f"last {self.window_steps} steps" if self.window_steps else "whole run"

    def _render_header(self) -> None:
        self.query_one(TopHeader).show(str(self.run_dir), self.view, self.state, self._window_label())
        banner = self.query_one("#banner", Static)
        text = self.error or (self.waiting if self.view is None else None)
        banner.set_class(bool(text), "-shown")
        banner.update(Text(text or ""))  # a path or a message, never markup ("runs/[exp1]")

    def _render_all(self) -> None:
        self._render_live()
        self.query_one(BudgetPanel).show(self.view, self.rank)
        self.query_one(RecommendationsPanel).show(self.view)
        label = self._window_label()
        who = "" if self.rank is None else f"rank {self.rank}, "
        self.query_one("#budget-box").border_title = f"time budget: {who}{label}"

    def _render_live(self) -> None:
        """The header, the rank bars (their status marks), the waits (what the late rank does now), the
        devices: what changes with every poll, between two analyses of the window."""
        self._render_header()
        self.query_one(RankBars).show(self.view, self.rank)
        self.query_one(WaitPanel).show(self.view, self.rank)
        self.query_one(DevicePanel).show(self.view)
        self.query_one("#devices-box").border_title = (
            "devices (NVML)"
            if self.view is not None and self.view.gpus
            else "processes (/proc; no GPU samples)"
        )

    def notify(self, message: str, *args: Any, **kwargs: Any) -> None:
        """A toast, also kept in `notices` (the last few, newest last)."""
        self.notices.append(message)
        super().notify(message, *args, **kwargs)

    # ---- keys ----------------------------------------------------------------------------------
    def action_pause(self) -> None:
        self.paused = not self.paused
        self._render_header()
        self._wake.set()

    def action_window(self) -> None:
        self.window_steps = None if self.window_steps else self.last_n
        self._render_all()
        self._wake.set()  # the thread computes the other window now, not at the next tick

    def action_choose_rank(self) -> None:
        if self.view is None or self.view.summary is None or not self.view.summary.ranks:
            self.notify("no ranks yet", severity="warning")
            return
        choices = [
            (
                rs.rank,
                f"rank {rs.rank}: compute {rs.budget_pct.compute:.1f}%, step {rs.step_time_ms.median:.1f} ms",
            )
            for rs in self.view.summary.ranks
        ]

        def picked(rank: int | None) -> None:
            if rank is not None:
                self.post_message(RankPicked(rank))

        self.push_screen(RankChooser(choices, self.rank), picked)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_export(self) -> None:
        if self.view is None or self.view.summary is None:
            self.notify("nothing to export yet", severity="warning")
            return
        self._export(self.view)

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def _export(self, view: LiveView) -> None:
        from gpuwatch.tui.export import ExportUnavailable, write_html

        self.call_from_thread(self.notify, "writing the HTML report of this window...")
        try:
            path = write_html(view, self.report_dir)
        except ExportUnavailable as exc:
            self.call_from_thread(self.notify, str(exc), severity="warning")
        except Exception as exc:  # a report that fails must not take the dashboard down with it
            if os.environ.get("GPUWATCH_DEBUG"):
                raise
            self.call_from_thread(
                self.notify, f"HTML report not written: {type(exc).__name__}: {exc}", severity="error"
            )
        else:
            self.call_from_thread(self.notify, f"HTML report written: {path}")


def run_top(run_dir: str | Path, **kwargs: Any) -> None:
    """Run the dashboard in this terminal until the user quits."""
    TopApp(run_dir, **kwargs).run()
