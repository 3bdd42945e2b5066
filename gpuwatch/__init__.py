"""gpuwatch: why do my GPUs sit idle during training, and what do I change?

`import gpuwatch` is cheap and has no side effects (it runs inside training jobs): the public API is loaded
on first use (PEP 562), and textual, plotly and duckdb are imported only by the code that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Category", "WatchConfig", "Watcher", "__version__", "span", "watch"]

_LAZY = {
    "Category": ("gpuwatch.records", "Category"),
    "watch": ("gpuwatch.capture.watch", "watch"),
    "Watcher": ("gpuwatch.capture.watch", "Watcher"),
    "WatchConfig": ("gpuwatch.capture.watch_config", "WatchConfig"),
    "span": ("gpuwatch.capture.span", "span"),
}

if TYPE_CHECKING:
    from gpuwatch.capture.span import span
    from gpuwatch.capture.watch import Watcher, watch
    from gpuwatch.capture.watch_config import WatchConfig
    from gpuwatch.records import Category


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'gpuwatch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value
