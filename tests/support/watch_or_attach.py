"""How a planted program is observed: under `gpuwatch.watch` when given a run directory, else as a plain process
that `gpuwatch attach` (py-spy, which is not its parent) may read. Imported by the programs beside it, which run
as scripts from this folder (tests/support/planted_imagefolder.py, helper_thread_collectives.py)."""

from __future__ import annotations

from typing import Any


def allow_ptrace() -> None:
    """Let `gpuwatch attach` (py-spy, not our parent) read this process under Yama's ptrace_scope 1."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(0x59616D61, ctypes.c_ulong(2**64 - 1), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class NoWatch:
    """Stands in for `gpuwatch.watch(...)` where the program knows nothing of gpuwatch: `step()` does nothing."""

    def __enter__(self) -> NoWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def step(self) -> None:
        pass


def watch_or_attach(run_dir: str | None) -> Any:
    """`gpuwatch.watch(run_dir)`; without a run directory a `NoWatch`, with ptrace opened for attach."""
    if run_dir:
        import gpuwatch

        return gpuwatch.watch(run_dir)
    allow_ptrace()
    return NoWatch()
