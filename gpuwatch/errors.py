"""User-facing errors: each carries one line for stderr and the exit code the CLI returns.

Exit codes (documented in `gpuwatch --help`): 0 success, 1 runtime failure, 2 usage or configuration error.
Foreign exceptions (duckdb, msgspec, OSError, pynvml, py-spy) are wrapped at the boundary that raised them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


class GpuwatchError(Exception):
    """Base class: `str(err)` is the one line shown to the user."""

    exit_code = EXIT_RUNTIME


class UsageError(GpuwatchError):
    """The user asked for something that cannot work as asked (bad path, bad flag value)."""

    exit_code = EXIT_USAGE


class TraceFormatError(GpuwatchError):
    """A trace file is corrupt, truncated or not a PyTorch profiler trace."""


class RunDirError(GpuwatchError):
    """A run directory is missing, empty, or written by an incompatible gpuwatch."""


class RunDirUsageError(RunDirError):
    """The path given as a run directory is not one (wrong path): a usage error."""

    exit_code = EXIT_USAGE


class AttachError(GpuwatchError):
    """`gpuwatch attach` could not sample the target process."""
