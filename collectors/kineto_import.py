"""Import PyTorch profiler (Kineto) Chrome traces into span columns, one `ImportedTrace` per rank.

Reads `.json` and `.json.gz`, a file or a directory of per-rank files. Handles what real traces contain:
old capitalized categories (`Kernel`, `Runtime`), float sub-microsecond timestamps, traces without
ProfilerStep markers, CPU-only ranks, ROCm (`hip*`) runtimes, missing `distributedInfo`. Keeps NCCL metadata
(collective name, message sizes, group size, process group, a per-group sequence number), CPU<->GPU
correlation ids and the rank. Events of kinds it does not know are skipped and counted, never fatal.

Decoding is typed (msgspec) and reads only the fields used; per-event work after decoding stays in list
comprehensions and numpy, because a Python loop over a million events costs as much as the parse.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from collectors.kineto_rules import DEVICE_KIND_CATEGORY, DTYPE_BYTES, device_kind, host_category
from gpuwatch.errors import TraceFormatError, UsageError
from gpuwatch.records import SpanColumns, SpanKind

# ---- the typed shape of a trace (only the fields we read) ---------------------------------------


class _Args(msgspec.Struct, omit_defaults=True):
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


class _Event(msgspec.Struct):
    ph: str = ""
    cat: str | None = None
    name: str | int | float | None = ""
    pid: int | str = 0
    tid: int | str = 0
    ts: float | str | None = None
    dur: float | str | None = None
    args: msgspec.Raw = msgspec.Raw(b"null")  # decoded later, only for the events that need it


class _Trace(msgspec.Struct):
    traceEvents: list[_Event] | None = None
    distributedInfo: dict[str, Any] | None = None
    baseTimeNanoseconds: Any = None
    deviceProperties: list[Any] | None = None


_DECODER = msgspec.json.Decoder(_Trace)
_LIST_DECODER = msgspec.json.Decoder(list[_Event])
_ARGS_DECODER = msgspec.json.Decoder(list[_Args | None])


class _LaunchArgs(msgspec.Struct):
    """The args of device work and runtime launches, typed for speed (the hot path of an import)."""

    correlation: int = -1
    stream: int | str = -1
    device: int = -1


_LAUNCH_DECODER = msgspec.json.Decoder(list[_LaunchArgs | None])
_META_ARGS_DECODER = msgspec.json.Decoder(_Args)

# ---- what each Kineto category means ------------------------------------------------------------

_HOST_CATS = {"cpu_op", "operator", "user_annotation", "python_function", "python", "cpu_instant_event"}
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
    "gpu_user_annotation",
    "overhead",
    "cuda_profiler_range",
    "ac2g",
    "fwdbwd",
    "async_cpu_to_gpu",
    "async_gpu",
    "python_function_with_stack",
}
_IGNORED_PHASES = {"M", "s", "f", "t", "i", "I", "C", "R", "n", "b", "e", "N", "O", "D", "P", "p"}
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


def find_trace_files(paths: list[str]) -> list[Path]:
    """Expand files and directories into trace files. Raises UsageError for missing paths or empty dirs."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"no such file or directory: {raw}")
        if path.is_dir():
            inside = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and (p.name.endswith(".json") or p.name.endswith(".json.gz"))
            )
            if not inside:
                raise UsageError(f"no .json or .json.gz trace files in directory: {raw}")
            found.extend(inside)
        else:
            found.append(path)
    return found


def read_trace_bytes(path: Path) -> bytes:
    """The decompressed JSON bytes of a trace file. Raises TraceFormatError on a corrupt or truncated gzip."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            raise TraceFormatError(f"corrupt or truncated gzip file {path}: {exc}") from None
    return raw


def import_trace(path: Path, *, default_rank: int = 0) -> ImportedTrace:
    """Parse one trace file into an `ImportedTrace`.

    Raises:
        TraceFormatError: invalid JSON, or JSON that is not a Chrome/Kineto trace, or no usable events.
    """
    data = read_trace_bytes(path)
    trace = _decode(path, data)
    events = trace.traceEvents or []
    if not events:
        raise TraceFormatError(f"{path} has no trace events (is it a PyTorch profiler trace?)")
    dist = trace.distributedInfo or {}
    rank = _as_int(dist.get("rank"))
    if rank is None:
        m = _RANK_IN_NAME.search(path.name)
        rank = int(m.group(1)) if m else default_rank
    world_size = _as_int(dist.get("world_size")) or max(rank + 1, 1)
    return _to_columns(path, events, trace, rank, world_size, dist)


def import_traces(paths: list[str]) -> list[ImportedTrace]:
    """Import every trace under `paths`, one per rank. Raises UsageError when two files claim one rank."""
    files = find_trace_files(paths)
    results = [import_trace(p, default_rank=i) for i, p in enumerate(files)]
    seen: dict[int, Path] = {}
    for res in results:
        if res.rank in seen:
            raise UsageError(
                f"two traces claim rank {res.rank}: {seen[res.rank]} and {res.path}; import them separately"
            )
        seen[res.rank] = res.path
    return results


def _decode(path: Path, data: bytes) -> _Trace:
    stripped = data.lstrip()
    if not stripped:
        raise TraceFormatError(f"{path} is empty")
    try:
        if stripped[:1] == b"[":
            return _Trace(traceEvents=_LIST_DECODER.decode(data))
        trace = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise TraceFormatError(f"{path} is JSON but not a PyTorch profiler trace ({exc})") from None
    except msgspec.DecodeError as exc:
        raise TraceFormatError(f"{path} is not valid JSON ({exc})") from None
    if trace.traceEvents is None:
        raise TraceFormatError(f"{path} is JSON but not a PyTorch profiler trace (no 'traceEvents')")
    return trace


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return None
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
        return SpanKind.CPU_OP.value
    if low in _RUNTIME_CATS:
        return SpanKind.RUNTIME.value
    if low in _IGNORED_CATS:
        return _SKIP
    return None


def _to_columns(
    path: Path, events: list[_Event], trace: _Trace, rank: int, world_size: int, dist: dict[str, Any]
) -> ImportedTrace:
    skipped: Counter[str] = Counter()
    thread_names: dict[int, str] = {}
    complete: list[_Event] = []
    for ev in events:
        if ev.ph == "X":
            complete.append(ev)
        elif ev.ph == "M":
            if ev.name == "thread_name":
                tid = _as_int(ev.tid)
                meta = _decode_args(ev.args)
                if tid is not None and meta is not None and isinstance(meta.name, str):
                    thread_names[tid] = meta.name
        elif ev.ph not in _IGNORED_PHASES:
            skipped[f"unknown phase {ev.ph!r}"] += 1

    # Classify by category once per distinct category, then keep what we import.
    cats = [e.cat for e in complete]
    cat_kind = {c: _kind_of_cat(c) for c in set(cats)}
    for c, k in cat_kind.items():
        if k is None:
            skipped[f"unknown cat {c!r}"] += cats.count(c)
    keep = [e for e in complete if (k := cat_kind[e.cat]) is not None and k != _SKIP]
    numeric = [isinstance(e.ts, (int, float)) for e in keep]
    if not all(numeric):
        skipped["no numeric timestamp"] += numeric.count(False)
        keep = [e for e, ok in zip(keep, numeric) if ok]
    if not keep:
        raise TraceFormatError(f"{path} has no complete ('X') events gpuwatch can use")
    n = len(keep)

    names_list = [e.name if isinstance(e.name, str) else str(e.name) for e in keep]
    name_code: dict[str, int] = {}
    codes = np.fromiter((name_code.setdefault(nm, len(name_code)) for nm in names_list), np.int64, n)
    uniq_names = list(name_code)
    raw_kind = [cat_kind[e.cat] for e in keep]

    # Kind per event: device kernels by name (HTA's rule); steps by ProfilerStep#N names.
    name_device_kind = np.array([device_kind(nm) for nm in uniq_names], dtype=object)
    name_step = np.array([_step_number(nm) for nm in uniq_names], dtype=np.int64)
    kind_arr = np.array(raw_kind, dtype=object)
    is_kernel_cat = kind_arr == ""
    kind_arr[is_kernel_cat] = name_device_kind[codes[is_kernel_cat]]
    is_device = np.isin(kind_arr, list(DEVICE_KIND_CATEGORY))
    step = np.where(is_device, -1, name_step[codes])
    kind_arr[step >= 0] = SpanKind.STEP.value

    # Category per event: device kinds map directly; host events by the name rules.
    name_host_cat = np.array([host_category(nm) for nm in uniq_names], dtype=object)
    category = name_host_cat[codes]
    for dkind, dcat in DEVICE_KIND_CATEGORY.items():
        category[kind_arr == dkind] = dcat
    category[step >= 0] = None

    ts_us = np.fromiter((e.ts for e in keep), np.float64, n)  # type: ignore[misc]
    dur_us = np.fromiter((e.dur if isinstance(e.dur, (int, float)) else 0.0 for e in keep), np.float64, n)
    # Anchor on a whole microsecond so relative times keep their sub-microsecond phase exactly.
    t0_us = float(np.floor(ts_us.min()))
    start_ns = np.rint((ts_us - t0_us) * 1000.0).astype(np.int64)
    end_ns = start_ns + np.rint(np.maximum(dur_us, 0.0) * 1000.0).astype(np.int64)
    base = _as_int(trace.baseTimeNanoseconds) or 0
    anchor_unix_ns = int(round(t0_us * 1000)) + base

    pid = _int_column([e.pid for e in keep])
    tid = np.where(is_device, 0, _int_column([e.tid for e in keep]))

    # Args only where they matter: device work and runtime launches (typed, hot), collectives (full).
    is_runtime = kind_arr == SpanKind.RUNTIME.value
    names = np.array(uniq_names, dtype=object)[codes]
    launch_idx = np.flatnonzero(is_device | is_runtime)
    correlation = np.full(n, -1, dtype=np.int64)
    stream = np.full(n, -1, dtype=np.int64)
    device_index = np.full(n, -1, dtype=np.int32)
    if launch_idx.size:
        launch = _decode_launch_args([keep[i].args for i in launch_idx.tolist()])
        correlation[launch_idx] = [
            c if type(c) is int else _int_or(c, -1)
            for c in (a.correlation if a is not None else -1 for a in launch)
        ]
        dev_pos = np.flatnonzero(is_device[launch_idx])
        dev_idx = launch_idx[dev_pos]
        stream[dev_idx] = [
            _device_field(launch[j], "stream", keep[i].tid)
            for j, i in zip(dev_pos.tolist(), dev_idx.tolist())
        ]
        device_index[dev_idx] = [
            _device_field(launch[j], "device", keep[i].pid)
            for j, i in zip(dev_pos.tolist(), dev_idx.tolist())
        ]
    coll_idx = np.flatnonzero(
        (names == "record_param_comms")
        | (kind_arr == SpanKind.COLLECTIVE.value)
        | (kind_arr == SpanKind.MEMCPY.value)
    )
    args: dict[int, _Args | None] = {}
    if coll_idx.size:
        decoded = _ARGS_DECODER.decode(
            b"[" + b",".join(bytes(keep[i].args) for i in coll_idx.tolist()) + b"]"
        )
        args = dict(zip(coll_idx.tolist(), decoded))

    nbytes = np.full(n, -1, dtype=np.int64)
    seq = np.full(n, -1, dtype=np.int64)
    attrs = np.full(n, None, dtype=object)
    _collective_metadata(args, kind_arr, names, start_ns, nbytes, seq, attrs)

    host_pids = pid[~is_device]
    main_pid = int(Counter(host_pids.tolist()).most_common(1)[0][0]) if host_pids.size else 0
    device_names = [
        str(d.get("name")) for d in (trace.deviceProperties or []) if isinstance(d, dict) and d.get("name")
    ]
    cols = SpanColumns(
        rank=np.full(n, rank, dtype=np.int32),
        pid=pid,
        tid=tid,
        stream=stream,
        device_index=device_index,
        kind=kind_arr,
        category=category,
        name=names,
        start_ns=start_ns,
        end_ns=end_ns,
        step=step,
        bytes=nbytes,
        correlation=correlation,
        seq=seq,
        attrs=attrs,
    )
    return ImportedTrace(
        path=path,
        rank=rank,
        world_size=world_size,
        spans=cols,
        anchor_unix_ns=anchor_unix_ns,
        pid=main_pid,
        backend=dist.get("backend") if isinstance(dist.get("backend"), str) else None,
        device_names=device_names,
        events_total=len(events),
        skipped=dict(skipped),
        thread_names=thread_names,
    )


def _step_number(name: str) -> int:
    m = _STEP_RE.match(name) if name.startswith("ProfilerStep") else None
    return int(m.group(1)) if m else -1


def _decode_args(raw: msgspec.Raw) -> _Args | None:
    try:
        return _META_ARGS_DECODER.decode(raw) if bytes(raw) != b"null" else None
    except msgspec.MsgspecError:
        return None


def _decode_launch_args(raws: list[msgspec.Raw]) -> list[Any]:
    blob = b"[" + b",".join(bytes(r) for r in raws) + b"]"
    try:
        return _LAUNCH_DECODER.decode(blob)
    except msgspec.ValidationError:  # an odd trace (string correlation ids): take the slow, lenient path
        return _ARGS_DECODER.decode(blob)


def _device_field(args: Any, name: str, fallback: Any) -> int:
    value = getattr(args, name, None) if args is not None else None
    parsed = _as_int(value) if value is not None and value != -1 else None
    if parsed is None:
        parsed = _as_int(fallback)
    return -1 if parsed is None else parsed


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
) -> None:
    """Fill bytes, sequence numbers and NCCL metadata for collectives (host record_param_comms and kernels).

    Traces rarely carry a sequence number; where they do not, the n-th collective of a process group on
    this rank (by start time, separately for host calls and device kernels) is sequence n, the order every
    rank of the group must issue them in.
    """
    collective = SpanKind.COLLECTIVE.value
    idx = [
        i
        for i, a in args.items()
        if kind_arr[i] == collective or (a is not None and a.collective is not None)
    ]
    counters: Counter[tuple[str, str]] = Counter()
    for i in sorted(idx, key=lambda j: int(start_ns[j])):
        a = args[i]
        side = "device" if kind_arr[i] in DEVICE_KIND_CATEGORY else "host"
        if side == "host":
            if names[i] != "record_param_comms":
                continue
            kind_arr[i] = collective
        pg = str(a.pg_name) if a is not None and a.pg_name is not None else "0"
        info: dict[str, Any] = {"process_group": pg}
        if a is not None:
            for key in ("collective", "in_nelems", "out_nelems", "group_size", "dtype", "pg_desc"):
                value = getattr(a, key)
                if value is not None:
                    info[key] = value
            elem = DTYPE_BYTES.get(str(a.dtype).lower(), 0) if a.dtype is not None else 0
            n_in = _as_int(a.in_nelems)
            if elem and n_in is not None:
                nbytes[i] = n_in * elem
        explicit = _as_int(a.seq) if a is not None else None
        counters[(side, pg)] += 1
        seq[i] = explicit if explicit is not None else counters[(side, pg)]
        # an inferred ordinal only counts collectives inside this trace: cross-rank matching trusts it
        # within a step only (profiling windows may start at different iterations on different ranks)
        info["seq_source"] = "trace" if explicit is not None else "order"
        attrs[i] = json.dumps(info)
    for i, a in args.items():  # device copies report their size
        if a is not None and a.nbytes is not None and nbytes[i] < 0:
            value = _as_int(a.nbytes)
            if value is not None:
                nbytes[i] = value


_STRING_IDS: dict[str, int] = {}


def _stable_int(value: Any) -> int:
    """pid/tid as an integer; string ids ("PyTorch Profiler", "Spans") get stable negative numbers."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    parsed = _as_int(value)
    if parsed is not None:
        return parsed
    key = str(value)
    if key not in _STRING_IDS:
        _STRING_IDS[key] = -1_000_000 - len(_STRING_IDS)
    return _STRING_IDS[key]


def _int_or(value: Any, default: int) -> int:
    parsed = _as_int(value) if value is not None else None
    return default if parsed is None else parsed
