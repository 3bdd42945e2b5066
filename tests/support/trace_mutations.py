"""Damaged and hostile profiler traces for the importer fuzz tests: pieces of the real shared traces, then
mutated the way real files go wrong and the way a hostile file would be written.

A case starts from a *base*: a window of events from one real trace in ../shared/traces/hta (with that
trace's own header: distributedInfo, deviceProperties, baseTimeNanoseconds), or a whole small trace. Up to
four structural mutations follow (deleted or retyped fields; NaN/inf/negative/huge timestamps and
durations; events out of order; enormous names; deeply nested args; duplicated pids and tids; zero-length
and overlapping steps; hostile names), then the document is serialized and its bytes may be damaged
(truncation at any offset, flipped or spliced bytes, in the JSON text or in its gzip stream). Every choice
comes from a `Chooser`: hypothesis (a failing case shrinks and replays with `@reproduce_failure`) or a
seeded `random.Random` (many times cheaper per case, for the bulk of the cases).

Independent of gpuwatch on purpose (no gpuwatch import), like `synthetic_kineto`.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from hypothesis import strategies as st

T = TypeVar("T")
WINDOW = 60
"""Events per window cut from a big trace: small enough that one case decodes in a few milliseconds."""


@dataclass(frozen=True)
class Base:
    """A piece of a real trace: its header and some of its events, kept as JSON text (cheap to copy)."""

    name: str
    header_json: str
    events_json: str

    def __repr__(self) -> str:  # hypothesis prints the strategy's arguments: keep them short
        return f"Base({self.name!r})"

    def doc(self) -> dict[str, Any]:
        doc = json.loads(self.header_json)
        doc["traceEvents"] = json.loads(self.events_json)
        return doc


@dataclass(frozen=True)
class Case:
    """One file to import: its name (the rank may come from it) and its bytes."""

    file_name: str
    data: bytes
    steps: tuple[str, ...]
    """What was done to the base, for the failure message."""

    def write(self, folder: Path) -> Path:
        path = folder / self.file_name
        path.write_bytes(self.data)
        return path


def load_corpus(traces_dir: Path) -> list[Base]:
    """Windows of every real trace under `traces_dir`: the start (metadata events), around the first
    ProfilerStep, NCCL kernel, record_param_comms, memcpy and runtime launch, plus one random window per
    trace; a trace of at most 4 windows' worth of events is also kept whole."""
    rng = random.Random(15)
    out: list[Base] = []
    for path in sorted(traces_dir.rglob("*.json*")):
        raw = path.read_bytes()
        doc = msgspec.json.decode(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        events = doc.pop("traceEvents")
        header = json.dumps(doc)
        label = path.parent.name
        if len(events) <= 4 * WINDOW:
            out.append(Base(f"{label}[all]", header, json.dumps(events)))
            continue
        starts = {0, rng.randrange(len(events) - WINDOW)}
        probes = {
            "step": lambda e: str(e.get("name", "")).startswith("ProfilerStep"),
            "nccl": lambda e: "nccl" in str(e.get("name", "")).lower(),
            "rpc": lambda e: e.get("name") == "record_param_comms",
            "memcpy": lambda e: "memcpy" in str(e.get("cat", "")).lower(),
            "launch": lambda e: str(e.get("cat", "")).lower() in ("cuda_runtime", "runtime"),
        }
        for probe in probes.values():
            hit = next((i for i, e in enumerate(events) if isinstance(e, dict) and probe(e)), None)
            if hit is not None:
                starts.add(max(0, hit - WINDOW // 3))
        for s in sorted(starts):
            out.append(Base(f"{label}[{s}:{s + WINDOW}]", header, json.dumps(events[s : s + WINDOW])))
    return out


# ---- values ---------------------------------------------------------------------------------------


class RawNumber(str):
    """JSON text json.dumps cannot write (1e999, NaN, deep nesting): written as-is into the document.

    It is a string carrying a marker; `serialize` swaps the quoted, marked string for its text."""

    def __new__(cls, text: str) -> RawNumber:
        return super().__new__(cls, f"\x01raw:{text}\x01")


_RAW_RE = re.compile(rb'"\\u0001raw:((?:[^"\\]|\\.)*?)\\u0001"')

HOSTILE_NAMES = (
    "<script>window.__pwned=1</script>",
    '"><img src=x onerror="window.__pwned=1">',
    "'); DROP TABLE spans; --",
    "x' OR '1'='1",
    "{{7*7}}${7*7}",
    "/etc/passwd",
    "../../../../etc/shadow",
    "file:///etc/passwd",
    "\x00\x01\x1b[31mred\x1b[0m",
    "\u202eevil\u202c",
    "ProfilerStep#",
    "ProfilerStep#-1",
    "ProfilerStep#99999999999999999999999999",
    "ProfilerStep#1",
    "ncclKernel_AllReduce_RING_LL_Sum_float",
    "record_param_comms",
    "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__",
    "😀" * 40,
    "",
)

WEIRD_VALUES: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**30,
    0.5,
    -0.0,
    1e-300,
    1e15,
    3.9e15,
    1e16,
    1e20,
    1e300,
    -1e300,
    RawNumber("1e999"),
    RawNumber("-1e999"),
    RawNumber("NaN"),
    RawNumber("Infinity"),
    "",
    "0",
    "12",
    "0x10",
    "-5",
    "1e3",
    " 7",
    "nan",
    "inf",
    "abc",
    [],
    {},
    [1, 2],
    {"a": 1},
    *HOSTILE_NAMES[:4],
)

EVENT_FIELDS = ("ph", "cat", "name", "pid", "tid", "ts", "dur", "args", "id", "bp", "s")
ARG_FIELDS = (
    "correlation",
    "stream",
    "device",
    "External id",
    "Collective name",
    "In msg nelems",
    "Out msg nelems",
    "Group size",
    "dtype",
    "Process Group Name",
    "Process Group Description",
    "Seq",
    "bytes",
    "name",
    "labels",
)
CATEGORIES = (
    "cpu_op",
    "kernel",
    "Kernel",
    "gpu_memcpy",
    "gpu_memset",
    "cuda_runtime",
    "Runtime",
    "cuda_driver",
    "user_annotation",
    "gpu_user_annotation",
    "python_function",
    "ac2g",
    "trace",
    "no_such_cat",
)
PHASES = ("X", "M", "B", "E", "i", "s", "f", "C", "", "XX", "x")


class Chooser:
    """Where a mutation's choices come from: hypothesis (which shrinks a failing case) or a seeded
    `random.Random` (many times cheaper per case, for the bulk of the cases)."""

    def pick(self, options: Sequence[T]) -> T:
        raise NotImplementedError

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def bool(self) -> bool:
        return self.int(0, 1) == 1

    def bytes(self, lo: int, hi: int) -> bytes:
        raise NotImplementedError

    def weird(self) -> Any:
        """A value for any field: one of WEIRD_VALUES, or an arbitrary int, float or short text."""
        raise NotImplementedError


class DrawChooser(Chooser):
    def __init__(self, draw: Any) -> None:
        self.draw = draw

    def pick(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(options))

    def int(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def bytes(self, lo: int, hi: int) -> bytes:
        return self.draw(st.binary(min_size=lo, max_size=hi))

    def weird(self) -> Any:
        return self.draw(_WEIRD)


_WEIRD = st.one_of(
    st.sampled_from(WEIRD_VALUES),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=24),
)


class RandomChooser(Chooser):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def bytes(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))

    def weird(self) -> Any:
        roll = self.rng.random()
        if roll < 0.7:
            return self.pick(WEIRD_VALUES)
        if roll < 0.8:
            return self.rng.randint(-(2**70), 2**70)
        if roll < 0.9:
            return self.rng.uniform(-1e18, 1e18)
        return "".join(chr(self.rng.randint(0, 0x2FFF)) for _ in range(self.rng.randint(0, 24)))


def _nested(depth: int, leaf: Any) -> Any:
    return RawNumber('{"a":' * depth + json.dumps(leaf) + "}" * depth) if depth else leaf


# ---- structural mutations -------------------------------------------------------------------------
# Each takes a Chooser and the document, changes it in place and returns a short description.


def _events(doc: dict[str, Any]) -> list[Any]:
    events = doc.get("traceEvents")
    return events if isinstance(events, list) else []


def _pick_event(c: Chooser, doc: dict[str, Any]) -> dict[str, Any] | None:
    events = _events(doc)
    if not events:
        return None
    ev = events[c.int(0, len(events) - 1)]
    return ev if isinstance(ev, dict) else None


def set_field(c: Chooser, doc: dict[str, Any]) -> str:
    ev = _pick_event(c, doc)
    key = c.pick(EVENT_FIELDS)
    if ev is None:
        return "set_field: no event"
    ev[key] = c.weird()
    return f"set {key}"


def delete_field(c: Chooser, doc: dict[str, Any]) -> str:
    ev = _pick_event(c, doc)
    key = c.pick(EVENT_FIELDS)
    if ev is not None:
        ev.pop(key, None)
    return f"del {key}"


def set_arg(c: Chooser, doc: dict[str, Any]) -> str:
    ev = _pick_event(c, doc)
    key = c.pick(ARG_FIELDS)
    value = c.weird()
    if ev is None:
        return "set_arg: no event"
    if not isinstance(ev.get("args"), dict):
        ev["args"] = {}
    ev["args"][key] = value
    return f"set args.{key}"


def deep_nesting(c: Chooser, doc: dict[str, Any]) -> str:
    ev = _pick_event(c, doc)
    key = c.pick(("args", "name", "ts", "pid", "cat"))
    depth = c.pick((2, 64, 500, 3000))
    if ev is not None:
        ev[key] = _nested(depth, c.pick((1, "x", None)))
    return f"nest {key} {depth}"


def huge_name(c: Chooser, doc: dict[str, Any]) -> str:
    ev = _pick_event(c, doc)
    size = c.pick((1_000, 20_000, 300_000))
    if ev is not None:
        ev["name"] = c.pick(("x", "ProfilerStep#1", "ncclKernel_", "é")) * size
    return f"huge name {size}"


def hostile_name(c: Chooser, doc: dict[str, Any]) -> str:
    ev = _pick_event(c, doc)
    if ev is not None:
        ev["name"] = c.pick(HOSTILE_NAMES)
    return "hostile name"


def set_category(c: Chooser, doc: dict[str, Any]) -> str:
    ev = _pick_event(c, doc)
    cat = c.pick(CATEGORIES)
    if ev is not None:
        ev["cat"] = cat
        ev["ph"] = "X"
    return f"cat {cat}"


def set_phase(c: Chooser, doc: dict[str, Any]) -> str:
    ev = _pick_event(c, doc)
    ph = c.pick(PHASES)
    if ev is not None:
        ev["ph"] = ph
    return f"ph {ph!r}"


def extreme_times(c: Chooser, doc: dict[str, Any]) -> str:
    """One event's, or every event's, timestamp or duration made extreme."""
    events = [e for e in _events(doc) if isinstance(e, dict)]
    key = c.pick(("ts", "dur"))
    value = c.pick((-1, -1e9, 0, 1e15, 4e15, 9.3e15, 1e18, 1e300, RawNumber("1e999"), RawNumber("-1e999")))
    how = c.pick(("one", "all_set", "all_shift"))
    if not events:
        return "times: no events"
    if how == "one":
        events[c.int(0, len(events) - 1)][key] = value
    for ev in events if how != "one" else ():
        if how == "all_set" or isinstance(value, RawNumber):
            ev[key] = value
        elif isinstance(ev.get(key), (int, float)) and not isinstance(ev.get(key), bool):
            ev[key] = ev[key] + value
    return f"times {how} {key}={value}"


def reorder(c: Chooser, doc: dict[str, Any]) -> str:
    events = doc.get("traceEvents")
    how = c.pick(("shuffle", "reverse", "sort_by_end"))
    if isinstance(events, list):
        if how == "shuffle":
            random.Random(c.int(0, 2**32 - 1)).shuffle(events)
        elif how == "reverse":
            events.reverse()
        else:
            events.sort(key=lambda e: -_num(e.get("ts")) - _num(e.get("dur")) if isinstance(e, dict) else 0)
    return f"reorder {how}"


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def duplicate_ids(c: Chooser, doc: dict[str, Any]) -> str:
    """Events copied, or every event moved onto one pid/tid (host and device alike)."""
    events = doc.get("traceEvents")
    if not isinstance(events, list) or not events:
        return "dup: no events"
    how = c.pick(("copy", "one_thread", "copy_many"))
    dicts = [e for e in events if isinstance(e, dict)]
    if how == "one_thread":
        pid, tid = c.pick(((1, 1), (0, 0), ("x", "x"), (-1, 7), (2**40, 2**40)))
        for ev in dicts:
            ev["pid"], ev["tid"] = pid, tid
    elif dicts:
        n = 1 if how == "copy" else c.int(2, 50)
        for _ in range(n):
            events.append(dict(dicts[c.int(0, len(dicts) - 1)]))
    return f"dup {how}"


def step_games(c: Chooser, doc: dict[str, Any]) -> str:
    """ProfilerStep markers of zero length, overlapping, nested, repeated, or numbered oddly."""
    events = doc.get("traceEvents")
    if not isinstance(events, list):
        return "steps: no events"
    host = next(
        (e for e in events if isinstance(e, dict) and e.get("ph") == "X" and e.get("cat") != "kernel"),
        {"pid": 1, "tid": 1, "ts": 1000, "dur": 100},
    )
    t0 = _num(host.get("ts"))
    how = c.pick(("zero", "overlap", "nested", "same_number", "many", "negative_dur"))
    n = c.int(1, 6)
    for i in range(n):
        step = {
            "ph": "X",
            "cat": "user_annotation",
            "name": f"ProfilerStep#{1 if how == 'same_number' else i}",
            "pid": host.get("pid", 1),
            "tid": host.get("tid", 1),
            "ts": t0 + (0 if how in ("overlap", "nested") else 100 * i) + (5 * i if how == "overlap" else 0),
            "dur": {"zero": 0, "negative_dur": -50, "nested": 1000 - 100 * i}.get(how, 150),
        }
        events.append(step)
    if how == "many":
        events.extend(
            {**events[-1], "name": f"ProfilerStep#{k}", "ts": t0 + k, "dur": 1} for k in range(2000)
        )
    return f"steps {how} x{n}"


def collective_args(c: Chooser, doc: dict[str, Any]) -> str:
    """An NCCL kernel or a record_param_comms call whose metadata is odd."""
    events = doc.get("traceEvents")
    if not isinstance(events, list):
        return "nccl: no events"
    host = c.bool()
    args = {c.pick(ARG_FIELDS): c.weird() for _ in range(c.int(0, 5))}
    events.append(
        {
            "ph": "X",
            "cat": "cpu_op" if host else "kernel",
            "name": "record_param_comms" if host else "ncclKernel_AllReduce_RING_LL_Sum_float",
            "pid": 1 if host else 0,
            "tid": 1 if host else 7,
            "ts": c.pick((0, 10, 1e6, 1.5)),
            "dur": c.pick((0, 1, 5.5)),
            "args": args if c.bool() else c.weird(),
        }
    )
    return f"nccl {'host' if host else 'kernel'} {sorted(args)}"


def metadata_event(c: Chooser, doc: dict[str, Any]) -> str:
    events = doc.get("traceEvents")
    if isinstance(events, list):
        events.append(
            {
                "ph": "M",
                "name": c.pick(("thread_name", "process_name", "process_labels", 5)),
                "pid": c.weird(),
                "tid": c.weird(),
                "args": {"name": c.weird()} if c.bool() else c.weird(),
            }
        )
    return "metadata"


def header(c: Chooser, doc: dict[str, Any]) -> str:
    """The trace's own header made odd: distributedInfo, baseTimeNanoseconds, deviceProperties."""
    key = c.pick(
        (
            "distributedInfo.rank",
            "distributedInfo.world_size",
            "distributedInfo.backend",
            "distributedInfo",
            "baseTimeNanoseconds",
            "deviceProperties",
            "deviceProperties.name",
            "schemaVersion",
        )
    )
    value = c.weird()
    top, _, sub = key.partition(".")
    if not sub:
        doc[top] = value
    elif top == "deviceProperties":
        doc[top] = [{"id": 0, "name": value}, value]
    else:
        if not isinstance(doc.get(top), dict):
            doc[top] = {}
        doc[top][sub] = value
    return f"header {key}"


def events_container(c: Chooser, doc: dict[str, Any]) -> str:
    """`traceEvents` missing, empty, or not a list; or the whole file a bare event array."""
    how = c.pick(("missing", "empty", "value", "bare_array", "dup_key"))
    if how == "missing":
        doc.pop("traceEvents", None)
    elif how == "empty":
        doc["traceEvents"] = []
    elif how == "value":
        doc["traceEvents"] = c.weird()
    else:
        doc["\x01" + how] = True  # handled when serializing
    return f"events {how}"


STRUCTURAL = (
    set_field,
    delete_field,
    set_arg,
    deep_nesting,
    huge_name,
    hostile_name,
    set_category,
    set_phase,
    extreme_times,
    reorder,
    duplicate_ids,
    step_games,
    collective_args,
    metadata_event,
    header,
    events_container,
)


def serialize(doc: dict[str, Any]) -> bytes:
    bare = doc.pop("\x01bare_array", False)
    dup = doc.pop("\x01dup_key", False)
    body: Any = doc.get("traceEvents") if bare else doc
    data = _ENCODER.encode(body)
    if b"\\u0001raw:" in data:
        data = _RAW_RE.sub(lambda m: json.loads(b'"' + m.group(1) + b'"').encode(), data)
    if dup and data.startswith(b"{"):  # a second traceEvents key: JSON allows it, the last one wins
        data = b'{"traceEvents": 5, ' + data[1:]
    return data


_ENCODER = msgspec.json.Encoder(enc_hook=str)  # json.dumps is 5x slower here, and it is most of a case


# ---- byte damage ----------------------------------------------------------------------------------


def damage_bytes(c: Chooser, data: bytes) -> tuple[bytes, str]:
    how = c.pick(("truncate", "flip", "delete", "insert", "repeat"))
    if not data:
        return data, f"{how}: empty"
    at = c.int(0, len(data) - 1)
    if how == "truncate":
        return data[:at], f"truncate at {at}/{len(data)}"
    if how == "flip":
        mask = c.int(1, 255)
        return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :], f"flip {at} ^ {mask}"
    n = c.int(1, 64)
    if how == "delete":
        return data[:at] + data[at + n :], f"delete {n} at {at}"
    if how == "insert":
        junk = c.bytes(1, 16)
        return data[:at] + junk + data[at:], f"insert {junk!r} at {at}"
    return data[:at] + data[at : at + n] * 3 + data[at:], f"repeat {n} at {at}"


def damage_gzip(c: Chooser, packed: bytes) -> tuple[bytes, str]:
    """Damage in the compressed stream: header, deflate body, CRC or size trailer, extra members."""
    how = c.pick(("body", "trailer", "header", "truncate", "members", "junk_tail"))
    if how == "body":
        return damage_bytes(c, packed)
    if how == "truncate":
        at = c.int(0, len(packed) - 1)
        return packed[:at], f"gzip truncate at {at}/{len(packed)}"
    if how in ("trailer", "header"):
        at = c.int(len(packed) - 8, len(packed) - 1) if how == "trailer" else c.int(0, 9)
        mask = c.int(1, 255)
        return packed[:at] + bytes([packed[at] ^ mask]) + packed[at + 1 :], f"gzip {how} {at} ^ {mask}"
    if how == "members":
        return packed + gzip.compress(b" "), "gzip two members"
    return packed + c.bytes(1, 16), "gzip junk after the stream"


@st.composite
def damaged_traces(draw: Any, corpus: list[Base]) -> Case:
    """A trace file made from one base of `corpus` (hypothesis's choices): see `damaged_trace`."""
    return damaged_trace(DrawChooser(draw), corpus)


def random_trace(rng: random.Random, corpus: list[Base]) -> Case:
    """A trace file made from one base of `corpus` (seeded random choices): see `damaged_trace`."""
    return damaged_trace(RandomChooser(rng), corpus)


def damaged_trace(c: Chooser, corpus: list[Base]) -> Case:
    """A trace file made from one base of `corpus`: up to four structural mutations, then maybe damage to
    its bytes, as JSON or gzip."""
    base = c.pick(corpus)
    doc = base.doc()
    steps = [base.name]
    for _ in range(c.int(0, 4)):
        op = c.pick(STRUCTURAL)
        steps.append(op(c, doc))
    data = serialize(doc)
    if c.int(0, 4) == 0:  # a fifth of the cases: the bytes themselves damaged
        data, what = damage_bytes(c, data)
        steps.append(what)
    file_name = c.pick(("case.pt.trace.json", "worker_rank3.json", "x.json"))
    if c.bool():
        data = gzip.compress(data, compresslevel=1)
        file_name += ".gz"
        if c.int(0, 3) == 0:
            data, what = damage_gzip(c, data)
            steps.append(what)
    return Case(file_name, data, tuple(steps))
