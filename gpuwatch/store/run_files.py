"""The names of a run directory's files and their atomic writing, without the record types: what reads a
stored summary back (`summary_cache`) needs nothing else, and prints in the time Python takes to start."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUN_FILE = "gpuwatch-run.json"
WRITER_FILE = "writer.json"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to `path` so that a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, path)
    except OSError:
        try:  # no half-written temp file left behind (a full disk)
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
