"""The dashboard's modal screens: the key help and the rank chooser."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

HELP = """\
[b]gpuwatch top[/b]: where each training step's time goes on every rank, live

  [b]p[/b]  pause / resume following (the screen stays as it is)
  [b]r[/b]  choose the rank shown in detail (or click its bar)
  [b]w[/b]  window: the last N steps of every rank / the whole run
  [b]e[/b]  write the HTML report of what is on screen
  [b]q[/b]  quit            [b]?[/b]  this help

Bars: each rank's step time split into the eight categories (compute, data_loading,
cpu_preprocessing, sync, checkpoint_io, memcpy, host_overhead, unattributed), summing to 100%.
Δ: how the share moved from the older to the newer half of the window (percentage points).
Times in the event log are seconds since the run started.

Press escape, q or ? to close."""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "close"),
        Binding("q", "dismiss", "close"),
        Binding("question_mark", "dismiss", "close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 100; max-width: 95%; height: auto; border: round $accent;
                            background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(HELP, id="help-text")


class RankChooser(ModalScreen[int | None]):
    """A list of ranks with their compute share and step time; enter picks one, escape keeps the current."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    RankChooser { align: center middle; }
    RankChooser > Vertical { width: 60; height: auto; max-height: 80%; border: round $accent;
                             background: $surface; }
    RankChooser OptionList { height: auto; max-height: 20; border: none; }
    """

    def __init__(self, ranks: list[tuple[int, str]], current: int | None) -> None:
        super().__init__()
        self.ranks = ranks
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(" choose a rank (enter), escape to keep the current one")
            yield OptionList(*[Option(label, id=str(rank)) for rank, label in self.ranks])

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        for i, (rank, _) in enumerate(self.ranks):
            if rank == self.current:
                options.highlighted = i
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id) if event.option.id is not None else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
