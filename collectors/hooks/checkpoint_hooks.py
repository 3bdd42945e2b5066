"""Checkpoint calls as `checkpoint_io` spans: torch.save/load, torch.distributed.checkpoint, safetensors.

- `torch.save` / `torch.load` (both names: `torch.X` and `torch.serialization.X`), with the file size.
  A `torch.load` inside a DataLoader `__next__` on the training thread is reading data, not a checkpoint,
  and is left to the DataLoader span.
- `torch.distributed.checkpoint` `save`, `load`, `async_save` (and the deprecated `save_state_dict` /
  `load_state_dict`). For `async_save` the span is the time the call blocks the loop (staging the state
  dict); the upload's completion is recorded as a background span on the thread that finished it, and the
  time the loop later spends in `future.result()` (waiting for the previous save) is a `checkpoint_io`
  span of its own.
- `safetensors.torch` `save_file`, `load_file`, `save`, `load`, `save_model`, `load_model`, when installed.

Modules imported after the watch started are wrapped at the next step boundary (`refresh`).
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from typing import Any

from collectors.base import Collector, RecordSink
from collectors.hooks import hook_context as hc
from collectors.hooks.hook_context import HookContext, Patcher
from collectors.hooks.hook_region import call_in_region
from gpuwatch.records import Category, SpanKind

CKPT = Category.CHECKPOINT_IO.value
PHASE = SpanKind.PHASE.value
_FLAG = "in_checkpoint"


class CheckpointHooks(Collector):
    """Wraps the checkpoint entry points of torch, torch.distributed.checkpoint and safetensors."""

    name = "checkpoint_hooks"

    def __init__(self, ctx: HookContext) -> None:
        self.ctx = ctx
        self._patcher = Patcher()
        self._done: set[str] = set()
        self._started = False

    def start(self, sink: RecordSink) -> None:
        self._started = True
        self.refresh()

    def stop(self) -> None:
        self._started = False
        self._patcher.restore()
        self._done.clear()

    def refresh(self) -> None:
        """Wrap whatever checkpoint modules are imported by now (cheap: a few dict lookups)."""
        if not self._started:
            return
        mods = sys.modules
        try:
            if "torch" not in self._done and "torch" in mods:
                self._done.add("torch")
                self._wrap_torch(mods["torch"])
            if "dcp" not in self._done and "torch.distributed.checkpoint" in mods:
                self._done.add("dcp")
                self._wrap_dcp(mods["torch.distributed.checkpoint"])
            if "safetensors" not in self._done and "safetensors.torch" in mods:
                self._done.add("safetensors")
                self._wrap_safetensors(mods["safetensors.torch"])
        except Exception as exc:
            self.ctx.hook_error("install:checkpoint", exc)

    def _wrap_torch(self, torch: Any) -> None:
        for owner in (torch, torch.serialization):
            self._patcher.patch(owner, "save", lambda f: _timed(f, "torch.save", path_arg=1))
            self._patcher.patch(owner, "load", lambda f: _timed(f, "torch.load", path_arg=0, is_load=True))

    def _wrap_dcp(self, dcp: Any) -> None:
        saver = sys.modules.get("torch.distributed.checkpoint.state_dict_saver")
        loader = sys.modules.get("torch.distributed.checkpoint.state_dict_loader")
        for owner in (dcp, saver):
            if owner is None:
                continue
            self._patcher.patch(owner, "save", lambda f: _timed(f, "dcp.save", path_kw="checkpoint_id"))
            self._patcher.patch(
                owner, "save_state_dict", lambda f: _timed(f, "dcp.save_state_dict", path_kw="checkpoint_id")
            )
            self._patcher.patch(owner, "async_save", _timed_async_save)
        for owner in (dcp, loader):
            if owner is None:
                continue
            self._patcher.patch(
                owner, "load", lambda f: _timed(f, "dcp.load", path_kw="checkpoint_id", is_load=True)
            )
            self._patcher.patch(
                owner,
                "load_state_dict",
                lambda f: _timed(f, "dcp.load_state_dict", path_kw="checkpoint_id", is_load=True),
            )

    def _wrap_safetensors(self, st: Any) -> None:
        self._patcher.patch(st, "save_file", lambda f: _timed(f, "safetensors.save_file", path_arg=1))
        self._patcher.patch(
            st, "load_file", lambda f: _timed(f, "safetensors.load_file", path_arg=0, is_load=True)
        )
        self._patcher.patch(st, "save", lambda f: _timed(f, "safetensors.save"))
        self._patcher.patch(st, "load", lambda f: _timed(f, "safetensors.load", is_load=True))
        self._patcher.patch(st, "save_model", lambda f: _timed(f, "safetensors.save_model", path_arg=1))
        self._patcher.patch(
            st, "load_model", lambda f: _timed(f, "safetensors.load_model", path_arg=1, is_load=True)
        )


def _skip(ctx: HookContext, is_load: bool) -> bool:
    if ctx.flag(_FLAG):
        return True  # inside another checkpoint call (DCP writes with torch.save)
    if ctx.flag(hc.IN_COLLECTIVE):
        return True  # object collectives pickle tensors through torch.save/torch.load: that is the collective
    # torch.load inside a DataLoader fetch on the training thread is the input pipeline
    return is_load and ctx.flag(hc.IN_DATA_LOADING) and threading.get_ident() == ctx.train_ident


def _path_of(args: tuple[Any, ...], kwargs: dict[str, Any], path_arg: int | None, path_kw: str | None) -> Any:
    if path_kw is not None and path_kw in kwargs:
        return kwargs[path_kw]
    if path_arg is not None:
        if len(args) > path_arg:
            return args[path_arg]
        return kwargs.get("f") or kwargs.get("filename")
    return None


def _file_bytes(path: Any) -> int | None:
    if isinstance(path, (str, os.PathLike)):
        try:
            return os.path.getsize(path) if os.path.isfile(path) else None
        except OSError:
            return None
    return None


def _timed(
    original: Any,
    label: str,
    *,
    path_arg: int | None = None,
    path_kw: str | None = None,
    is_load: bool = False,
) -> Any:
    def checkpoint_call(*args: Any, **kwargs: Any) -> Any:
        # writes are timed in every step, observed or not (`hc.WATCHING`); loads only in observed steps,
        # where the DataLoader hook says whether the load reads a sample
        ctx = hc.ACTIVE if is_load else hc.WATCHING
        if ctx is None or _skip(ctx, is_load):
            return original(*args, **kwargs)

        def finish(t0: int, _state: Any, _result: Any) -> None:
            path = _path_of(args, kwargs, path_arg, path_kw)
            attrs = {"path": os.fspath(path)} if isinstance(path, (str, os.PathLike)) else None
            ctx.end(t0, PHASE, label, CKPT, key=label, bytes=_file_bytes(path), attrs=attrs)

        return call_in_region(ctx, label, "checkpoint", original, args, kwargs, finish, flag=_FLAG)

    checkpoint_call.__name__ = getattr(original, "__name__", label)
    checkpoint_call.__doc__ = original.__doc__
    checkpoint_call.__wrapped__ = original  # type: ignore[attr-defined]
    return checkpoint_call


def _timed_async_save(original: Any) -> Any:
    label = "dcp.async_save (blocking)"

    def async_save(*args: Any, **kwargs: Any) -> Any:
        ctx = hc.WATCHING
        if ctx is None or _skip(ctx, False):
            return original(*args, **kwargs)

        def finish(t0: int, _state: Any, result: Any) -> None:
            path = kwargs.get("checkpoint_id")
            attrs = {"path": os.fspath(path)} if isinstance(path, (str, os.PathLike)) else {}
            t1 = ctx.end(t0, PHASE, label, CKPT, key="dcp.async_save", attrs={**attrs, "async": True})
            if result is not None:
                _follow_async_result(ctx, result, t1, attrs)

        return call_in_region(ctx, label, "checkpoint", original, args, kwargs, finish, flag=_FLAG)

    async_save.__doc__ = original.__doc__
    async_save.__wrapped__ = original  # type: ignore[attr-defined]
    return async_save


def _follow_async_result(ctx: HookContext, result: Any, t_return: int, attrs: dict[str, Any]) -> None:
    """Record when the background upload finishes, and time the loop's later waits on it."""
    futures = []
    if isinstance(result, concurrent.futures.Future):
        futures.append(("upload", result))
    else:  # AsyncSaveResponse(staging_completion, upload_completion)
        for part in ("staging_completion", "upload_completion"):
            fut = getattr(result, part, None)
            if isinstance(fut, concurrent.futures.Future):
                futures.append((part.split("_")[0], fut))
    for part, fut in futures:
        if part == "upload":

            def done(_: concurrent.futures.Future[Any]) -> None:
                _background_done(ctx, t_return, attrs)

            fut.add_done_callback(done)
        _time_result(fut, f"dcp.async_save wait ({part})")


def _background_done(ctx: HookContext, t_return: int, attrs: dict[str, Any]) -> None:
    try:
        if hc.WATCHING is not ctx:
            return
        ctx.emit_span(
            t_return,
            ctx.now_ns(),
            PHASE,
            "dcp.async_save (background upload)",
            CKPT,
            tid=threading.get_native_id(),  # the uploading thread: off the training thread's budget
            attrs={**attrs, "background": True},
        )
    except Exception as exc:
        ctx.hook_error("checkpoint", exc)


def _time_result(fut: concurrent.futures.Future[Any], label: str) -> None:
    original = fut.result

    def result(timeout: float | None = None) -> Any:
        ctx = hc.WATCHING
        if ctx is None or fut.done():
            return original(timeout)

        def finish(t0: int, _state: Any, _result: Any) -> None:
            ctx.end(t0, PHASE, label, CKPT, key=label)

        return call_in_region(ctx, label, "checkpoint", original, (timeout,), {}, finish)

    fut.result = result  # type: ignore[method-assign]
