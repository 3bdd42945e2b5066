"""Faults injected into one gpuwatch hook at a time: the hook's own code raises, or is slow (60 ms on each of
its first three calls). The fault goes into `HookContext.begin` for the hook's regions, the first thing of
gpuwatch's own that every hook runs on the training thread, so what the hook wraps (the job's DataLoader,
forward, backward, optimizer step, checkpoint, collective) is untouched.

    undo = inject("forward:raise")   # ... a watched run ...   undo()
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

HOOKS: dict[str, Callable[[str], bool]] = {
    "dataloader": lambda key: key.startswith("DataLoader."),
    "forward": lambda key: key == "forward",
    "backward": lambda key: key == "backward",
    "optimizer": lambda key: key == "optimizer",
    "checkpoint": lambda key: key.startswith("torch."),
    "collective": lambda key: key.startswith("dist."),
}
"""Each hook, by the keys of the regions it opens (its `where` in notes is the same name)."""
MODES = ("raise", "slow")
SLOW_S = 0.06


class InjectedFault(RuntimeError):
    pass


def inject(spec: str) -> Callable[[], None]:
    """Make the hook `spec` ("forward:raise", "checkpoint:slow") fail; returns the function that undoes it."""
    from collectors.hooks.hook_context import HookContext

    hook, mode = spec.split(":")
    match, original = HOOKS[hook], HookContext.begin
    assert mode in MODES, mode
    calls = [0]

    def begin(self: Any, key: str) -> int:
        if match(key):
            calls[0] += 1
            if mode == "raise":
                raise InjectedFault(f"injected into the {hook} hook")
            if calls[0] <= 3:
                time.sleep(SLOW_S)
        return original(self, key)

    HookContext.begin = begin  # type: ignore[method-assign]

    def undo() -> None:
        HookContext.begin = original  # type: ignore[method-assign]

    return undo
