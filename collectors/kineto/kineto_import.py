"""Import PyTorch profiler (Kineto) Chrome traces into span columns, one `ImportedTrace` per rank.

Reads `.json` and `.json.gz`, a file or a directory of per-rank files. Handles what real traces contain:
old capitalized categories (`Kernel`, `Runtime`), float sub-microsecond timestamps, traces without
ProfilerStep markers, CPU-only ranks, ROCm (`hip*`) runtimes, missing `distributedInfo`. Keeps NCCL metadata
(collective name, message sizes, group size, process group, a per-group sequence number), CPU<->GPU
correlation ids and the rank. Events of kinds it does not know are skipped and counted, never fatal.

Decoding is typed (msgspec) and reads only the fields used, in chunks of a few MB of events (so a 50 MB
trace never becomes 50 MB of Python objects at once); per-event work stays in C-level maps and numpy, and
everything that depends only on a category or a name (kind, budget category, step number) is decided once
per distinct value, because a Python loop over a million events costs as much as the parse.
"""

from __future__ import annotations

import functools
import operator
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np

from collectors.kineto.kineto_rules import DTYPE_BYTES, device_kind, host_category
from collectors.kineto.trace_bytes import read_trace_bytes
from gpuwatch.errors import TraceFormatError, UsageError
from gpuwatch.records import CATEGORY_OR_NONE, DEVICE_KIND_CATEGORY, SPAN_KINDS, SpanColumns, SpanKind

# ---- the typed shape of a trace (only the fields we read) ---------------------------------------


class _Args(msgspec.Struct, omit_defaults=True, gc=False):
    correlation: Any = None
    stream: Any = None
    device: Any = None
    external_id: Any = msgspec.field(default=None, name="External id")
    collective: Any = msgspec.field(default=None, name="Collective name")
    in_nelems: Any = msgspec.field(default=None, name="In msg nelems")
    out_nelems: Any = msgspec.field(default=None, name="Out msg nelems")
    group_size: Any = msgspec.field(default=None, name="Group size")
    dtype: Any = None
    pg_name: Any = msgspec.field(default=None, name="Process Group Name")
    pg_desc: Any = msgspec.field(default=None, name="Process Group Description")
    seq: Any = msgspec.field(default=None, name="Seq")
    nbytes: Any = msgspec.field(default=None, name="bytes")
    name: Any = None  # metadata events: thread_name / process_name
    labels: Any = None


class _EventFields(msgspec.Struct, gc=False):  # scalars and Raw only: no cycles to track
    """The fields of an event gpuwatch reads (its phase aside)."""

    cat: str | None = None
    name: str | int | float | None = ""
    pid: int | str = 0
    tid: int | str = 0
    ts: float | str | None = None
    dur: float | str | None = None
    args: msgspec.Raw = msgspec.Raw(b"null")  # decoded later, only for the events that need it


class _Event(_EventFields):
    ph: str = ""


_IGNORED_PHASES = {"M", "s", "f", "t", "i", "I", "C", "R", "n", "b", "e", "N", "O", "D", "P", "p"}
_QUIET_PHASES = (_IGNORED_PHASES - {"M"}) | {"X"}


class _Complete(_EventFields, tag_field="ph", tag="X"):
    """A complete ("X") event: `_Event` with its phase as the tag of a union (see `_TaggedEvent`)."""

    ph: ClassVar[str] = "X"


class _Metadata(_Complete, tag="M"):
    ph: ClassVar[str] = "M"


_SKIPPED_PHASES = tuple(
    msgspec.defstruct(f"_Phase_{p}", [], tag_field="ph", tag=p, gc=False, namespace={"ph": p})
    for p in sorted(_QUIET_PHASES - {"X"})
)
_TaggedEvent: Any = functools.reduce(operator.or_, (_Complete, _Metadata, *_SKIPPED_PHASES))
"""An event decoded by its phase: flow, instant, counter... events (4 in 10 of a real trace's events) are only
skipped over, no field of theirs becomes an object: decoding HTA's 216k-event df_index_resolver trace takes
0.15-0.21 s instead of 0.24-0.37 s. An unknown or missing phase fails the decode, and the plain `_Event`
path then reads the events one by one, counting what it skips."""


class _Trace(msgspec.Struct):
    """The top level of a trace; the events stay raw bytes here and are decoded chunk by chunk."""

    traceEvents: msgspec.Raw = msgspec.Raw(b"null")
    distributedInfo: dict[str, Any] | None = None
    baseTimeNanoseconds: Any = None
    deviceProperties: list[Any] | None = None


class _WholeTrace(msgspec.Struct):
    """The top level with its events decoded in the same pass (`_ONE_PASS_BYTES`)."""

    traceEvents: list[_TaggedEvent] | None = None
    distributedInfo: dict[str, Any] | None = None
    baseTimeNanoseconds: Any = None
    deviceProperties: list[Any] | None = None


_DECODER = msgspec.json.Decoder(_Trace)
_WHOLE_DECODER = msgspec.json.Decoder(_WholeTrace)
_LIST_DECODER = msgspec.json.Decoder(list[_TaggedEvent])
_PLAIN_LIST_DECODER = msgspec.json.Decoder(list[_Event])
_ARGS_DECODER = msgspec.json.Decoder(list[_Args | None])
_CHUNK_BYTES = 4 << 20
_ONE_PASS_BYTES = 128 << 20
"""Traces up to this size (decompressed JSON) are decoded in one pass, events included: their event objects
take about as much memory again. Larger ones are read twice, the top level skipping the events (0.08 s for 54
MB), then the events chunk by chunk, so memory stays the trace's bytes plus one chunk."""
_MAX_NAME_CHARS = 8192
"""Longer names are cut here (real kernel names reach a few thousand characters): the name rules are
regular expressions, and a hostile 2 MB name would cost seconds in each of them."""
_MAX_TS_US = 3e15
"""Timestamps beyond +-3e15 us (the year 2065 as Unix time) or durations beyond 1e15 us (31 years) are
skipped and counted: relative nanoseconds must fit int64, and no profiler writes such values."""
_MAX_DUR_US = 1e15
_INT64 = 2**63
"""Events are decoded this many bytes at a time: peak memory stays the trace's bytes plus one chunk."""
# Between two events of the traceEvents array: `}` `,` `{` `"`, with any whitespace. This can never occur
# inside a JSON string (a quote there is escaped), and a cut inside a nested array of objects leaves both
# halves unbalanced, so a wrong cut always fails to decode (and the whole array is then decoded at once).
_FIRST_BYTE = re.compile(rb"\S")
_EVENT_BOUNDARY = re.compile(rb'\}\s*(,)\s*\{\s*"')
_EVENTS_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')


class _LaunchArgs(msgspec.Struct, gc=False):
    """The args of device work and runtime launches, typed for speed (the hot path of an import)."""

    correlation: int = -1
    stream: int | str = -1
    device: int = -1
    nbytes: int = msgspec.field(default=-1, name="bytes")


_LAUNCH_DECODER = msgspec.json.Decoder(list[_LaunchArgs | None])
_META_ARGS_DECODER = msgspec.json.Decoder(_Args)
_ATTRS_ENCODER = msgspec.json.Encoder()  # 5x faster than json.dumps for the per-collective attrs

# ---- what each Kineto category means ------------------------------------------------------------

# Host categories keep their Kineto meaning in the span kind: the TensorBoard plugin's Overview (and anyone
# reading the spans) tells operators from user ranges and from the Python stack tracer's frames.
_HOST_CATS = {
    "cpu_op": SpanKind.CPU_OP.value,
    "operator": SpanKind.CPU_OP.value,
    "python": SpanKind.CPU_OP.value,
    "cpu_instant_event": SpanKind.CPU_OP.value,
    "user_annotation": SpanKind.ANNOTATION.value,
    "python_function": SpanKind.PYTHON_FRAME.value,
}
_RUNTIME_CATS = {
    "cuda_runtime",
    "runtime",
    "cuda_driver",
    "privateuse1_runtime",
    "mtia_runtime",
    "xpu_runtime",
}
_DEVICE_CATS = {
    "kernel": None,
    "gpu_memcpy": SpanKind.MEMCPY.value,
    "gpu_memset": SpanKind.MEMSET.value,
    "memcpy": SpanKind.MEMCPY.value,
    "memset": SpanKind.MEMSET.value,
    "mtia_ccp_events": None,
}
_IGNORED_CATS = {
    "trace",
    "cuda_sync",
    "overhead",
    "cuda_profiler_range",
    "ac2g",
    "fwdbwd",
    "async_cpu_to_gpu",
    "async_gpu",
    "python_function_with_stack",
}
_STEP_RE = re.compile(r"^ProfilerStep#(\d+)$")
_RANK_IN_NAME = re.compile(r"rank[-_]?(\d+)", re.IGNORECASE)


@dataclass(slots=True)
class ImportedTrace:
    """One rank's trace as span columns plus what the trace said about itself."""

    path: Path
    rank: int
    world_size: int
    spans: SpanColumns
    anchor_unix_ns: int
    """Wall-clock time of relative 0 (from `baseTimeNanoseconds`, or the timestamps' own epoch)."""
    pid: int
    backend: str | None
    device_names: list[str]
    events_total: int
    skipped: dict[str, int] = field(default_factory=dict)
    """Events not imported, by reason ("unknown cat 'foo'", "unknown phase 'Q'", "no timestamp")."""
    thread_names: dict[int, str] = field(default_factory=dict)
    rank_source: str = "trace"
    """Where the rank came from: "trace" (distributedInfo), "file name" (`rank3`, `rank-3`) or "order" (the
    file's place among the traces imported together)."""
    event_categories: tuple[str, ...] = ()
    """The distinct Kineto categories of its complete events, as written (`cuda_runtime`, `Runtime`...): the
    trace's format generation, which decides how the TensorBoard plugin's Overview read it."""


def find_trace_files(paths: list[str]) -> list[Path]:
    """Expand files and directories into trace files. Raises UsageError for missing paths or empty dirs."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"no such file or directory: {raw}")
        if path.is_dir():
            # skip gpuwatch run directories in the tree (users keep runs next to their traces)
            runs = {p.parent for p in path.rglob("gpuwatch-run.json")}
            inside = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and (p.name.endswith(".json") or p.name.endswith(".json.gz"))
                and not any(r == p.parent or r in p.parents for r in runs)
            )
            if not inside:
                raise UsageError(f"no .json or .json.gz trace files in directory: {raw}")
            found.extend(inside)
        else:
            found.append(path)
    return found


def import_trace(
    path: Path,
    *,
    default_rank: int = 0,
    split: bool = False,
    data: bytes | bytearray | None = None,
    after_split: Any = None,
) -> ImportedTrace:
    """Parse one trace file into an `ImportedTrace`. `split`: a large trace may be read by this process and a
    forked child, half each (`split_import`); only where no other thread runs and a second core is free.
    `data`: the file's JSON bytes, already read (`trace_bytes.read_trace_bytes`). `after_split`: what the
    split's child does once its half is sent (`split_import.AfterHalf`), where the trace is split.

    Raises:
        TraceFormatError: invalid JSON, or JSON that is not a Chrome/Kineto trace, or no usable events.
    """
    read = None if split or data is not None else _read_streamed(path)
    if read is None:
        raw = read_trace_bytes(path) if data is None else data
        trace, acc = _read_events(path, raw, split=split, after_split=after_split)
    else:
        trace, acc = read
    dist = trace.distributedInfo or {}
    rank = _as_int(dist.get("rank"))
    rank_source = "trace"
    if rank is None or not 0 <= rank < 2**31:  # a rank column is int32; a negative rank is no rank
        m = _RANK_IN_NAME.search(path.name)
        rank, rank_source = (
            (int(m.group(1)), "file name") if m and len(m.group(1)) < 10 else (default_rank, "order")
        )
    world_size = _as_int(dist.get("world_size"))
    if world_size is None or not rank < world_size < 2**31:
        world_size = rank + 1
    if acc.events_total == 0:
        raise TraceFormatError(f"{path} has no trace events (is it a PyTorch profiler trace?)")
    if acc.n == 0:
        raise TraceFormatError(f"{path} has no complete ('X') events gpuwatch can use")
    res = acc.finish(path, trace, rank, world_size, dist)
    res.rank_source = rank_source
    return res


def _read_streamed(path: Path) -> tuple[_WholeTrace, _Accumulator] | None:
    """A large gzip trace read as it is inflated (`stream_import`), or None: a small or plain JSON file, one
    that cannot be read (reported by the careful path), or one whose layout the stream cannot cut."""
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                return None
            fh.seek(-4, 2)
            size_hint = int.from_bytes(fh.read(4), "little")
    except OSError:
        return None
    from collectors.kineto.stream_import import STREAM_MIN_BYTES, read_streamed

    if size_hint < STREAM_MIN_BYTES:  # ISIZE is the size modulo 4 GiB: a 4 GiB+ trace may read whole
        return None
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    return read_streamed(path, raw)


def import_traces(
    paths: list[str],
    *,
    on_skip: Callable[[Path, str], None] | None = None,
    split: bool = False,
    preloaded: dict[Path, bytes | bytearray] | None = None,
    after_split: Any = None,
) -> list[ImportedTrace]:
    """Import every trace under `paths`, one per rank. `split`: as for `import_trace`, where the files are
        read one at a time (several large ones go to one process each). `preloaded`: JSON bytes already read,
        by file path (as `paths` names it), used (and taken out, so that it is freed with the import's other
    buffers) where this process reads that file. `after_split`: as for `import_trace`.

        Files named on the command line must be traces. Files found inside a directory that are valid JSON
        but not profiler traces (a TensorBoard plugin's other files, a config) are skipped and reported to
        `on_skip(path, reason)`; corrupt ones still fail the import, since they are likely a rank's trace.

        Raises:
            UsageError: two files claim one rank, or a directory holds no trace at all.
            TraceFormatError: a corrupt or truncated trace.
    """
    from collectors.kineto.parallel_import import import_each, worker_count

    files = find_trace_files(paths)
    named = {Path(p).resolve() for p in paths if Path(p).is_file()}
    results: list[ImportedTrace] = []
    workers = worker_count(files)
    outcomes = import_each(files, workers) if workers > 1 else None
    try:
        for path in files:
            outcome: ImportedTrace | NotATraceError
            if outcomes is None:
                try:
                    data = preloaded.pop(path, None) if preloaded else None
                    outcome = import_trace(
                        path, default_rank=len(results), split=split, data=data, after_split=after_split
                    )
                except NotATraceError as exc:
                    outcome = exc
            else:
                outcome = next(outcomes)
                if isinstance(outcome, ImportedTrace) and outcome.rank_source == "order":
                    if outcome.rank != len(results):  # a file before it was no trace: renumber, as in order
                        outcome = import_trace(path, default_rank=len(results))
            if isinstance(outcome, NotATraceError):
                if path.resolve() in named:
                    raise outcome
                if on_skip is not None:
                    on_skip(path, str(outcome))
                continue
            results.append(outcome)
    finally:
        if outcomes is not None:
            outcomes.close()
    if not results:
        raise UsageError(f"no PyTorch profiler traces in: {' '.join(paths)}")
    seen: dict[int, Path] = {}
    for res in results:
        if res.rank in seen:
            raise UsageError(
                f"two traces claim rank {res.rank}: {seen[res.rank]} and {res.path}; import them separately"
            )
        seen[res.rank] = res.path
    return results


class NotATraceError(TraceFormatError):
    """Valid JSON, but not a Chrome/Kineto trace (no `traceEvents` array)."""


def _too_deep(path: Path) -> TraceFormatError:
    # msgspec raises RecursionError (not one of its own errors) on JSON nested past Python's limit
    return TraceFormatError(f"{path} is not a usable trace (JSON nested too deeply)")


def _read_events(
    path: Path, data: bytes | bytearray, *, split: bool = False, after_split: Any = None
) -> tuple[_Trace | _WholeTrace, _Accumulator]:
    """The trace's top level, and its events gathered into columns: with `split`, from `SPLIT_MIN_BYTES` on,
    half by a forked child (`split_import.read_split`); else in one pass up to `_ONE_PASS_BYTES`; above,
    chunk by chunk, with the top level read from around the event array (`_split_top`); anything unusual the
    careful way (the whole document checked first, the array in one piece if a cut fails)."""
    if split:
        from collectors.kineto.split_import import SPLIT_MIN_BYTES, read_split

        if len(data) >= SPLIT_MIN_BYTES:
            read = read_split(data, after_split)
            if read is not None:
                return read
    if len(data) <= _ONE_PASS_BYTES:
        whole = _decode_whole(data)
        if whole is not None:
            acc = _Accumulator()
            assert whole.traceEvents is not None
            decoded, whole.traceEvents = whole.traceEvents, None
            acc.add(decoded)
            return whole, acc
    else:
        around = _split_top(data)
        if around is not None:
            top, events_view = around
            acc = _Accumulator()
            try:
                for chunk in _event_chunks(events_view, top=top):
                    acc.add(chunk)
                    del chunk
                return top, acc
            except _BadCut:
                pass
    trace, events = _decode(path, data)
    acc = _Accumulator()
    try:
        for chunk in _event_chunks(events):
            acc.add(chunk)
            del chunk  # free this chunk's events before the next one is decoded
    except _BadCut:  # a cut between two events was not one after all: decode the array in one piece
        acc = _Accumulator()
        acc.add(_decode_events(path, events))
    return trace, acc


def _split_top(data: bytes | bytearray) -> tuple[_WholeTrace, memoryview] | None:
    """For a large trace, the top-level keys before its event array, and a view from the array's "[" to the
    end of the document (`_event_chunks(..., top=)` reads the keys after it): no pass over the events only
    to skip them (0.6 s for a million events). None if the array cannot be found this way."""
    m = _EVENTS_KEY.search(data)
    if m is None:
        return None
    try:
        top = _WHOLE_DECODER.decode(b"".join((data[: m.start()], b'"traceEvents":null}')))
    except (msgspec.MsgspecError, RecursionError):
        return None  # the match was not the top level's key (inside a string, or nested)
    return top, memoryview(data)[m.end() - 1 :]


def _decode_whole(data: bytes | bytearray) -> _WholeTrace | None:
    """The whole trace in one pass; None for anything unusual (a bare event array, no `traceEvents`, invalid
    JSON, an event of an unexpected shape), which the two-pass path then reads or reports."""
    try:
        trace = _WHOLE_DECODER.decode(data)
    except (msgspec.MsgspecError, RecursionError):
        return None
    return trace if trace.traceEvents is not None else None


def _decode(path: Path, data: bytes | bytearray) -> tuple[_Trace, memoryview]:
    """The trace's top level, and the raw bytes of its event array (`[...]`, not yet decoded)."""
    first = _FIRST_BYTE.search(data)
    if first is None:
        raise TraceFormatError(f"{path} is empty")
    try:
        if first.group() == b"[":  # a bare event array (chrome://tracing's other format)
            msgspec.json.decode(data, type=msgspec.Raw)  # invalid JSON is reported as such, up front
            return _Trace(), memoryview(data)
        trace = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise NotATraceError(f"{path} is JSON but not a PyTorch profiler trace ({exc})") from None
    except msgspec.DecodeError as exc:
        raise TraceFormatError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise _too_deep(path) from None
    events = memoryview(trace.traceEvents)
    if bytes(events[:1]) != b"[":
        raise NotATraceError(f"{path} is JSON but not a PyTorch profiler trace (no 'traceEvents' array)")
    return trace, events


def _decode_events(path: Path, events: memoryview) -> list[_Event]:
    try:
        return _PLAIN_LIST_DECODER.decode(events)
    except msgspec.ValidationError as exc:  # valid JSON (checked up front), but not trace events
        raise NotATraceError(f"{path} is JSON but not a PyTorch profiler trace ({exc})") from None
    except msgspec.DecodeError as exc:
        raise TraceFormatError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise _too_deep(path) from None


class _BadCut(Exception):
    pass


def _chunk_bounds(events: memoryview) -> list[tuple[int, int]]:
    """Where `_event_chunks` cuts the event array: (start, end) of each piece, `_CHUNK_BYTES` or a little more,
    each cut at the comma between two events."""
    n = len(events)
    cuts: list[int] = []
    pos = _CHUNK_BYTES
    while pos < n:
        m = _EVENT_BOUNDARY.search(events, pos)
        if m is None:
            break
        cuts.append(m.start(1))  # the comma between two events
        pos = m.start(1) + _CHUNK_BYTES
    return list(zip([0] + [c + 1 for c in cuts], [*cuts, n]))


def _event_chunks(
    events: memoryview,
    top: _WholeTrace | None = None,
    bounds: list[tuple[int, int]] | None = None,
    pieces: range | None = None,
) -> Iterator[list[Any]]:
    """Decode the event array `_CHUNK_BYTES` at a time, cutting between two events. With `top`, `events`
    runs on to the end of the document: the last piece is decoded as the rest of the top level, whose keys
    are set on `top`. `bounds`: `_chunk_bounds(events)`, if already found; `pieces`: which of them to decode
    (all by default)."""
    bounds = _chunk_bounds(events) if bounds is None else bounds
    final = len(bounds) - 1
    for k in range(len(bounds)) if pieces is None else pieces:
        lo, hi = bounds[k]
        last = k == final
        if last and top is not None:
            yield _rest_of_top(b"".join((b'{"traceEvents":', b"" if k == 0 else b"[", events[lo:hi])), top)
            return
        # the first piece keeps the array's "[", the last its "]"; the others get their own
        piece = b"".join((b"" if k == 0 else b"[", events[lo:hi], b"" if last else b"]"))
        try:
            yield _LIST_DECODER.decode(piece)
        except (msgspec.MsgspecError, RecursionError):
            raise _BadCut() from None


def _rest_of_top(piece: bytes, top: _WholeTrace) -> list[Any]:
    """The events of the last piece of a split trace; the top-level keys after them are set on `top`."""
    try:
        rest = _WHOLE_DECODER.decode(piece)
    except (msgspec.MsgspecError, RecursionError):
        raise _BadCut() from None
    if rest.traceEvents is None:
        raise _BadCut()
    for key in ("distributedInfo", "baseTimeNanoseconds", "deviceProperties"):
        if getattr(rest, key) is not None:
            setattr(top, key, getattr(rest, key))
    return rest.traceEvents


def _as_int(value: Any) -> int | None:
    """An integer that fits int64, from an int, a finite float or a numeric string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = int(value) if abs(value) < _INT64 else None  # also None for NaN and inf
    elif isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            return None
    if isinstance(value, int) and -_INT64 <= value < _INT64:
        return value
    return None


_SKIP = "skip"


def _kind_of_cat(cat: str | None) -> str | None:
    """SpanKind for a Kineto category; `_SKIP` for known categories we do not import; None if unknown.

    Device "kernel" events return "" and are classified by name afterwards.
    """
    low = cat.lower() if isinstance(cat, str) else ""
    if low in _DEVICE_CATS:
        return _DEVICE_CATS[low] or ""
    if low in _HOST_CATS:
        return _HOST_CATS[low]
    if low == "gpu_user_annotation":
        return SpanKind.GPU_ANNOTATION.value
    if low in _RUNTIME_CATS:
        return SpanKind.RUNTIME.value
    if low in _IGNORED_CATS:
        return _SKIP
    return None


# Kineto category classes, decided once per distinct category string. Order matters: host classes first,
# then the GPU-side annotation, runtime calls, device work (`>=` comparisons below rely on it).
_C_UNKNOWN, _C_SKIP, _C_HOST, _C_ANNOTATION, _C_PYFRAME, _C_GPU_ANN = -1, 0, 1, 2, 3, 4
_C_RUNTIME, _C_KERNEL, _C_MEMCPY, _C_MEMSET = 5, 6, 7, 8
_KINDS = (
    SpanKind.CPU_OP.value,
    SpanKind.RUNTIME.value,
    SpanKind.KERNEL.value,
    SpanKind.COLLECTIVE.value,
    SpanKind.MEMCPY.value,
    SpanKind.MEMSET.value,
    SpanKind.STEP.value,
    SpanKind.ANNOTATION.value,
    SpanKind.PYTHON_FRAME.value,
    SpanKind.GPU_ANNOTATION.value,
)
_K = {k: i for i, k in enumerate(_KINDS)}
_SPAN_KIND_CODE = np.array([SPAN_KINDS.index(k) for k in _KINDS], dtype=np.int8)
"""`_KINDS` index -> `SPAN_KINDS` index (`SpanColumns.kind_code`)."""
_CATEGORY_CODE = {c: i for i, c in enumerate(CATEGORY_OR_NONE)}
_get_ts, _get_dur, _get_pid, _get_tid = (attrgetter(f) for f in ("ts", "dur", "pid", "tid"))


def _class_of_cat(cat: Any) -> int:
    kind = _kind_of_cat(cat)
    if kind is None:
        return _C_UNKNOWN
    if kind == _SKIP:
        return _C_SKIP
    return {
        SpanKind.CPU_OP.value: _C_HOST,
        SpanKind.ANNOTATION.value: _C_ANNOTATION,
        SpanKind.PYTHON_FRAME.value: _C_PYFRAME,
        SpanKind.GPU_ANNOTATION.value: _C_GPU_ANN,
        SpanKind.RUNTIME.value: _C_RUNTIME,
        "": _C_KERNEL,
        SpanKind.MEMCPY.value: _C_MEMCPY,
        SpanKind.MEMSET.value: _C_MEMSET,
    }[kind]


class _Accumulator:
    """Turns decoded chunks of events into column pieces; `finish` joins them into `ImportedTrace`."""

    def __init__(self) -> None:
        self.cat_class: dict[Any, int] = {}
        self.name_code: dict[Any, int] = {}
        self.name_values: list[str] = []
        self.name_device_kind: list[int] = []  # kind of a "kernel"-category event with this name
        self.name_host_cat: list[str | None] = []
        self.name_step: list[int] = []
        self.parts: dict[str, list[np.ndarray]] = defaultdict(list)
        self.args: dict[int, _Args | None] = {}  # collectives' full args, by final span index
        self.skipped: Counter[str] = Counter()
        self.thread_names: dict[int, str] = {}
        self.events_total = 0
        self.n = 0

    def _codes(self, names: list[Any]) -> np.ndarray:
        codes = self.name_code
        for nm in set(names).difference(codes):
            text = (nm if isinstance(nm, str) else str(nm))[:_MAX_NAME_CHARS]
            codes[nm] = len(self.name_values)
            self.name_values.append(text)
            self.name_device_kind.append(_K[device_kind(text)])
            self.name_host_cat.append(host_category(text))
            self.name_step.append(_step_number(text))
        return np.fromiter(map(codes.__getitem__, names), np.int64, len(names))

    def add(self, events: list[Any]) -> None:
        """Events of one chunk: `_Event`s, or `_TaggedEvent`s (same attributes)."""
        self.events_total += len(events)
        xs = [e for e in events if e.ph == "X"]
        if len(xs) != len(events):  # flow and instant events are many and carry nothing we use
            self._other_phases([e for e in events if e.ph not in _QUIET_PHASES])
        cats = [e.cat for e in xs]
        for c in set(cats).difference(self.cat_class):
            self.cat_class[c] = _class_of_cat(c)
        cls = np.fromiter(map(self.cat_class.__getitem__, cats), np.int8, len(cats))
        if (cls < 0).any():
            self.skipped.update(f"unknown cat {c!r}" for c in cats if self.cat_class[c] < 0)
        keep = cls > 0
        if not keep.all():
            xs = [xs[i] for i in np.flatnonzero(keep).tolist()]
            cls = cls[keep]
        ts, ok = _float_column(xs, _get_ts)
        if ok is not None:  # events without a numeric timestamp cannot be placed
            self.skipped["no numeric timestamp"] += int((~ok).sum())
            xs = [xs[i] for i in np.flatnonzero(ok).tolist()]
            cls, ts = cls[ok], ts[ok]
        dur, _ = _float_column(xs, _get_dur, default=0.0)
        sane = (np.abs(ts) <= _MAX_TS_US) & (dur <= _MAX_DUR_US)  # False for inf too
        if not sane.all():
            self.skipped["timestamp or duration out of range"] += int((~sane).sum())
            xs = [xs[i] for i in np.flatnonzero(sane).tolist()]
            cls, ts, dur = cls[sane], ts[sane], dur[sane]
        n = len(xs)
        if n == 0:
            return
        code = self._codes([e.name for e in xs])
        pid = _int_column_of(xs, _get_pid)
        tid = _int_column_of(xs, _get_tid)
        corr = np.full(n, -1, dtype=np.int64)
        stream = np.full(n, -1, dtype=np.int64)
        device = np.full(n, -1, dtype=np.int64)
        nbytes = np.full(n, -1, dtype=np.int64)
        launch = np.flatnonzero(cls >= _C_RUNTIME)  # runtime calls and device work carry launch args
        if launch.size:
            la = _decode_launch_args([xs[i].args for i in launch.tolist()])
            corr[launch] = _int_list(la, "correlation")
            dev = np.flatnonzero(cls[launch] >= _C_KERNEL)
            if dev.size:
                la_dev = [la[j] for j in dev.tolist()] if dev.size != launch.size else la
                at = launch[dev]
                s = _int_list(la_dev, "stream")
                stream[at] = np.where(s >= 0, s, tid[at])  # old traces: the stream is the tid
                d = _int_list(la_dev, "device")
                device[at] = np.where(d >= 0, d, pid[at])  # ... and the device the pid
                for col, field_name in ((stream, "tid"), (device, "pid")):
                    bad = at[col[at] < 0]  # a name ("stream 7", "GPU 0"), not a number: still a device
                    if bad.size:
                        col[bad] = [_device_id(getattr(xs[i], field_name)) for i in bad.tolist()]
                nbytes[at] = _int_list(la_dev, "nbytes")
        gpu_ann = np.flatnonzero(cls == _C_GPU_ANN)  # a range on a device stream: tid is the stream
        if gpu_ann.size:
            stream[gpu_ann] = [_device_id(xs[i].tid) for i in gpu_ann.tolist()]
            device[gpu_ann] = [_device_id(xs[i].pid) for i in gpu_ann.tolist()]
        # full args only where they carry NCCL metadata: collective kernels, record_param_comms calls
        rpc = self.name_code.get("record_param_comms", -2)
        kernel_kind = np.asarray(self.name_device_kind, dtype=np.int8)[code]
        full = np.flatnonzero(
            ((cls == _C_KERNEL) & (kernel_kind == _K[SpanKind.COLLECTIVE.value]))
            | ((cls == _C_HOST) & (code == rpc))
        )
        if full.size:
            decoded = _lenient_args([xs[i].args for i in full.tolist()])
            self.args.update(zip((full + self.n).tolist(), decoded))
        for key, arr in (
            ("cls", cls), ("code", code), ("ts", ts), ("dur", dur), ("pid", pid), ("tid", tid),
            ("corr", corr), ("stream", stream), ("device", device), ("nbytes", nbytes),
        ):  # fmt: skip
            self.parts[key].append(arr)
        self.n += n

    def compact(self) -> _Accumulator:
        """Itself with each column in one piece: what a split read's child sends back (`split_import`)."""
        for key, arrs in self.parts.items():
            if len(arrs) > 1:
                self.parts[key] = [np.concatenate(arrs)]
        return self

    def merge(self, later: _Accumulator) -> None:
        """Append the events of `later`, which came after this one's in the trace: its name codes are
        renumbered into this one's, its args indices shifted; the result is what one accumulator given all
        the chunks in order would hold, up to which code a name has."""
        remap = np.empty(len(later.name_values), dtype=np.int64)
        codes = self.name_code
        for raw, code in later.name_code.items():
            mine = codes.get(raw)
            if mine is None:
                mine = codes[raw] = len(self.name_values)
                self.name_values.append(later.name_values[code])
                self.name_device_kind.append(later.name_device_kind[code])
                self.name_host_cat.append(later.name_host_cat[code])
                self.name_step.append(later.name_step[code])
            remap[code] = mine
        for key, arrs in later.parts.items():
            self.parts[key].extend([remap[a] for a in arrs] if key == "code" else arrs)
        self.args.update({i + self.n: a for i, a in later.args.items()})
        for c, cls in later.cat_class.items():
            self.cat_class.setdefault(c, cls)
        self.skipped.update(later.skipped)
        self.thread_names.update(later.thread_names)  # a later name of a thread wins, as in one pass
        self.events_total += later.events_total
        self.n += later.n

    def _other_phases(self, events: list[_Event]) -> None:
        for ev in events:
            if ev.ph == "M":
                if ev.name == "thread_name":
                    tid = _as_int(ev.tid)
                    meta = _decode_args(ev.args)
                    if tid is not None and meta is not None and isinstance(meta.name, str):
                        self.thread_names[tid] = meta.name
            elif ev.ph not in _IGNORED_PHASES:
                self.skipped[f"unknown phase {ev.ph!r}"] += 1

    def _name_code_column(self, code: np.ndarray) -> np.ndarray:
        """Per span, a number equal exactly for equal names (the engine groups by it): the first code of
        each distinct name text (two raw names, 5 and "5", share one text)."""
        first: dict[str, int] = {}
        remap = np.fromiter(
            (first.setdefault(v, i) for i, v in enumerate(self.name_values)), np.int64, len(self.name_values)
        )
        return remap[code]

    def finish(
        self, path: Path, trace: _Trace | _WholeTrace, rank: int, world_size: int, dist: dict[str, Any]
    ) -> ImportedTrace:
        col = {k: np.concatenate(v) for k, v in self.parts.items()}
        self.parts.clear()
        n, cls, code = self.n, col["cls"], col["code"]
        # kind: by category, kernels by name (HTA's rule), steps by ProfilerStep#N names
        kind = np.full(n, _K[SpanKind.CPU_OP.value], dtype=np.int8)
        kind[cls == _C_ANNOTATION] = _K[SpanKind.ANNOTATION.value]
        kind[cls == _C_PYFRAME] = _K[SpanKind.PYTHON_FRAME.value]
        kind[cls == _C_RUNTIME] = _K[SpanKind.RUNTIME.value]
        is_kernel_cat = cls == _C_KERNEL
        kind[is_kernel_cat] = np.asarray(self.name_device_kind, dtype=np.int8)[code[is_kernel_cat]]
        kind[cls == _C_MEMCPY] = _K[SpanKind.MEMCPY.value]
        kind[cls == _C_MEMSET] = _K[SpanKind.MEMSET.value]
        is_device = cls >= _C_KERNEL
        gpu_ann = cls == _C_GPU_ANN
        kind[gpu_ann] = _K[SpanKind.GPU_ANNOTATION.value]
        # a ProfilerStep#N range the device saw stays an annotation: the host's marker is the step
        step = np.where(is_device | gpu_ann, -1, np.asarray(self.name_step, dtype=np.int64)[code])
        kind[step >= 0] = _K[SpanKind.STEP.value]
        kind_arr = np.array(_KINDS, dtype=object)[kind]
        # category: device kinds map directly; host events by the name rules (decided per name)
        host_cat = np.empty(len(self.name_host_cat), dtype=object)
        host_cat[:] = self.name_host_cat
        category = host_cat[code]
        cat_code = np.array([_CATEGORY_CODE[c] for c in self.name_host_cat], dtype=np.int8)[code]
        for dkind, dcat in DEVICE_KIND_CATEGORY.items():
            category[kind == _K[dkind]] = dcat
            cat_code[kind == _K[dkind]] = _CATEGORY_CODE[dcat]
        category[(step >= 0) | gpu_ann] = None
        cat_code[(step >= 0) | gpu_ann] = _CATEGORY_CODE[None]

        ts_us, dur_us = col["ts"], col["dur"]
        # Anchor on a whole microsecond so relative times keep their sub-microsecond phase exactly.
        t0_us = float(np.floor(ts_us.min()))
        start_ns = np.rint((ts_us - t0_us) * 1000.0).astype(np.int64)
        end_ns = start_ns + np.rint(np.maximum(dur_us, 0.0) * 1000.0).astype(np.int64)
        base = _as_int(trace.baseTimeNanoseconds) or 0
        anchor_unix_ns = int(round(t0_us * 1000)) + base
        values = np.empty(len(self.name_values), dtype=object)
        values[:] = self.name_values
        names = values[code]

        nbytes = col["nbytes"]
        seq = np.full(n, -1, dtype=np.int64)
        attrs = np.full(n, None, dtype=object)
        kind[_collective_metadata(self.args, kind_arr, names, start_ns, nbytes, seq, attrs)] = _K[
            SpanKind.COLLECTIVE.value
        ]

        pid = col["pid"]
        host_pids = pid[~(is_device | gpu_ann)]
        main_pid = 0
        if host_pids.size:
            uniq, counts = np.unique(host_pids, return_counts=True)
            main_pid = int(uniq[np.argmax(counts)])
        device_names = [
            str(d.get("name"))
            for d in (trace.deviceProperties or [])
            if isinstance(d, dict) and d.get("name")
        ]
        cols = SpanColumns(
            rank=np.full(n, rank, dtype=np.int32),
            pid=pid,
            tid=np.where(is_device | gpu_ann, 0, col["tid"]),
            stream=col["stream"],
            device_index=col["device"].astype(np.int32),
            kind=kind_arr,
            category=category,
            name=names,
            start_ns=start_ns,
            end_ns=end_ns,
            step=step,
            bytes=nbytes,
            correlation=col["corr"],
            seq=seq,
            attrs=attrs,
            name_code=self._name_code_column(code),
            kind_code=_SPAN_KIND_CODE[kind],
            category_code=cat_code,
        )
        col.clear()
        cols = cols.sorted_as_reader()  # once, here: the analysis reads it as it is
        return ImportedTrace(
            path=path,
            rank=rank,
            world_size=world_size,
            spans=cols,
            anchor_unix_ns=anchor_unix_ns,
            pid=main_pid,
            backend=dist.get("backend") if isinstance(dist.get("backend"), str) else None,
            device_names=device_names,
            events_total=self.events_total,
            skipped=dict(self.skipped),
            thread_names=self.thread_names,
            event_categories=tuple(sorted(str(c) for c in self.cat_class if c is not None)),
        )


def _float_column(events: list[_Event], get: Any, default: float | None = None) -> tuple[np.ndarray, Any]:
    """A float64 column of a field; with `default` None, also a mask of the events whose value is numeric
    (None when all are, the common case)."""
    try:
        arr = np.fromiter(map(get, events), np.float64, len(events))
        if not np.isnan(arr).any():  # numpy reads None as NaN: those take the careful path below
            return arr, None
    except (TypeError, ValueError):
        pass
    vals = [get(e) for e in events]
    ok = np.array(
        [isinstance(v, (int, float)) and not isinstance(v, bool) and v == v for v in vals], dtype=bool
    )
    fill = 0.0 if default is None else default
    arr = np.array([v if good else fill for v, good in zip(vals, ok.tolist())], dtype=np.float64)
    return arr, (None if default is not None else ok)


def _int_column_of(events: list[_Event], get: Any) -> np.ndarray:
    try:
        return np.fromiter(map(get, events), np.int64, len(events))
    except (TypeError, ValueError, OverflowError):
        return _int_column([get(e) for e in events])


def _int_list(args: list[Any], field_name: str) -> np.ndarray:
    """An int64 column of a launch-args field; -1 where the args or the field are missing or odd."""
    try:
        return np.fromiter(map(attrgetter(field_name), args), np.int64, len(args))
    except (TypeError, ValueError, AttributeError, OverflowError):  # null args, string ids: one by one
        return np.array([_int_or(getattr(a, field_name, None), -1) for a in args], dtype=np.int64)


def _step_number(name: str) -> int:
    m = _STEP_RE.match(name) if name.startswith("ProfilerStep") else None
    return int(m.group(1)) if m and len(m.group(1)) < 16 else -1  # a number past 1e15 is no step


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _decode_args(raw: msgspec.Raw) -> _Args | None:
    try:
        return _META_ARGS_DECODER.decode(raw) if bytes(raw) != b"null" else None
    except (msgspec.MsgspecError, RecursionError):
        return None


def _decode_launch_args(raws: list[msgspec.Raw]) -> list[Any]:
    blob = b"".join((b"[", b",".join(raws), b"]"))  # Raw is a buffer: joined without copies of its own
    try:
        return _LAUNCH_DECODER.decode(blob)
    except (msgspec.ValidationError, RecursionError):  # odd args (string correlation ids): the lenient path
        return _lenient_args(raws)


def _lenient_args(raws: list[msgspec.Raw]) -> list[_Args | None]:
    """Args decoded with every field untyped; args that are not an object at all become None."""
    try:
        return _ARGS_DECODER.decode(b"".join((b"[", b",".join(raws), b"]")))
    except (msgspec.ValidationError, RecursionError):
        return [_decode_args(r) for r in raws]


def _int_column(values: list[Any]) -> np.ndarray:
    """pid/tid values as int64; string ids ("PyTorch Profiler", "Spans") get stable negative numbers."""
    try:
        return np.array(values, dtype=np.int64)
    except (ValueError, TypeError, OverflowError):
        return np.array([_stable_int(v) for v in values], dtype=np.int64)


def _collective_metadata(
    args: dict[int, _Args | None],
    kind_arr: np.ndarray,
    names: np.ndarray,
    start_ns: np.ndarray,
    nbytes: np.ndarray,
    seq: np.ndarray,
    attrs: np.ndarray,
) -> list[int]:
    """Fill bytes, sequence numbers and NCCL metadata for collectives (host record_param_comms and kernels).
    Returns the host calls it made collectives (`kind_arr` says so from then on).

    Traces rarely carry a sequence number; where they do not, the n-th collective of a process group on
    this rank (by start time, separately for host calls and device kernels) is sequence n, the order every
    rank of the group must issue them in.
    """
    collective = SpanKind.COLLECTIVE.value
    idx = [
        i
        for i, a in args.items()
        if kind_arr[i] == collective
        or names[i] == "record_param_comms"  # a collective call even when its args carry no metadata
        or (a is not None and a.collective is not None)
    ]
    counters: Counter[tuple[str, str]] = Counter()
    made: list[int] = []
    for i in sorted(idx, key=lambda j: int(start_ns[j])):
        a = args[i]
        side = "device" if kind_arr[i] in DEVICE_KIND_CATEGORY else "host"
        if side == "host":
            if names[i] != "record_param_comms":
                continue
            kind_arr[i] = collective
            made.append(i)
        pg = str(a.pg_name)[:_MAX_NAME_CHARS] if a is not None and _is_scalar(a.pg_name) else "0"
        info: dict[str, Any] = {"process_group": pg}
        if a is not None:
            for key in ("collective", "in_nelems", "out_nelems", "group_size", "dtype", "pg_desc"):
                value = getattr(a, key)
                if isinstance(value, (str, int, float, bool)):  # scalars only: attrs stay flat JSON
                    info[key] = value[:_MAX_NAME_CHARS] if isinstance(value, str) else value
            elem = DTYPE_BYTES.get(str(a.dtype).lower(), 0) if isinstance(a.dtype, str) else 0
            n_in = _as_int(a.in_nelems)
            if elem and n_in is not None and 0 <= n_in * elem < _INT64:
                nbytes[i] = n_in * elem
        explicit = _as_int(a.seq) if a is not None else None
        counters[(side, pg)] += 1
        seq[i] = explicit if explicit is not None else counters[(side, pg)]
        # an inferred ordinal only counts collectives inside this trace: cross-rank matching trusts it
        # within a step only (profiling windows may start at different iterations on different ranks)
        info["seq_source"] = "trace" if explicit is not None else "order"
        attrs[i] = _ATTRS_ENCODER.encode(info).decode()
    for i, a in args.items():  # device copies report their size
        if a is not None and a.nbytes is not None and nbytes[i] < 0:
            value = _as_int(a.nbytes)
            if value is not None:
                nbytes[i] = value
    return made


_STRING_IDS: dict[str, int] = {}


def _stable_int(value: Any) -> int:
    """pid/tid as an integer; string ids ("PyTorch Profiler", "Spans") get stable negative numbers."""
    parsed = _as_int(value)
    if parsed is not None:
        return parsed
    key = str(value)[:_MAX_NAME_CHARS]
    if key not in _STRING_IDS:
        _STRING_IDS[key] = -1_000_000 - len(_STRING_IDS)
    return _STRING_IDS[key]


def _device_id(value: Any) -> int:
    """A non-negative stream or device number from a name: "stream 7" -> 7, "GPU 0" -> 0; names without
    a number get stable numbers from 1_000_000 (device spans are told from host spans by stream >= 0)."""
    parsed = _as_int(value)
    if parsed is not None and parsed >= 0:
        return parsed
    m = re.search(r"\d{1,15}", str(value)[:_MAX_NAME_CHARS])
    if m:
        return int(m.group())
    return 1_000_000 + (-_stable_int(str(value)) - 1_000_000)


def _int_or(value: Any, default: int) -> int:
    parsed = _as_int(value) if value is not None else None
    return default if parsed is None else parsed
