"""Which budget category a host operator or annotation of a PyTorch profiler trace stands for.

The rules are data: an ordered table of (regular expression over the event name, category); the first match
wins. Users extend it by appending to `HOST_NAME_RULES` before importing. Device kernels are classified the
way HTA does (so the temporal view agrees with it): communication when the name starts with "nccl" or
"hccl" or contains "ncclKernel" (or "gloo:"), memory when it contains "Memcpy" or "Memset", compute
otherwise.
"""

from __future__ import annotations

import re

from gpuwatch.records import Category, SpanKind

HOST_NAME_RULES: list[tuple[str, Category]] = [
    # checkpointing first: a save inside a data-loading region is still a save
    (r"torch\.save|torch\.load|checkpoint|^dcp[.:]|safetensors|save_state_dict", Category.CHECKPOINT_IO),
    # operators that block the host on the device
    (
        r"^aten::(item|_local_scalar_dense|nonzero)$|^(cuda|hip)(Stream|Device|Event|Ctx)Synchronize"
        r"|^(cuda|hip)StreamWaitEvent$",
        Category.SYNC,
    ),
    # every other operator is the math of the step (compute on CPU-only ranks, host overhead on GPU ranks)
    (r"^aten::|^autograd::|^torch::autograd|Backward\d*$", Category.COMPUTE),
    # collectives and their waits
    (
        r"^record_param_comms$|^nccl:|^gloo:|^c10d::|ProcessGroup|barrier|all_?reduce|all_?gather"
        r"|reduce_scatter|all_?to_?all|all2all|broadcast|_wait\b|_wait ##",
        Category.SYNC,
    ),
    # input pipeline
    (r"DataLoader|data_?load|load_batch|wait_for_batch|__next__|get_batch|next_batch", Category.DATA_LOADING),
    (r"decode|augment|transform|collate|preprocess|jpeg|tokeniz", Category.CPU_PREPROCESSING),
    # host-side copies
    (r"^(cuda|hip)Memcpy|^(cuda|hip)Memset", Category.MEMCPY),
    # annotated phases of the step
    (r"^## (forward|backward|optimizer)|^Optimizer\.|\.forward$|^forward$|^backward$", Category.COMPUTE),
]

_compiled: list[tuple[re.Pattern[str], Category]] | None = None
_cache: dict[str, str | None] = {}


def host_category(name: str) -> str | None:
    """Budget category of a host event by its name, or None when no rule matches (host overhead)."""
    global _compiled
    hit = _cache.get(name, _cache)
    if hit is not _cache:
        return hit  # type: ignore[return-value]
    if _compiled is None or len(_compiled) != len(HOST_NAME_RULES):
        _compiled = [(re.compile(p, re.IGNORECASE), c) for p, c in HOST_NAME_RULES]
        _cache.clear()
    result: str | None = None
    for pattern, category in _compiled:
        if pattern.search(name):
            result = category.value
            break
    _cache[name] = result
    return result


_COMM_KERNEL = re.compile(r"^nccl|^hccl|ncclKernel|ncclDevKernel|gloo:")


def device_kind(name: str) -> str:
    """SpanKind of a device kernel by name, as HTA classifies it (HTA 0.6.1's communication pattern:
    `^nccl`, `^hccl`, `ncclKernel` anywhere; RCCL kernels on ROCm carry the same names)."""
    if _COMM_KERNEL.search(name):
        return SpanKind.COLLECTIVE.value
    if "Memcpy" in name:
        return SpanKind.MEMCPY.value
    if "Memset" in name:
        return SpanKind.MEMSET.value
    return SpanKind.KERNEL.value


DTYPE_BYTES: dict[str, int] = {
    "float": 4,
    "float32": 4,
    "half": 2,
    "float16": 2,
    "bfloat16": 2,
    "double": 8,
    "float64": 8,
    "int": 4,
    "int32": 4,
    "long": 8,
    "int64": 8,
    "short": 2,
    "int16": 2,
    "byte": 1,
    "uint8": 1,
    "char": 1,
    "int8": 1,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}
