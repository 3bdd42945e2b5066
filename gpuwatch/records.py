"""The one data model: `Run`, `Span`, `Sample`, the budget categories and span kinds.

Times are integer nanoseconds relative to the writing process's anchor (`Run.started_at_unix_ns`), so ranks
and hosts line up by adding their anchors. Collectors emit these records; the store persists them; nothing
else crosses a module boundary. Large producers (trace import) use `SpanColumns`, the same fields as
`Span` held column-wise, so a million events never become a million Python objects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from gpuwatch.schema import SCHEMA_VERSION as SCHEMA_VERSION  # the layout's version, re-exported here

if TYPE_CHECKING:  # only annotations: the records stay importable without loading numpy
    import numpy as np


class Category(enum.StrEnum):
    """Where a step's wall time went. The eight values sum to 100% of each step on each rank."""

    COMPUTE = "compute"
    DATA_LOADING = "data_loading"
    CPU_PREPROCESSING = "cpu_preprocessing"
    SYNC = "sync"
    CHECKPOINT_IO = "checkpoint_io"
    MEMCPY = "memcpy"
    HOST_OVERHEAD = "host_overhead"
    UNATTRIBUTED = "unattributed"


CATEGORIES: tuple[Category, ...] = tuple(Category)

HOST_PRIORITY: tuple[Category, ...] = (
    Category.CHECKPOINT_IO,
    Category.SYNC,
    Category.DATA_LOADING,
    Category.CPU_PREPROCESSING,
    Category.MEMCPY,
)
"""Which host activity explains device-idle time when several overlap (DESIGN.md, rule 2)."""


class SpanKind(enum.StrEnum):
    """What produced an interval."""

    CPU_OP = "cpu_op"  # a host operator (Kineto cpu_op / operator / python)
    ANNOTATION = "annotation"  # a host range a profiler user named (Kineto user_annotation, record_function)
    PYTHON_FRAME = "python_frame"  # a Python frame from the profiler's stack tracer (Kineto python_function)
    GPU_ANNOTATION = "gpu_annotation"  # a user range as the device saw it (Kineto gpu_user_annotation)
    RUNTIME = "runtime"  # a CUDA/HIP runtime call on the host (cudaLaunchKernel, cudaMemcpyAsync, ...)
    KERNEL = "kernel"  # a device compute kernel
    COLLECTIVE = "collective"  # a communication kernel on the device, or a host-side collective call
    MEMCPY = "memcpy"  # a device copy
    MEMSET = "memset"  # a device memset
    STEP = "step"  # one training step (ProfilerStep#N or gw.step())
    USER = "user"  # a gpuwatch.span(...) region
    STACK_SAMPLE = "stack_sample"  # one stack-sampler tick, classified by its frames
    PHASE = "phase"  # a hooked training phase (forward, backward, optimizer, DataLoader wait, checkpoint)


DEVICE_KIND_CATEGORY: dict[str, str] = {
    SpanKind.KERNEL.value: Category.COMPUTE.value,
    SpanKind.COLLECTIVE.value: Category.SYNC.value,
    SpanKind.MEMCPY.value: Category.MEMCPY.value,
    SpanKind.MEMSET.value: Category.MEMCPY.value,
}
"""What device work of each kind counts as: trace import labels device spans with it, and the budget
splits a device's busy time by it."""

SPAN_KINDS: tuple[str, ...] = tuple(k.value for k in SpanKind)
"""Every span kind, in a fixed order: `SpanColumns.kind_code` indexes it."""
CATEGORY_OR_NONE: tuple[str | None, ...] = (None, *(c.value for c in Category))
"""None (no category), then every category: `SpanColumns.category_code` indexes it."""

DEVICE_KINDS: tuple[str, ...] = tuple(DEVICE_KIND_CATEGORY)
"""Span kinds that run on a device stream: a span of one of them with `stream >= 0` is a device span (a
COLLECTIVE with stream -1 is the host-side call of a collective)."""


@dataclass(frozen=True, slots=True)
class Run:
    """One writing process (one rank) of a run."""

    run_id: str
    """Shared by every rank of the same run."""
    rank: int
    """Global rank; 0 when not distributed."""
    host: str
    pid: int
    """The process that wrote these records (the traced process, for imports and attach)."""
    command: str
    """The command line of the training process, or the trace file for imports."""
    world_size: int
    started_at_unix_ns: int
    """Wall-clock anchor: every record's `*_ns` time is relative to this."""
    tool_version: str
    source: str
    """How the data was collected: "watch", "attach" or "import"."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form facts (device names, trace file, DataLoader settings, hook errors)."""


class Span(msgspec.Struct, frozen=True, gc=False):
    """An interval on one host thread or one device stream.

    A msgspec Struct, not a dataclass: hooks build one on the training thread per region, and a Struct is
    built in 0.3 µs against 3.7-5.7 µs for the frozen dataclass it was (keyword arguments, this VM); the
    writer encodes it to the same JSON. `gc=False`: its fields never form a cycle."""

    rank: int
    kind: str
    """A `SpanKind` value."""
    name: str
    start_ns: int
    """Relative to the writing process's anchor."""
    end_ns: int
    category: str | None = None
    """A `Category` value, or None when the raw span names no cause (the engine decides)."""
    pid: int = 0
    tid: int = 0
    """Host thread id, or 0 for device spans."""
    stream: int = -1
    """Device stream, or -1 for host spans."""
    device_index: int = -1
    """Device ordinal, or -1 for host spans."""
    step: int | None = None
    """Training step the span belongs to, when known at record time."""
    bytes: int | None = None
    """Bytes moved (copies, collectives, checkpoints), None when unknown."""
    correlation: int | None = None
    """Links a host launch to its device work (Kineto correlation id)."""
    seq: int | None = None
    """Collective sequence number within its process group, so ranks can be matched."""
    attrs: dict[str, Any] | None = None
    """Anything else (collective name, group size, dtype, file path...)."""


class Sample(msgspec.Struct, frozen=True, gc=False):
    """A gauge at a point in time; the unit lives in `metric` (`gpu_util_pct`, `mem_used_bytes`, `power_mw`)."""

    rank: int
    metric: str
    t_ns: int
    value: float | None
    """None when the source could not measure it (stored as SQL NULL, never 0 or NaN)."""
    device_index: int = -1
    pid: int = 0


SPAN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rank", "INTEGER"),
    ("pid", "BIGINT"),
    ("tid", "BIGINT"),
    ("stream", "BIGINT"),
    ("device_index", "INTEGER"),
    ("kind", "VARCHAR"),
    ("category", "VARCHAR"),
    ("name", "VARCHAR"),
    ("start_ns", "BIGINT"),
    ("end_ns", "BIGINT"),
    ("step", "BIGINT"),
    ("bytes", "BIGINT"),
    ("correlation", "BIGINT"),
    ("seq", "BIGINT"),
    ("attrs", "VARCHAR"),
)
"""Segment columns of spans, in order, with their SQL types (`attrs` is JSON text)."""

SAMPLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rank", "INTEGER"),
    ("pid", "BIGINT"),
    ("device_index", "INTEGER"),
    ("metric", "VARCHAR"),
    ("t_ns", "BIGINT"),
    ("value", "DOUBLE"),
)
"""Segment columns of samples, in order, with their SQL types."""

TABLE_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {"spans": SPAN_COLUMNS, "samples": SAMPLE_COLUMNS}
"""The segment columns of each stored table, by the table's name (a segment's `table`)."""

NULLABLE_INT_COLUMNS: tuple[str, ...] = ("step", "bytes", "correlation", "seq")
"""Integer span columns that may be NULL (None in `Span`)."""
NULL_INT = -1
"""What `SpanColumns` holds for NULL in `NULLABLE_INT_COLUMNS` (numpy integer arrays have no NULL); the
store writes it as NULL and reads NULL back as it."""


@dataclass(frozen=True, slots=True)
class SpanColumns:
    """Many spans held column-wise (numpy arrays of equal length), for bulk producers such as trace import.

    Integer columns use `NULL_INT` (-1) where `Span` would hold None (`NULLABLE_INT_COLUMNS`); the store
    turns them back into NULL. `kind`, `category`, `name` and `attrs` are object arrays of str/None.
    """

    rank: np.ndarray
    pid: np.ndarray
    tid: np.ndarray
    stream: np.ndarray
    device_index: np.ndarray
    kind: np.ndarray
    category: np.ndarray
    name: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray
    step: np.ndarray
    bytes: np.ndarray
    correlation: np.ndarray
    seq: np.ndarray
    attrs: np.ndarray
    name_code: np.ndarray | None = None
    """Optional int64 per span, equal exactly for equal names (set by readers that dictionary-encode names,
    so the engine groups spans by name without comparing strings); None: the engine derives it."""
    kind_code: np.ndarray | None = None
    """Optional int per span, the index of its `kind` in `SPAN_KINDS` (set by producers that know it, so the
    engine tests kinds without coding the column itself: 0.2 s for a million spans); None: it codes them."""
    category_code: np.ndarray | None = None
    """Optional int per span, the index of its `category` in `CATEGORY_OR_NONE`; None as for `kind_code`."""

    def __len__(self) -> int:
        return int(self.start_ns.shape[0])

    def in_reader_order(self) -> bool:
        """Sorted as a run's reader returns spans: by start, the longer of two equal starts first."""
        import numpy as np

        start, end = self.start_ns, self.end_ns
        if start.size < 2:
            return True
        step = np.diff(start)
        return bool(((step > 0) | ((step == 0) & (end[1:] <= end[:-1]))).all())

    def sorted_as_reader(self) -> SpanColumns:
        """These spans in the reader's order (`in_reader_order`): themselves when already so, else a copy."""
        import numpy as np

        return self if self.in_reader_order() else self.take(np.lexsort((-self.end_ns, self.start_ns)))

    def take(self, rows: np.ndarray) -> SpanColumns:
        """The spans at `rows` (indices or a boolean mask), every column alike; a column left None stays None."""
        columns: dict[str, Any] = {}
        for name in SpanColumns.__dataclass_fields__:
            value = getattr(self, name)
            columns[name] = None if value is None else value[rows]
        return SpanColumns(**columns)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its string columns as codes where it carries them (an import's columns go to a
        writer process or back from a worker this way): `kind` and `category` rebuilt from `kind_code` and
        `category_code`, `name` from the distinct names by `name_code`, `attrs` from its few set values.
        Pickled whole, an object column costs a memo reference per span each way: HTA's 216k-event trace
        (123k spans) pickled in 26.9 ms and loaded in 10.5 ms whole, against 14.3 and 5.7 ms this way."""
        import numpy as np

        columns: dict[str, Any] = {name: getattr(self, name) for name in SpanColumns.__dataclass_fields__}
        if self.kind_code is not None:
            columns["kind"] = None
        if self.category_code is not None:
            columns["category"] = None
        names = None
        code = self.name_code
        if code is not None and code.size and 0 <= int(code.min()) and int(code.max()) < 2 * code.size + 1024:
            names = np.full(int(code.max()) + 1, None, dtype=object)
            names[code] = self.name
            columns["name"] = None
        attrs = None
        if self.attrs.dtype == object:
            at = np.flatnonzero(self.attrs != None)  # noqa: E711 - elementwise, not identity
            attrs = (at, self.attrs[at])
            columns["attrs"] = None
        return (_span_columns_from_codes, (columns, names, attrs))


def _span_columns_from_codes(columns: dict[str, Any], names: Any, attrs: Any) -> SpanColumns:
    """`SpanColumns.__reduce__`'s columns back, their string columns rebuilt from the codes."""
    import numpy as np

    if columns["kind"] is None:
        columns["kind"] = np.array(SPAN_KINDS, dtype=object)[columns["kind_code"]]
    if columns["category"] is None:
        values = np.empty(len(CATEGORY_OR_NONE), dtype=object)
        values[:] = CATEGORY_OR_NONE
        columns["category"] = values[columns["category_code"]]
    if names is not None:
        columns["name"] = names[columns["name_code"]]
    if attrs is not None:
        at, values = attrs
        columns["attrs"] = np.full(columns["start_ns"].shape[0], None, dtype=object)
        columns["attrs"][at] = values
    return SpanColumns(**columns)
