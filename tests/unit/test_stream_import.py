"""A large gzip trace read as it is inflated (`stream_import`) gives exactly what the whole-document read
gives; what the stream cannot cut (an event split by a cut that is not one, more gzip members) goes back to
that read, and a damaged stream is reported as one."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import shared_trace_path
from synthetic_kineto import planted_rank
from test_kineto_import import _same_columns, _same_name_codes

import collectors.kineto.kineto_import as ki
import collectors.kineto.stream_import as st
from collectors.kineto.kineto_import import import_trace
from gpuwatch.errors import TraceFormatError


def _trace(tmp_path: Path, extra_args: dict[str, Any], name: str) -> tuple[Path, bytes]:
    """A gzip trace whose keys after the event array hold its rank; (path, its JSON)."""
    tr = planted_rank(3, realistic=True, rank=1, world_size=4)
    for k in range(0, len(tr.events), 40):
        if tr.events[k].get("cat") == "cpu_op":
            tr.events[k]["args"].update(extra_args)
    doc = json.loads(tr.write(tmp_path / f"{name}-as-written.json").read_text())
    events = doc.pop("traceEvents")
    after = {k: doc.pop(k) for k in ("distributedInfo", "baseTimeNanoseconds")}
    text = json.dumps({**doc, "traceEvents": events, **after}).encode()
    path = tmp_path / f"{name}.json.gz"
    path.write_bytes(gzip.compress(text))
    return path, text


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stream every gzip trace, in pieces of a few KB (many cuts), from compressed steps of 700 bytes."""
    monkeypatch.setattr(st, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(st, "_CHUNK_BYTES", 5000)
    monkeypatch.setattr(st, "_IN_STEP", 700)


def _reference(path: Path, monkeypatch: pytest.MonkeyPatch) -> ki.ImportedTrace:
    with monkeypatch.context() as m:
        m.setattr(ki, "_read_streamed", lambda path: None)
        return import_trace(path)


def _same(got: ki.ImportedTrace, want: ki.ImportedTrace) -> None:
    assert (got.rank, got.world_size, got.events_total, got.skipped) == (
        want.rank, want.world_size, want.events_total, want.skipped,
    )  # fmt: skip
    assert got.thread_names == want.thread_names and got.anchor_unix_ns == want.anchor_unix_ns
    _same_columns(got.spans, want.spans)
    _same_name_codes(got.spans, want.spans)


def test_a_streamed_read_equals_the_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_pieces: None
) -> None:
    path, _ = _trace(tmp_path, {"text": 'a}, {"b'}, "plain")
    want = _reference(path, monkeypatch)
    assert want.rank == 1 and want.world_size == 4  # from the keys after the event array
    read = st.read_streamed(path, path.read_bytes())
    assert read is not None
    streamed = []
    real = ki._read_streamed
    monkeypatch.setattr(ki, "_read_streamed", lambda p: streamed.append(p) or real(p))
    _same(import_trace(path), want)
    assert streamed == [path]


def test_an_event_cut_inside_goes_back_to_the_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_pieces: None
) -> None:
    """Args holding arrays of objects: a cut between `}, {"` can land inside an event. Small ones mostly
    do not catch a cut (the same columns either way); one far larger than the window where a cut is looked
    for always does, and the whole read takes over."""
    small, _ = _trace(tmp_path, {"groups": [{"a": 1}, {"b": 2}]}, "small-groups")
    _same(import_trace(small), _reference(small, monkeypatch))
    monkeypatch.setattr(st, "_CUT_WINDOW", 200)
    path, _ = _trace(tmp_path, {"groups": [{"a": i} for i in range(3000)]}, "large-groups")
    want = _reference(path, monkeypatch)
    assert st.read_streamed(path, path.read_bytes()) is None
    _same(import_trace(path), want)


def test_several_gzip_members_go_back_to_the_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_pieces: None
) -> None:
    path, text = _trace(tmp_path, {}, "members")
    want = _reference(path, monkeypatch)
    half = len(text) // 2
    path.write_bytes(gzip.compress(text[:half]) + gzip.compress(text[half:]))
    assert st.read_streamed(path, path.read_bytes()) is None
    _same(import_trace(path), want)


@pytest.mark.parametrize("damage", ["truncated", "crc"])
def test_a_damaged_stream_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_pieces: None, damage: str
) -> None:
    path, _ = _trace(tmp_path, {}, "damaged")
    raw = path.read_bytes()
    if damage == "truncated":
        raw = raw[: len(raw) * 2 // 3]
    else:  # the CRC in the trailer no longer matches what inflates
        raw = raw[:-8] + bytes([raw[-8] ^ 0xFF]) + raw[-7:]
    path.write_bytes(raw)
    with pytest.raises(TraceFormatError, match="corrupt or truncated gzip"):
        st.read_streamed(path, raw)
    with pytest.raises(TraceFormatError, match="corrupt or truncated gzip"):
        import_trace(path)


def test_a_real_trace_streamed(monkeypatch: pytest.MonkeyPatch, small_pieces: None) -> None:
    path = shared_trace_path("nccl_parser_config")
    assert path.name.endswith(".gz")
    monkeypatch.setattr(st, "_CHUNK_BYTES", 100_000)
    monkeypatch.setattr(st, "_IN_STEP", 20_000)
    want = _reference(path, monkeypatch)
    assert st.read_streamed(path, path.read_bytes()) is not None
    _same(import_trace(path), want)


def test_small_or_plain_traces_are_not_streamed(tmp_path: Path) -> None:
    path, text = _trace(tmp_path, {}, "small")
    assert ki._read_streamed(path) is None  # far below STREAM_MIN_BYTES
    plain = tmp_path / "plain.json"
    plain.write_bytes(text)
    assert ki._read_streamed(plain) is None
