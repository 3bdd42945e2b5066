"""The finished summary of a finished run, kept next to it so reading it again costs no analysis.

A run whose writers have all ended no longer changes; its `summary --json` document is stored in
`RUN_DIR/summary-cache.json` with a fingerprint of every file the analysis read (name, size, mtime of each
segment and writer record, the schema and gpuwatch versions). A reader recomputes whenever the fingerprint
differs (a writer still running, a segment added or compacted, another gpuwatch version), so the cache can
only ever return what a fresh analysis would. `gpuwatch import` fills it with the analysis of the columns
it has just written; `gpuwatch summary` fills it after the first analysis of an ended run.

Deliberately light: no numpy, no duckdb, so a cached summary prints in the time Python takes to start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gpuwatch import __version__
from gpuwatch.schema import SCHEMA_VERSION
from gpuwatch.store.run_files import RUN_FILE, WRITER_FILE, write_json_atomic

CACHE_FILE = "summary-cache.json"


def fingerprint(run_dir: Path) -> str | None:
    """A digest of everything the analysis reads, or None while any writer is still running."""
    parts = [f"schema={SCHEMA_VERSION}", f"gpuwatch={__version__}"]
    try:
        folders = sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / WRITER_FILE).exists())
        if not folders:
            return None
        for folder in folders:
            status = json.loads((folder / WRITER_FILE).read_text()).get("status", "running")
            if status == "running":
                return None
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                st = entry.stat()
                parts.append(f"{folder.name}/{entry.name}:{st.st_size}:{st.st_mtime_ns}")
    except (OSError, ValueError):
        return None
    return "\n".join(parts)  # compared whole: no digest to compute (hashlib costs 5 ms to import)


def load(run_dir: Path) -> dict[str, Any] | None:
    """The cached summary document if it still describes the run exactly, else None (also for a directory
    that is no run of this schema: the caller's full path then says what is wrong with it)."""
    try:
        cached = json.loads((run_dir / CACHE_FILE).read_text())
        marker = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or (marker.get("format"), marker.get("schema_version")) != (
        "gpuwatch-run",
        SCHEMA_VERSION,
    ):
        return None
    current = fingerprint(run_dir)
    if current is None or not isinstance(cached, dict) or cached.get("fingerprint") != current:
        return None
    doc = cached.get("summary")
    return doc if isinstance(doc, dict) else None


def store(run_dir: Path, doc: dict[str, Any]) -> bool:
    """Keep `doc` for a finished run; False (and nothing written) while a writer still runs or on error."""
    current = fingerprint(run_dir)
    if current is None:
        return False
    try:
        write_json_atomic(run_dir / CACHE_FILE, {"fingerprint": current, "summary": doc})
    except OSError:  # a read-only run directory is still a readable run
        return False
    return True
