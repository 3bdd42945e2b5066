"""A large gzip trace read as it is inflated: a few MB of JSON at a time, never the whole document
(`read_streamed`).

Inflating a million-event trace whole means 260 MB of fresh pages, and on this machine's virtual memory a
fresh page costs about 6 us to fault in: 0.8 s of system time a million events, more than the inflate
itself. Inflated piece by piece, the events are cut between two events as they arrive and decoded like the
chunks of `kineto_import._event_chunks`, and the same few MB of memory serve every piece. Anything unusual (a
top level the cut cannot find, an event split across a cut that is not one, several gzip members) returns
None, and the caller reads the file the careful way, which reports what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec

from collectors.kineto.kineto_import import (
    _CHUNK_BYTES,
    _EVENT_BOUNDARY,
    _EVENTS_KEY,
    _LIST_DECODER,
    _WHOLE_DECODER,
    _Accumulator,
    _BadCut,
    _rest_of_top,
    _WholeTrace,
)
from collectors.kineto.trace_bytes import INFLATE_ERRORS as _INFLATE_ERRORS
from gpuwatch.errors import TraceFormatError

try:
    from isal.isal_zlib import decompressobj as _decompressobj
except ImportError:  # pragma: no cover - isal is a dependency; zlib where its wheel is missing
    from zlib import decompressobj as _decompressobj  # type: ignore[assignment]

STREAM_MIN_BYTES = 64 << 20
"""Inflated JSON from this size on (the gzip trailer says) is read as it is inflated."""
_IN_STEP = 1 << 20
"""Compressed bytes handed to the inflater at a time; its output is capped at `_CHUNK_BYTES` a call."""
_TOP_MAX_BYTES = 16 << 20
"""The event array must begin within this many bytes of JSON (the top-level keys before it are small)."""
_CUT_WINDOW = 1 << 16
"""A cut is looked for in the last this-many bytes of what has arrived (events are a few hundred bytes)."""


def read_streamed(path: Path, raw: bytes) -> tuple[_WholeTrace, _Accumulator] | None:
    """The trace's top level and its events in columns, as `kineto_import._read_events` gives them, from the
    gzip bytes `raw`, inflated and decoded a few MB at a time. None where this way cannot read it (see the
    module's docstring). Raises TraceFormatError for a corrupt or truncated gzip stream."""
    try:
        return _read(path, raw)
    except (_BadCut, _MultiMember):
        return None


def _read(path: Path, raw: bytes) -> tuple[_WholeTrace, _Accumulator] | None:
    pieces = _inflated(path, raw)
    head = bytearray()
    for out in pieces:
        head += out
        m = _EVENTS_KEY.search(head)
        if m is not None:
            break
        if len(head) > _TOP_MAX_BYTES:
            return None
    else:
        return None
    try:
        top = _WHOLE_DECODER.decode(b"".join((head[: m.start()], b'"traceEvents":null}')))
    except (msgspec.MsgspecError, RecursionError):
        return None  # the key matched inside a string or a nested object
    pending = head[m.end() - 1 :]  # from the array's "["
    del head
    acc = _Accumulator()
    for out in pieces:
        # a new buffer each piece, the carry (a partial event) and what arrived: the events decoded from the
        # old one may still point into it, so it is never resized under them
        pending = pending + out
        if len(pending) < _CHUNK_BYTES:
            continue
        cut = _last_cut(pending)
        if cut is None:
            continue  # one event larger than the window: wait for more
        pending[cut] = 0x5D  # decoded in place: the comma becomes the piece's "]"
        try:
            events = _LIST_DECODER.decode(memoryview(pending)[: cut + 1])
        except (msgspec.MsgspecError, RecursionError):
            return None
        acc.add(events)
        del events
        carry = bytearray(memoryview(pending)[cut:])
        carry[0] = 0x5B  # the next piece's "["
        pending = carry
    acc.add(_rest_of_top(b"".join((b'{"traceEvents":', pending)), top))
    return top, acc


class _MultiMember(Exception):
    """The file holds more gzip members after the first: the careful path reads them all."""


def _inflated(path: Path, raw: bytes) -> Iterator[bytes]:
    """The gzip stream `raw` inflated, in pieces of at most `_CHUNK_BYTES`; its CRC and length are checked
    at its end. Raises TraceFormatError when it is corrupt or ends early, _MultiMember when more follows."""
    inflater = _decompressobj(31)
    view = memoryview(raw)
    try:
        for pos in range(0, len(raw), _IN_STEP):
            data: bytes | memoryview = view[pos : pos + _IN_STEP]
            while data and not inflater.eof:
                out = inflater.decompress(data, _CHUNK_BYTES)
                data = inflater.unconsumed_tail
                if out:
                    yield out
            if inflater.eof:
                if inflater.unused_data or pos + _IN_STEP < len(raw):
                    raise _MultiMember()
                break
    except _INFLATE_ERRORS as exc:
        raise TraceFormatError(f"corrupt or truncated gzip file {path}: {exc}") from None
    if not inflater.eof:
        raise TraceFormatError(f"corrupt or truncated gzip file {path}: the stream ends early")


def _last_cut(pending: bytearray) -> int | None:
    """Index of the comma between the last two events that have fully arrived within the window, or None."""
    start = max(0, len(pending) - _CUT_WINDOW)
    cut = None
    for m in _EVENT_BOUNDARY.finditer(pending, start):
        cut = m.start(1)
    return cut
