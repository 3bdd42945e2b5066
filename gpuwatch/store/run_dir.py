"""The on-disk layout of a run directory, shared by the writer and the reader.

```
RUN_DIR/
  gpuwatch-run.json                  {"format": "gpuwatch-run", "schema_version": 1, "run_id": ...}
  rank0000-pid4242/                  one folder per writing process (one per rank)
    writer.json                      the `Run` record plus status, drop counts and notes; rewritten atomically
    spans-000001-000001.jsonl        immutable segments, written to a dot-temp file then renamed
    spans-000001-000064.jsonl        a compacted segment: replaces the small ones it covers
    samples-000002-000002.jsonl
    spans-000003-000003.parquet      bulk writers (trace import) write Parquet
```
A reader lists segments, keeps the widest ranges, and reads them all through DuckDB while writers go on.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpuwatch import __version__
from gpuwatch.errors import RunDirError, RunDirUsageError
from gpuwatch.records import SCHEMA_VERSION, Run
from gpuwatch.store.run_files import RUN_FILE as RUN_FILE
from gpuwatch.store.run_files import WRITER_FILE as WRITER_FILE
from gpuwatch.store.run_files import write_json_atomic as write_json_atomic

SEGMENT_RE = re.compile(r"^(spans|samples)-(\d{6,})-(\d{6,})\.(jsonl|parquet)$")


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment file: which table, which range of flush numbers it covers, its format."""

    path: Path
    table: str
    first: int
    last: int
    fmt: str


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def ensure_run_dir(run_dir: Path, run_id: str | None = None) -> str:
    """Create `run_dir` (or join an existing run) and return its run id.

    Several ranks may call this at once: the first one to create the marker file wins, the others read it.
    Raises RunDirError when the directory belongs to another schema version or is not a run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / RUN_FILE
    if not marker.exists():
        data = {"format": "gpuwatch-run", "schema_version": SCHEMA_VERSION, "run_id": run_id or new_run_id()}
        tmp = run_dir / f".{RUN_FILE}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
        tmp.write_text(json.dumps(data))
        try:
            os.link(tmp, marker)  # atomic create-if-absent: exactly one rank's marker lands
        except FileExistsError:
            pass
        except OSError:  # filesystems without hard links
            if not marker.exists():
                os.replace(tmp, marker)
        finally:
            tmp.unlink(missing_ok=True)
    return read_run_marker(run_dir)["run_id"]


def read_run_marker(run_dir: Path) -> dict[str, Any]:
    """Read and check `gpuwatch-run.json`. Raises RunDirError/RunDirUsageError with a one-line reason.

    A run whose marker is missing or unreadable but whose writer folders are there is still a run: the
    marker comes back rebuilt, with a `recovered` line saying so (readers show it as a note)."""
    if not run_dir.exists():
        raise RunDirUsageError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise RunDirUsageError(f"not a run directory (it is a file): {run_dir}")
    marker = run_dir / RUN_FILE
    if not marker.exists():
        recovered = _marker_from_writers(run_dir, f"no {RUN_FILE}")
        if recovered is None:
            raise RunDirUsageError(f"not a gpuwatch run directory (no {RUN_FILE}): {run_dir}")
        return recovered
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        recovered = _marker_from_writers(run_dir, f"unreadable {RUN_FILE} ({exc})")
        if recovered is None:
            raise RunDirError(f"unreadable {marker}: {exc}") from None
        return recovered
    if not isinstance(data, dict) or data.get("format") != "gpuwatch-run":
        raise RunDirError(f"{marker} is not a gpuwatch run marker")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunDirError(
            f"{run_dir} was written with run schema {version}; this gpuwatch reads schema {SCHEMA_VERSION} "
            "(re-import the trace or use the matching gpuwatch version)"
        )
    return data


def _marker_from_writers(run_dir: Path, problem: str) -> dict[str, Any] | None:
    """A damaged run (its marker lost or unreadable) is still read from its writer folders: the marker's
    fields from the first readable writer record, and `recovered` says what was wrong. None when the
    folder holds no writer at all (then it is no run)."""
    try:
        folders = list_writer_dirs(run_dir)
    except OSError:
        return None
    for folder in folders:
        try:
            run_id = json.loads((folder / WRITER_FILE).read_text())["run_id"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(run_id, str):
            return {
                "format": "gpuwatch-run",
                "schema_version": SCHEMA_VERSION,
                "run_id": run_id,
                "recovered": f"{problem}: read as a run from its {len(folders)} writer folder(s)",
            }
    return None


def writer_dir_name(rank: int, pid: int) -> str:
    return f"rank{rank:04d}-pid{pid}"


def claim_writer_dir(run_dir: Path, rank: int, pid: int) -> Path:
    """Create a fresh folder for one writing process; a restarted rank with a recycled pid gets a suffix."""
    base = writer_dir_name(rank, pid)
    for n in range(1000):
        path = run_dir / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"could not create a writer folder in {run_dir}")


def segment_name(table: str, first: int, last: int, fmt: str) -> str:
    return f"{table}-{first:06d}-{last:06d}.{fmt}"


def list_segments(writer_dir: Path, table: str) -> list[Segment]:
    """Segments of `table` in one writer folder, keeping only the widest ranges.

    A compacted segment covers the small ones it replaced; if a reader lists the folder between the
    compacted file's rename and the deletion of the small ones, the small ones are dropped here.
    """
    found: list[Segment] = []
    try:
        names = os.listdir(writer_dir)
    except FileNotFoundError:
        return []
    for name in names:
        m = SEGMENT_RE.match(name)
        if m and m.group(1) == table:
            found.append(Segment(writer_dir / name, table, int(m.group(2)), int(m.group(3)), m.group(4)))
    found.sort(key=lambda s: (s.first, -s.last))
    kept: list[Segment] = []
    covered_to = -1
    for seg in found:
        if seg.last <= covered_to:
            continue
        kept.append(seg)
        covered_to = max(covered_to, seg.last)
    return kept


def list_writer_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / WRITER_FILE).exists())


def run_to_json(run: Run, **extra: Any) -> dict[str, Any]:
    data = asdict(run)
    data.update(extra)
    return data


def default_host() -> str:
    return socket.gethostname()


def run_for_process(
    *,
    source: str,
    rank: int,
    pid: int,
    command: str,
    world_size: int,
    started_at_unix_ns: int,
    meta: dict[str, Any],
    run_id: str = "",
) -> Run:
    """The `Run` record of one writing process on this host, stamped with this gpuwatch's version.

    Watch, attach and import all build their writer's `Run` here, so host and version are filled one way.
    `run_id=""` lets the `SegmentWriter` take the run directory's id (or make one for a new run).
    """
    return Run(
        run_id=run_id,
        rank=rank,
        host=default_host(),
        pid=pid,
        command=command,
        world_size=world_size,
        started_at_unix_ns=started_at_unix_ns,
        tool_version=__version__,
        source=source,
        meta=meta,
    )
