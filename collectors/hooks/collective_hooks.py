"""torch.distributed collectives as `sync` spans with bytes, process group and a per-group sequence number.

Every rank of a group issues its collectives in the same order, so `(process_group, seq)` names the same
operation on every rank and `gpuwatch.attribution.cross_rank` can tell who arrived last. The sequence number is the
process group's own counter (`ProcessGroup._get_sequence_number_for_group`, which counts every collective of
the group, including ones issued before the watch started or by torch internally) when the backend has one,
else a counter of the calls seen here. The group name is `ProcessGroup.group_name` ("0" for the default
group), the same on every rank.

Both `torch.distributed.<fn>` and `torch.distributed.distributed_c10d.<fn>` are wrapped; a collective issued
inside another one (the object collectives call `all_gather` and `broadcast` internally) is not recorded
twice. With `async_op=True` the span covers issuing the operation only (the wait is not hooked).
"""

from __future__ import annotations

import inspect
import sys
import threading
from typing import Any

from collectors.base import Collector, RecordSink
from collectors.hooks import hook_context as hc
from collectors.hooks.hook_context import HookContext, Patcher
from collectors.hooks.hook_region import UNHOOKED, call_in_region
from gpuwatch.records import Category, SpanKind

COLLECTIVES: tuple[str, ...] = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
    "reduce",
    "gather",
    "scatter",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "all_gather_object",
    "gather_object",
    "broadcast_object_list",
    "scatter_object_list",
)
"""Group collectives matched across ranks by (group, seq)."""

POINT_TO_POINT: tuple[str, ...] = ("send", "recv")
"""Blocking point-to-point calls: `sync` spans without a group sequence (they pair two ranks, not a group)."""

SYNC = Category.SYNC.value
COLLECTIVE = SpanKind.COLLECTIVE.value
_FLAG = hc.IN_COLLECTIVE


class CollectiveHooks(Collector):
    """Times torch.distributed collectives on every thread (the training thread's count in the budget)."""

    name = "collective_hooks"

    def __init__(self, ctx: HookContext, timer: Any = None) -> None:
        self.ctx = ctx
        self.timer = timer
        """A `DeviceTimer` on GPU ranks (device spans of the collectives), else None."""
        self._patcher = Patcher()
        self._groups: dict[int, list[Any]] = {}  # id(pg) -> [pg, name, size, native_seq_ok, own_counter]
        self._lock = threading.Lock()
        self._c10d: Any = None
        self._started = False

    def start(self, sink: RecordSink) -> None:
        torch = sys.modules.get("torch")
        if self._started or torch is None:
            return
        try:
            dist = torch.distributed
            if not dist.is_available():
                return
            from torch.distributed import distributed_c10d as c10d

            self._c10d = c10d
            for fn_name in COLLECTIVES + POINT_TO_POINT:
                original = getattr(c10d, fn_name, None)
                if original is None:
                    continue
                spec = _ArgSpec.of(fn_name, original)
                make = self._wrapper_factory(spec)
                self._patcher.patch(c10d, fn_name, make)
                self._patcher.patch(dist, fn_name, make)
            self._started = True
            self.refresh()
        except Exception as exc:
            self.ctx.hook_error("install:collectives", exc)

    def stop(self) -> None:
        self._patcher.restore()
        self._started = False

    def refresh(self) -> None:
        """At step boundaries: notice a process group initialized after the watch started."""
        if self.ctx.distributed or self._c10d is None:
            return
        try:
            self.ctx.distributed = bool(self._c10d.is_initialized())
            if self.ctx.distributed and self._c10d.get_rank() != self.ctx.rank:
                self.ctx.note_once(
                    "rank_mismatch",
                    f"this process is rank {self._c10d.get_rank()} but was recorded as rank {self.ctx.rank}: "
                    "start gpuwatch.watch after init_process_group, set RANK, or pass rank=",
                )
        except Exception:
            pass

    # ---- the wrapper ---------------------------------------------------------------------------------
    def _wrapper_factory(self, spec: _ArgSpec) -> Any:
        hooks = self

        def make(original: Any) -> Any:
            label = f"dist.{spec.name}"

            def collective(*args: Any, **kwargs: Any) -> Any:
                ctx = hc.current()
                if ctx is None:
                    watching = hc.WATCHING
                    if (
                        watching is not None
                        and not watching.observing
                        and not hc.tracing()
                        and not watching.flag(_FLAG)
                    ):
                        return hooks._unobserved(watching, spec, original, args, kwargs)
                    return original(*args, **kwargs)
                if ctx.flag(_FLAG):
                    return original(*args, **kwargs)

                def before() -> Any:
                    group = hooks._group_taking_part(spec, args, kwargs)
                    if group is UNHOOKED:
                        return UNHOOKED  # this rank takes no part: nothing to time
                    return group, hooks.timer.start() if hooks.timer is not None else None

                def finish(t0: int, state: tuple[Any, Any], _result: Any) -> None:
                    group, token = state
                    hooks._finish(ctx, spec, label, group, args, kwargs, t0, token)

                return call_in_region(
                    ctx, label, "collective", original, args, kwargs, finish, flag=_FLAG, before=before
                )

            collective.__name__ = spec.name
            collective.__doc__ = original.__doc__
            collective.__wrapped__ = original  # type: ignore[attr-defined]
            return collective

        return make

    def _group_taking_part(self, spec: _ArgSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call's process group (None: the default one), or `UNHOOKED` when this rank is not in it."""
        group = spec.arg(args, kwargs, "group")
        if group is not None and self._c10d._rank_not_in_group(group):
            return UNHOOKED
        return group

    def _unobserved(
        self, ctx: HookContext, spec: _ArgSpec, original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A collective in a step the watch does not observe: no span, but its group's count goes on (so the
        n-th collective is the n-th on every rank, whichever steps each observed) and the calls inside it
        (an object collective's torch.save) still know they belong to it."""
        try:
            group = self._group_taking_part(spec, args, kwargs)
            if group is UNHOOKED:
                return original(*args, **kwargs)
            ctx.set_flag(_FLAG, True)
        except Exception as exc:
            ctx.hook_error("collective", exc)
            return original(*args, **kwargs)
        try:
            return original(*args, **kwargs)
        finally:
            try:
                ctx.set_flag(_FLAG, False)
                if spec.name not in POINT_TO_POINT:
                    self._group_seq(group)
            except Exception as exc:
                ctx.hook_error("collective", exc)

    def _finish(
        self,
        ctx: HookContext,
        spec: _ArgSpec,
        label: str,
        group: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        t0: int,
        token: Any,
    ) -> None:
        nbytes = spec.nbytes(args, kwargs)
        if spec.name in POINT_TO_POINT:
            ctx.end(t0, COLLECTIVE, label, SYNC, key=label, bytes=nbytes, attrs={"collective": spec.name})
            return
        name, size, seq = self._group_seq(group)
        attrs = {"process_group": name, "collective": spec.name, "group_size": size}
        if spec.arg(args, kwargs, "async_op"):
            attrs["async_op"] = True
        ctx.end(t0, COLLECTIVE, label, SYNC, key=label, bytes=nbytes, seq=seq, attrs=attrs)
        if self.timer is not None and token is not None:
            self.timer.stop(token, COLLECTIVE, label, SYNC, step=ctx.step, bytes=nbytes, seq=seq, attrs=attrs)

    def _group_seq(self, group: Any) -> tuple[str, int, int]:
        """(group name, group size, sequence number of the operation just issued on it)."""
        pg = group if group is not None else self._c10d._get_default_group()
        with self._lock:  # collectives may run on several threads (async checkpointing)
            info = self._groups.get(id(pg))
            if info is None:
                name = str(getattr(pg, "group_name", "") or "0")
                try:
                    size = int(pg.size())
                except Exception:
                    size = -1
                native = True
                try:
                    int(pg._get_sequence_number_for_group())
                except Exception:
                    native = False
                info = self._groups[id(pg)] = [pg, name, size, native, 0]
            info[4] += 1
            seq = info[4]
            if info[3]:
                try:
                    seq = int(pg._get_sequence_number_for_group())
                except Exception:
                    info[3] = False
        return info[1], info[2], seq


class _ArgSpec:
    """Where a collective keeps its arguments, read once from its signature (binding per call is slow)."""

    def __init__(self, name: str, positions: dict[str, int], data_params: list[str]) -> None:
        self.name = name
        self.positions = positions
        self.data_params = data_params

    @classmethod
    def of(cls, name: str, fn: Any) -> _ArgSpec:
        try:
            params = list(inspect.signature(inspect.unwrap(fn)).parameters)
        except (TypeError, ValueError):
            params = []
        positions = {p: i for i, p in enumerate(params)}
        data = [
            p for p in params if p not in ("group", "async_op", "op", "src", "dst", "group_src", "group_dst")
        ]
        return cls(name, positions, data[:2])

    def arg(self, args: tuple[Any, ...], kwargs: dict[str, Any], param: str) -> Any:
        if param in kwargs:
            return kwargs[param]
        i = self.positions.get(param)
        return args[i] if i is not None and i < len(args) else None

    def nbytes(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        """Bytes of the first tensor (or list of tensors) argument: what this rank contributes or receives."""
        for param in self.data_params:
            value = self.arg(args, kwargs, param)
            n = _tensor_bytes(value)
            if n is not None:
                return n
        return None


def _tensor_bytes(value: Any) -> int | None:
    if value is None:
        return None
    numel = getattr(value, "numel", None)
    if numel is not None and hasattr(value, "element_size"):
        return int(numel() * value.element_size())
    if isinstance(value, (list, tuple)) and value and hasattr(value[0], "element_size"):
        return int(sum(t.numel() * t.element_size() for t in value))
    return None
