"""What the follower thread tells the screen: typed, past-tense messages (the screen only renders them).

A flood of view updates collapses into the newest one (`can_replace`), so a screen that falls behind (a
slow terminal over ssh) draws the latest state once instead of every state in turn; event-log lines never
collapse, each one is shown.
"""

from __future__ import annotations

from textual.message import Message

from gpuwatch.tui.follower import LiveView, RunEvent


class ViewUpdated(Message):
    """A new view of the run was computed (new data, or another window)."""

    def __init__(self, view: LiveView) -> None:
        super().__init__()
        self.view = view

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ViewUpdated)


class EventsArrived(Message):
    """Lines for the event log: checkpoints, notes, dropped records, writers starting and ending."""

    def __init__(self, events: tuple[RunEvent, ...]) -> None:
        super().__init__()
        self.events = events


class WaitReported(Message):
    """There is nothing to show yet, and why (None: the wait is over)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__()
        self.reason = reason

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, WaitReported)


class ReadFailed(Message):
    """The run could not be read (a foreign folder, another schema, a damaged segment); polling goes on."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ReadFailed)


class RunEnded(Message):
    """Every writer of the run has closed: the numbers are final."""


class RankPicked(Message):
    """The user chose a rank (a click on its bar, or the rank chooser)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank
