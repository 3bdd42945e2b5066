"""Device time of hooked regions on a GPU: CUDA event pairs, resolved later without blocking the loop.

`start()` records an event on the current stream and returns a token; `stop(token, ...)` records the end
event and queues the pair. `poll()` (called at step boundaries) turns pairs whose end event has completed
into device spans; nothing here ever waits on the device except `flush(wait=True)` at close.

Device times are put on the host timeline through one reference event per device, recorded right after a
`torch.cuda.synchronize()` when the device is first seen (the device is idle then, so the event completes
when it is recorded): t = t_ref + ref.elapsed_time(event). Events are pooled to keep `start` cheap.
"""

from __future__ import annotations

import collections
from typing import Any

from collectors.hooks.hook_context import HookContext, unwrap

MAX_PENDING = 4096
"""Event pairs waiting for the device; beyond this new regions go untimed (counted in a note)."""


class DeviceTimer:
    """CUDA-event timing of host regions' device work (only built when `torch.cuda.is_available()`)."""

    def __init__(self, ctx: HookContext, torch: Any) -> None:
        self.ctx = ctx
        self.torch = torch
        self._refs: dict[int, tuple[Any, int]] = {}
        self._pool: list[Any] = []
        self._pending: collections.deque[tuple[Any, Any, int, int, str, str, str, dict[str, Any]]] = (
            collections.deque()
        )

    def _event(self) -> Any:
        if self._pool:
            return self._pool.pop()
        return self.torch.cuda.Event(enable_timing=True)

    def _ref(self, device: int) -> tuple[Any, int]:
        ref = self._refs.get(device)
        if ref is None:
            cuda = self.torch.cuda
            with cuda.device(device):
                unwrap(cuda.synchronize)()  # the unwrapped one: this sync is ours, not the job's
                event = cuda.Event(enable_timing=True)
                event.record()
                t_ns = self.ctx.now_ns()
                event.synchronize()
            ref = self._refs[device] = (event, t_ns)
        return ref

    def start(self) -> tuple[Any, int, int] | None:
        """Record a start event on the current stream; None when CUDA is not initialized yet."""
        cuda = self.torch.cuda
        if not cuda.is_initialized() or len(self._pending) >= MAX_PENDING:
            return None
        device = cuda.current_device()
        self._ref(device)
        stream = cuda.current_stream(device)
        event = self._event()
        event.record(stream)
        return event, device, int(stream.stream_id)

    def stop(
        self, token: tuple[Any, int, int] | None, kind: str, name: str, category: str, **fields: Any
    ) -> None:
        """Record the end event and queue the pair; `fields` go into the device span (seq, bytes, attrs)."""
        if token is None:
            return
        start, device, stream_id = token
        end = self._event()
        end.record(self.torch.cuda.current_stream(device))
        self._pending.append((start, end, device, stream_id, kind, name, category, fields))

    def poll(self) -> None:
        """Emit device spans for every pair whose end event has completed (oldest first; never waits)."""
        while self._pending and self._pending[0][1].query():
            self._emit(self._pending.popleft())

    def flush(self, wait: bool) -> None:
        """Emit what is pending; with `wait`, block until the device has finished it (used at close)."""
        if wait and self._pending:
            self._pending[-1][1].synchronize()
        self.poll()

    def _emit(self, item: tuple[Any, Any, int, int, str, str, str, dict[str, Any]]) -> None:
        start, end, device, stream_id, kind, name, category, fields = item
        ref, ref_ns = self._ref(device)
        start_ns = ref_ns + int(ref.elapsed_time(start) * 1e6)
        end_ns = ref_ns + int(ref.elapsed_time(end) * 1e6)
        self._pool.extend((start, end))
        self.ctx.emit_span(
            start_ns,
            max(end_ns, start_ns),
            kind,
            name,
            category,
            tid=0,
            stream=stream_id,
            device_index=device,
            step=fields.pop("step", None),
            **fields,
        )
