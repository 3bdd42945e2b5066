"""What one sampled Python stack of the training thread stands for, cached per stack of code objects.

Training loops repeat: the stack sampler and gap probes see the same few stacks step after step. Matching a
stack against `collectors.stack_rules` costs tens to hundreds of microseconds (every frame, priorities,
the loader rules); walking it to its code objects costs a few. So the walk is done every time and the
matching once per distinct stack, until the rule tables change (`stack_rules.rules_generation`).
"""

from __future__ import annotations

import os
from typing import Any

from collectors.stack_rules import classify_stack, rules_generation
from gpuwatch.records import Category

MAX_DEPTH = 128
"""Frames read per sample (deep recursion is cut; the innermost frames decide most rules)."""
MAX_CACHED_STACKS = 4096
"""Distinct stacks remembered; the cache starts afresh when full (a loop whose stacks never repeat)."""
LOADER_FILES = (
    os.path.join("torch", "utils", "data", "dataloader.py"),
    os.path.join("torch", "utils", "data", "_utils", "fetch.py"),
)
"""A DataLoader's own frames: inside a split loader region the stack is read only down to one of these."""

OWN_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (__file__, os.path.join(os.path.dirname(os.path.dirname(__file__)), "gpuwatch", "x"))
)
"""gpuwatch's own code: a stack inside it is gpuwatch's overhead, named as such."""
_STDLIB_WAITS = ("threading.py", "queue.py", "selectors.py")
HOST_OVERHEAD = Category.HOST_OVERHEAD.value
OWN_LABEL = "gpuwatch (own overhead)"
"""The label of a stack in gpuwatch's own code (its hooks, its clocks) that no rule matched."""

# key: (in_loader, id of each code object, innermost first) -> (category, label, the code objects). The
# value holds the code objects so that their ids cannot be reused by other code while the entry lives.
_cache: dict[tuple[Any, ...], tuple[str, str, tuple[Any, ...]]] = {}
_cache_generation = -1


def classify_frame(frame: Any, *, in_loader: bool = False) -> tuple[str, str]:
    """(category, label) of the stack under `frame`, innermost frame first. `in_loader`: the thread is inside
    a DataLoader region, whose own frame decides with those under it (the frames above are not read)."""
    global _cache_generation
    codes: list[Any] = []
    f = frame
    while f is not None and len(codes) < MAX_DEPTH:
        code = f.f_code
        codes.append(code)
        if in_loader and code.co_filename.endswith(LOADER_FILES):
            break
        f = f.f_back
    key = (in_loader, *map(id, codes))
    generation = rules_generation()
    if generation != _cache_generation or len(_cache) >= MAX_CACHED_STACKS:
        _cache.clear()
        _cache_generation = generation
    hit = _cache.get(key)
    if hit is None:
        category, label = classify_codes(codes)
        hit = _cache[key] = (category, label, tuple(codes))
    return hit[0], hit[1]


def classify_codes(codes: list[Any]) -> tuple[str, str]:
    """(category, label) of a stack given as code objects, innermost first (uncached)."""
    frames = [(code.co_filename, code.co_qualname) for code in codes]  # `Normalize.__call__`: rules want both
    rule = classify_stack(frames)
    if rule is not None:
        return rule.category.value, rule.label or rule.category.value
    if any(filename.startswith(OWN_DIRS) for filename, _ in frames):
        return HOST_OVERHEAD, OWN_LABEL
    for filename, function in frames:  # unmatched: name the innermost frame of the job's own code
        base = os.path.basename(filename)
        if base not in _STDLIB_WAITS:
            return HOST_OVERHEAD, f"{base}:{function.rsplit('.', 1)[-1]}"
    return HOST_OVERHEAD, "python"
