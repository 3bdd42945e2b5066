"""GPU only: host<->device copies and blocking host-device syncs on the training thread.

`Tensor.to/cuda/cpu` calls that move a tensor between host and device become `memcpy` spans (with bytes,
direction and `non_blocking`); `.item()` on a device tensor and `torch.cuda.synchronize()` become `sync`
spans. Installed only when CUDA is available (on CPU these calls never copy, and they are hot). The spans
are emitted after the call, without opening a hooked region: a copy is short, and the stack sampler never
overrules it (memcpy outranks host_overhead, the category of a sampled `.to()` call site).
"""

from __future__ import annotations

from typing import Any

from collectors.hooks import hook_context as hc
from collectors.hooks.hook_context import Patcher
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
        t0 = ctx.now_ns()
        out = original(self, *args, **kwargs)
        try:
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
        except Exception as exc:
            ctx.hook_error("memcpy", exc)
        return out

    copy.__name__ = method
    copy.__doc__ = original.__doc__
    return copy


def _wrap_item(original: Any) -> Any:
    def item(self: Any) -> Any:
        ctx = hc.current()
        if ctx is None or not self.is_cuda:
            return original(self)
        t0 = ctx.now_ns()
        out = original(self)
        try:
            ctx.emit_since(t0, SpanKind.CPU_OP.value, "Tensor.item (device sync)", Category.SYNC.value)
        except Exception as exc:
            ctx.hook_error("item", exc)
        return out

    item.__doc__ = original.__doc__
    return item


def _wrap_synchronize(original: Any) -> Any:
    def synchronize(*args: Any, **kwargs: Any) -> Any:
        ctx = hc.current()
        if ctx is None:
            return original(*args, **kwargs)
        t0 = ctx.now_ns()
        out = original(*args, **kwargs)
        try:
            ctx.emit_since(t0, SpanKind.CPU_OP.value, "torch.cuda.synchronize", Category.SYNC.value)
        except Exception as exc:
            ctx.hook_error("synchronize", exc)
        return out

    synchronize.__doc__ = original.__doc__
    return synchronize
