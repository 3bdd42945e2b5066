"""`gpuwatch import` of one trace file inflates it on a thread while the parser's modules load
(TracePreload): the run is the one read without it, a damaged file is still reported by the
importer, and nothing is preloaded for a directory or several files."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_trace_path, trace_files
from test_import_writer_process import imported

from gpuwatch.capture import trace_import
from gpuwatch.capture.trace_preload import TracePreload
from gpuwatch.errors import TraceFormatError


def test_one_file_is_preloaded_and_imports_as_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = shared_trace_path("nccl_parser_config")
    seen: list[dict] = []
    real = TracePreload.result

    def result(self):  # type: ignore[no-untyped-def]
        got = real(self)
        seen.append(dict(got))  # the importer takes it out of the one it is given
        return got

    monkeypatch.setattr(TracePreload, "result", result)
    trace_import.import_to_run([str(path)], tmp_path / "preloaded")
    assert list(seen[0]) == [path] and len(seen[0][path]) > 5 * path.stat().st_size
    assert bytes(seen[0][path]).lstrip()[:1] == b"{"  # inflated JSON, not the gzip bytes

    monkeypatch.setattr(TracePreload, "start", classmethod(lambda cls, paths: cls(None)))
    trace_import.import_to_run([str(path)], tmp_path / "read-by-the-importer")
    assert imported(tmp_path / "preloaded") == imported(tmp_path / "read-by-the-importer")


def test_a_damaged_file_is_reported_by_the_importer(tmp_path: Path) -> None:
    raw = gzip.compress(shared_trace_path("nccl_parser_config").read_bytes())
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    preload = TracePreload.start([str(bad)])
    assert preload.result() == {}
    with pytest.raises(TraceFormatError, match="corrupt or truncated gzip"):
        trace_import.import_to_run([str(bad)], tmp_path / "run")


def test_nothing_is_preloaded_for_a_directory_or_several_files() -> None:
    files = [str(p) for p in trace_files(shared_trace_path("trace_filter"))]
    assert len(files) == 2
    for paths in (files, [str(Path(files[0]).parent)]):
        preload = TracePreload.start(paths)
        assert preload.thread is None and preload.result() == {}


def test_the_preload_starts_before_numpy_and_msgspec_load() -> None:
    """`gpuwatch import` starts the inflating thread first, then imports the importer: the preload's module
    must load nothing heavy, or the thread starts as late as before."""
    code = (
        "import sys\n"
        "import gpuwatch.capture.trace_preload\n"
        "heavy = sorted(m for m in ('numpy', 'msgspec', 'duckdb', 'gpuwatch.records') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
