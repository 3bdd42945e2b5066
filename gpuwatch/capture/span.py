"""`gpuwatch.span`: name a region of your own code, as a context manager or a decorator.

```python
with gpuwatch.span("decode", category="cpu_preprocessing"):
    images = [decode(b) for b in blobs]

@gpuwatch.span("log_metrics", category="host_overhead")
def log_metrics(...): ...
```

With a `category` the region explains its time in the budget (it outranks the stack sampler, and nested
hooks such as a collective inside it still count as what they are). Without one it is only a label: it is
recorded, the sampler still looks inside it, and its time goes to whatever else explains it. The span is
closed when the block raises. When no watch is running it costs one global lookup and does nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from collectors.hooks import hook_context as hc
from gpuwatch.records import CATEGORIES, SpanKind

F = TypeVar("F", bound=Callable[..., Any])
_VALID = frozenset(c.value for c in CATEGORIES)
USER = SpanKind.USER.value


class span:  # noqa: N801 (used like a function: gpuwatch.span(...))
    """A named region on the calling thread.

    Args:
        name: what the region is ("decode", "eval", "log_metrics").
        category: a budget category (`gpuwatch.Category` or its value), or None for a label only.
        **attrs: extra facts stored with the span (JSON-serializable).

    Raises:
        ValueError: `category` is not one of the budget categories.
    """

    __slots__ = ("name", "category", "attrs", "_open")

    def __init__(self, name: str, category: str | None = None, **attrs: Any) -> None:
        if category is not None:
            category = str(getattr(category, "value", category))
            if category not in _VALID:
                raise ValueError(
                    f"gpuwatch.span category must be one of {', '.join(sorted(_VALID))} or None, not {category!r}"
                )
        self.name = str(name)
        self.category = category
        self.attrs = attrs or None
        self._open: list[tuple[Any, int]] = []  # (context, start) per nested use of this object

    def __enter__(self) -> span:
        ctx = hc.ACTIVE
        if ctx is None:
            self._open.append((None, 0))
            return self
        try:
            t0 = ctx.begin(f"span:{self.name}") if self.category is not None else ctx.now_ns()
            self._open.append((ctx, t0))
        except Exception as exc:
            ctx.hook_error("span", exc)
            self._open.append((None, 0))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._open:
            return
        ctx, t0 = self._open.pop()
        if ctx is None:
            return
        try:
            attrs = self.attrs
            if exc_type is not None:
                attrs = {**(attrs or {}), "raised": exc_type.__name__}
            if self.category is not None:
                ctx.end(t0, USER, self.name, self.category, key=f"span:{self.name}", attrs=attrs)
            else:
                ctx.emit_since(t0, USER, self.name, None, attrs=attrs)
        except Exception as err:
            ctx.hook_error("span", err)

    def __call__(self, fn: F) -> F:
        """Use as a decorator: every call of `fn` is one span."""
        name, category, attrs = self.name, self.category, self.attrs or {}

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if hc.ACTIVE is None:
                return fn(*args, **kwargs)
            with span(name, category, **attrs):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]
