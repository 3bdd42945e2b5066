"""`e` in the dashboard: the HTML report of what is on screen (the window's Summary), through reports/."""

from __future__ import annotations

import importlib
from pathlib import Path

from gpuwatch.tui.follower import LiveView


class ExportUnavailable(Exception):
    """This build has no HTML report writer."""


def write_html(view: LiveView, out_dir: Path) -> Path:
    """Write the window's report as `gpuwatch-top-RUNID-WINDOW.html` in `out_dir`; returns its path."""
    try:
        html = importlib.import_module("reports.html")
    except ImportError:
        raise ExportUnavailable(
            "HTML export is unavailable: this gpuwatch has no HTML report (reports.html)"
        ) from None
    writer = getattr(html, "write_report", None)
    if writer is None or view.summary is None:
        raise ExportUnavailable("HTML export is unavailable: reports.html has no write_report(summary, path)")
    window = "whole" if view.window_steps is None else f"last{view.window_steps}"
    path = out_dir / f"gpuwatch-top-{view.run_id}-{window}.html"
    writer(view.summary, path)
    return path
