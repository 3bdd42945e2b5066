"""GPU only: host<->device copies and blocking host-device syncs on the training thread.

`Tensor.to/cuda/cpu` calls that move a tensor between host and device become `memcpy` spans (with bytes,
direction and `non_blocking`); `.item()` on a device tensor and `torch.cuda.synchronize()` become `sync`
spans. Installed only when CUDA is available (on CPU these calls never copy, and they are hot). The spans
are emitted after the call, without opening a hooked region: a copy is short, and the stack sampler never
overrules it (memcpy outranks host_overhead, the category of a sampled `.to()` call site).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from collectors.hooks import hook_context as hc
from collectors.hooks.hook_context import HookContext, Patcher
from collectors.hooks.hook_region import call_then_emit
from gpuwatch.records import Category, SpanKind


def install_device_copy_hooks(patcher: Patcher, torch: Any) -> None:
    for method in ("to", "cuda", "cpu"):
        patcher.patch(torch.Tensor, method, _wrap_copy)
    patcher.patch(torch.Tensor, "item", _wrap_item)
    patcher.patch(torch.cuda, "synchronize", _wrap_synchronize)


def _wrap_copy(original: Any) -> Any:
    method = original.__name__

    def copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = hc.current()
        if ctx is None:
            return original(self, *args, **kwargs)

        def emit(t0: int, out: Any) -> None:
            if out is not self and out.device.type != self.device.type:
                src, dst = self.device.type, out.device.type
                direction = "h2d" if src == "cpu" else ("d2h" if dst == "cpu" else "d2d")
                ctx.emit_since(
                    t0,
                    SpanKind.MEMCPY.value,
                    f"Tensor.{method} {direction}",
                    Category.MEMCPY.value,
                    bytes=int(self.numel() * self.element_size()),
                    attrs={"direction": direction, "non_blocking": bool(kwargs.get("non_blocking", False))},
                )

        return call_then_emit(ctx, "memcpy", original, (self, *args), kwargs, emit)

    copy.__name__ = method
    copy.__doc__ = original.__doc__
    return copy


def _wrap_item(original: Any) -> Any:
    def item(self: Any) -> Any:
        ctx = hc.current()
        if ctx is None or not self.is_cuda:
            return original(self)
        return call_then_emit(
            ctx, "item", original, (self,), {}, _sync_span(ctx, "Tensor.item (device sync)")
        )

    item.__doc__ = original.__doc__
    return item


def _wrap_synchronize(original: Any) -> Any:
    def synchronize(*args: Any, **kwargs: Any) -> Any:
        ctx = hc.current()
        if ctx is None:
            return original(*args, **kwargs)
        return call_then_emit(
            ctx, "synchronize", original, args, kwargs, _sync_span(ctx, "torch.cuda.synchronize")
        )

    synchronize.__doc__ = original.__doc__
    return synchronize


def _sync_span(ctx: HookContext, name: str) -> Callable[[int, Any], None]:
    """Emits the `sync` span of a blocking host-device synchronization that started at `t0`."""

    def emit(t0: int, _out: Any) -> None:
        ctx.emit_since(t0, SpanKind.CPU_OP.value, name, Category.SYNC.value)

    return emit
