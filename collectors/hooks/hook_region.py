"""The ways a hook times what it wraps, written once so every hook closes its region and keeps its own errors.

- `call_in_region`: a wrapped call as a hooked region (checkpoint, collective, backward, DataLoader): open
  the region, set a per-thread flag, call, restore the flag, close the region with the hook's span.
- `call_then_emit`: a short wrapped call that opens no region (copies, device syncs): call, then emit.
- `guarded_hook`: a pre/post hook that torch calls (forward, optimizer step).

In all three a failure of gpuwatch's own code is noted once (`HookContext.hook_error`) and never reaches the
job: when opening a region fails, the call runs unhooked; the job's own exceptions pass through untouched.
Their own work (not the wrapped call) past `SLOW_HOOK_NS` is noted too (`HookContext.slow_hook`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from collectors.hooks import hook_context as hc
from collectors.hooks.hook_context import SLOW_HOOK_NS, HookContext

R = TypeVar("R")

UNHOOKED: Final = object()
"""What a `before` callback returns to run the call without a region (a collective this rank is not in)."""

Finish = Callable[[int, Any, Any], None]
"""`finish(start_ns, state, result)`: emit the region's span; `state` is what `before` returned, `result`
the call's return value (None when the call raised)."""


def call_in_region(
    ctx: HookContext,
    key: str,
    where: str,
    original: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    finish: Finish,
    *,
    flag: str = "",
    before: Callable[[], Any] | None = None,
) -> R:
    """Run `original(*args, **kwargs)` as the hooked region `key` and close it with `finish`.

    Args:
        ctx: the active hook context.
        key: the region's key (`HookContext.begin`): the stack sampler names the gaps around it by it.
        where: the hook's name in a noted error (`hook_error:<where>`).
        original: the wrapped function.
        args, kwargs: its arguments.
        finish: closes the region (`ctx.end(...)`) with the hook's span; runs even when the call raised.
        flag: a per-thread flag (`HookContext.flag`) set for the call's duration, so hooks inside it can
            tell they are nested; its previous value comes back afterwards.
        before: runs before the region opens (a device-timer token, a probe); its value goes to `finish`,
            or `UNHOOKED` skips the region.

    Returns:
        What `original` returned; its exceptions propagate unchanged.
    """
    start_ns, outer = 0, False
    own = time.perf_counter_ns()
    try:
        state = before() if before is not None else None
        if state is not UNHOOKED:
            start_ns = ctx.begin(key)
            if flag:
                outer = ctx.flag(flag)
                ctx.set_flag(flag, True)
    except Exception as exc:
        ctx.hook_error(where, exc)
        state = UNHOOKED
    own = time.perf_counter_ns() - own
    if own > SLOW_HOOK_NS:
        ctx.slow_hook(where, own)
    if state is UNHOOKED:  # outside the try: the job's own exception is never taken for the hook's
        return original(*args, **kwargs)
    result = None
    try:
        result = original(*args, **kwargs)
        return result
    finally:
        own = time.perf_counter_ns()
        try:
            if flag:
                ctx.set_flag(flag, outer)
            finish(start_ns, state, result)
        except Exception as exc:
            ctx.hook_error(where, exc)
        own = time.perf_counter_ns() - own
        if own > SLOW_HOOK_NS:
            ctx.slow_hook(where, own)


def call_then_emit(
    ctx: HookContext,
    where: str,
    original: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    emit: Callable[[int, R], None],
) -> R:
    """Run `original(*args, **kwargs)` and then `emit(start_ns, result)`, without a hooked region.

    For short calls the stack sampler may overlap (a copy outranks what a sample says there). A call that
    raises emits nothing; an error in `emit` is noted under `where`.
    """
    start_ns = ctx.now_ns()
    result = original(*args, **kwargs)
    own = time.perf_counter_ns()
    try:
        emit(start_ns, result)
    except Exception as exc:
        ctx.hook_error(where, exc)
    own = time.perf_counter_ns() - own
    if own > SLOW_HOOK_NS:
        ctx.slow_hook(where, own)
    return result


def guarded_hook(where: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Make `body(owner, ctx, *hook_args)` a torch hook method `hook(owner, *hook_args)` that does nothing
    without an active context (or under torch.compile tracing, see `hook_context.current`) and notes its
    own errors under `where`. The hook always returns None (a value would replace the hooked arguments)."""

    def wrap(body: Callable[..., None]) -> Callable[..., None]:
        def hook(owner: Any, *hook_args: Any) -> None:
            ctx = hc.current()
            if ctx is None:
                return
            own = time.perf_counter_ns()
            try:
                body(owner, ctx, *hook_args)
            except Exception as exc:
                ctx.hook_error(where, exc)
            own = time.perf_counter_ns() - own
            if own > SLOW_HOOK_NS:
                ctx.slow_hook(where, own)

        hook.__name__ = body.__name__
        hook.__doc__ = body.__doc__
        return hook

    return wrap
