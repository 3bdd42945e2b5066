"""One side of a comparison: a run directory, or a `gpuwatch summary --json` file (a small CI artifact)."""

from __future__ import annotations

import json
from pathlib import Path

from gpuwatch.attribution.summary import Summary, load_summary
from gpuwatch.errors import RunDirError, UsageError


def load_side(path: str | Path) -> Summary:
    """The Summary of a run directory or of a summary JSON file.

    Raises:
        UsageError: the path does not exist, or is a file that is not a `gpuwatch summary --json` document.
        RunDirError / RunDirUsageError: a directory that is not a readable run (from the store).
    """
    p = Path(path)
    if p.is_dir():
        from gpuwatch.store.run_dir import read_run_marker

        read_run_marker(p)  # not a run / another schema: the store's one-line error, before any analysis
        return load_summary(p)
    if not p.exists():
        raise UsageError(f"{p}: no such run directory or summary file")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(
            f"{p}: not a run directory, and not a `gpuwatch summary --json` file ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(doc, dict):
        raise UsageError(f"{p}: not a `gpuwatch summary --json` document (top level is not an object)")
    try:
        return Summary.from_json(doc)
    except RunDirError as exc:
        raise UsageError(f"{p}: {exc}") from None
