"""`e` in the dashboard: the HTML report (reports/html) of what is on screen: the window's Summary, with the
run's time series and a timeline of representative steps of that window."""

from __future__ import annotations

from pathlib import Path

from gpuwatch.tui.follower import LiveView


class ExportUnavailable(Exception):
    """This build has no HTML report writer (or one this dashboard does not know how to call)."""


def write_html(view: LiveView, out_dir: Path) -> Path:
    """Write `gpuwatch-top-RUNID-WINDOW.html` in `out_dir` and return its path.

    Raises ExportUnavailable without reports.html, RunDirError when the run cannot be read, OSError when
    the file cannot be written.
    """
    if view.summary is None:
        raise ExportUnavailable("nothing to export yet: no complete step in the window")
    try:
        from reports.html.page import render_report
        from reports.html.report_data import (
            DEFAULT_GPU_HOUR_PRICE_USD,
            RunReport,
            load_timeline,
            metric_panels,
        )
    except ImportError as exc:
        raise ExportUnavailable(f"HTML export is unavailable in this build ({exc})") from None
    from gpuwatch.store.run_reader import RunReader

    reader = RunReader(view.run_dir)
    try:
        report = RunReport(
            summary=view.summary,
            run_dir=view.run_dir,
            sources=tuple(sorted({w.run.source for w in reader.writers})),
            devices=tuple(
                sorted({str(d) for w in reader.writers for d in (w.run.meta or {}).get("devices", []) or []})
            ),
            panels=tuple(metric_panels(reader)),
            timeline=load_timeline(reader, view.summary),
        )
    finally:
        reader.close()
    html = render_report(
        report, gpu_hour_price_usd=DEFAULT_GPU_HOUR_PRICE_USD, default_price_usd=DEFAULT_GPU_HOUR_PRICE_USD
    )
    window = "whole" if view.window_steps is None else f"last{view.window_steps}"
    path = out_dir / f"gpuwatch-top-{view.run_id}-{window}.html"
    path.write_text(html, encoding="utf-8")
    return path
