"""`gpuwatch import` of one trace file inflates it on a thread while the parser's modules load
(trace_import._Preload): the run is the one read without it, a damaged file is still reported by the
importer, and nothing is preloaded for a directory or several files."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from conftest import shared_trace_path, trace_files
from test_import_writer_process import imported

from gpuwatch.capture import trace_import
from gpuwatch.errors import TraceFormatError


def test_one_file_is_preloaded_and_imports_as_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = shared_trace_path("nccl_parser_config")
    seen: list[dict] = []
    real = trace_import._Preload.result

    def result(self):  # type: ignore[no-untyped-def]
        got = real(self)
        seen.append(dict(got))  # the importer takes it out of the one it is given
        return got

    monkeypatch.setattr(trace_import._Preload, "result", result)
    trace_import.import_to_run([str(path)], tmp_path / "preloaded")
    assert list(seen[0]) == [path] and len(seen[0][path]) > 5 * path.stat().st_size
    assert bytes(seen[0][path]).lstrip()[:1] == b"{"  # inflated JSON, not the gzip bytes

    monkeypatch.setattr(trace_import._Preload, "start", classmethod(lambda cls, paths: cls(None)))
    trace_import.import_to_run([str(path)], tmp_path / "read-by-the-importer")
    assert imported(tmp_path / "preloaded") == imported(tmp_path / "read-by-the-importer")


def test_a_damaged_file_is_reported_by_the_importer(tmp_path: Path) -> None:
    raw = gzip.compress(shared_trace_path("nccl_parser_config").read_bytes())
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    preload = trace_import._Preload.start([str(bad)])
    assert preload.result() == {}
    with pytest.raises(TraceFormatError, match="corrupt or truncated gzip"):
        trace_import.import_to_run([str(bad)], tmp_path / "run")


def test_nothing_is_preloaded_for_a_directory_or_several_files() -> None:
    files = [str(p) for p in trace_files(shared_trace_path("trace_filter"))]
    assert len(files) == 2
    for paths in (files, [str(Path(files[0]).parent)]):
        preload = trace_import._Preload.start(paths)
        assert preload.thread is None and preload.result() == {}
