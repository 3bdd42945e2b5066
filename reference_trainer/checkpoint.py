"""Checkpoints: the synchronous rank-0 `torch.save` every N steps, or DCP `async_save` off the critical path.

- `sync`: rank 0 collects the full state (model, optimizer, step), `torch.save`s it, fsyncs and renames it
  into place before training goes on; under the manager pattern the other ranks meanwhile wait in the
  next step's first collective.
- `async`: every rank calls `torch.distributed.checkpoint.async_save` on a gloo process group of its own
  (so the background thread's collectives never interleave with the training group's). The call returns
  once the state is staged (copied); the write runs on a background thread. The loop waits on it just
  before the next optimizer step, the first moment the parameters being written would change.

Both formats load back with `load_checkpoint` (a `.pt` file or a DCP folder), also under FSDP2.

Checkpoints go to modelled remote storage: writes are paced to `write_mb_s` (default 125 MB/s, the baseline
throughput of a cloud block volume or an NFS mount), because this machine's page cache absorbs 34 MB in
milliseconds where a real cluster's checkpoint store takes seconds for a real model's state. The pacing is
a sleep in the write path, the same for both modes; serialization, copies and fsync are real work.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from reference_trainer.distributed import DistInfo, GradSync

CHECKPOINT_MODES = ("sync", "async", "off")
KEEP_LAST = 2


class PacedWriter:
    """A writable file whose writes complete no faster than `bytes_per_s` (modelled remote storage).

    Everything but `write` is the wrapped file's (tell, flush, fileno for fsync, close).
    """

    def __init__(self, f: Any, bytes_per_s: float) -> None:
        self._f = f
        self._bytes_per_s = bytes_per_s
        self._t0 = time.monotonic()
        self._written = 0

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        self._written += memoryview(data).nbytes
        if self._bytes_per_s > 0:
            delay = self._t0 + self._written / self._bytes_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # models storage throughput, see the module docstring
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _paced_dcp_writer(path: Path, write_mb_s: float) -> Any:
    """DCP's FileSystemWriter writing through `PacedWriter` streams."""
    from contextlib import contextmanager

    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.filesystem import FileSystem

    class PacedFileSystem(FileSystem):
        @contextmanager
        def create_stream(self, path: Any, mode: str) -> Any:
            with super().create_stream(path, mode) as stream:
                yield PacedWriter(stream, write_mb_s * 1e6) if "w" in mode else stream

    writer = FileSystemWriter(str(path))
    writer.fs = PacedFileSystem()
    return writer


def _model_and_optim_state(sync: GradSync, full: bool) -> dict[str, Any]:
    """{"model": ..., "optim": ...} through torch.distributed.checkpoint.state_dict (DDP/FSDP2 aware)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=full, cpu_offload=full)
    state: dict[str, Any] = {"model": get_model_state_dict(sync.module, options=opts)}
    if sync.optimizer is not None:
        state["optim"] = get_optimizer_state_dict(sync.module, sync.optimizer, options=opts)
    return state


class Checkpointer:
    """Saves every `every` completed steps in the configured mode and reports how long the loop was blocked."""

    def __init__(
        self, mode: str, every: int, directory: Path, info: DistInfo, sync: GradSync, write_mb_s: float = 0.0
    ) -> None:
        if mode not in CHECKPOINT_MODES:
            raise ValueError(f"unknown checkpoint mode {mode!r}; choose one of {', '.join(CHECKPOINT_MODES)}")
        self.mode, self.every, self.dir, self.info, self.sync = mode, every, Path(directory), info, sync
        self.write_mb_s = write_mb_s
        self.pending: Any = None
        self.pending_path: Path | None = None
        self.saved: list[Path] = []
        self.planner: Any = None
        # A group of its own for the background thread's collectives (gloo even under NCCL: staged state is
        # on the host).
        self.group = dist.new_group(backend="gloo") if mode == "async" and dist.is_initialized() else None
        if info.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)

    def wait_before_optimizer_step(self) -> float:
        """Block until a pending async save has finished; seconds blocked."""
        if self.pending is None:
            return 0.0
        t0 = time.perf_counter()
        done = getattr(self.pending, "upload_completion", self.pending)  # AsyncSaveResponse or Future
        done.result()
        self.pending = None
        if self.pending_path is not None:
            self._keep_last(self.pending_path)
        return time.perf_counter() - t0

    def maybe_save(self, completed_steps: int) -> float:
        """Checkpoint after `completed_steps` steps when it is due; seconds the loop was blocked."""
        if self.mode == "off" or self.every <= 0 or completed_steps % self.every:
            return 0.0
        t0 = time.perf_counter()
        if self.mode == "sync":
            self._save_sync(completed_steps)
        else:
            self.wait_before_optimizer_step()  # never two saves in flight
            self._save_async(completed_steps)
        return time.perf_counter() - t0

    def close(self) -> float:
        """Finish any pending save (end of training); seconds blocked."""
        return self.wait_before_optimizer_step()

    def _save_sync(self, step: int) -> None:
        fsdp = self.sync.mode == "fsdp2"
        if fsdp:  # sharded state has to be gathered by every rank first
            state = _model_and_optim_state(self.sync, full=True)
        elif self.info.rank == 0:  # what most training scripts do: rank 0 saves its own full copy
            assert self.sync.optimizer is not None
            state = {"model": self.sync.raw.state_dict(), "optim": self.sync.optimizer.state_dict()}
        if self.info.rank != 0:
            return
        state["step"] = step
        path = self.dir / f"step-{step:06d}.pt"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, PacedWriter(f, self.write_mb_s * 1e6))
            f.flush()
            os.fsync(f.fileno())  # durable before it counts as a checkpoint
        os.replace(tmp, path)
        self._keep_last(path)

    def _save_async(self, step: int) -> None:
        import torch.distributed.checkpoint as dcp

        state = _model_and_optim_state(self.sync, full=False)
        state["step"] = step
        path = self.dir / f"step-{step:06d}"
        if self.planner is None:
            from torch.distributed.checkpoint import DefaultSavePlanner

            # the same tensors every save: reuse the global plan instead of exchanging it again
            self.planner = DefaultSavePlanner(enable_plan_caching=True)
        self.pending = dcp.async_save(
            state,
            checkpoint_id=str(path),
            storage_writer=_paced_dcp_writer(path, self.write_mb_s),
            planner=self.planner,
            process_group=self.group,
        )
        self.pending_path = path

    def _keep_last(self, path: Path) -> None:
        self.saved.append(path)
        if self.info.rank != 0:
            return
        old = self.saved[:-KEEP_LAST]
        del self.saved[:-KEEP_LAST]
        if not old:
            return
        if self.mode == "async":  # pruning is storage work too: off the training thread
            threading.Thread(target=_remove, args=(old,), name="checkpoint-prune", daemon=True).start()
        else:
            _remove(old)


def _remove(paths: list[Path]) -> None:
    for old in paths:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def checkpoint_step(path: str | Path) -> int:
    """Completed steps of a checkpoint, from its name (`step-000012` folder or `step-000012.pt`).

    Raises ValueError when the name has no step or the checkpoint does not exist.
    """
    path = Path(path)
    name = path.name.removesuffix(".pt")
    if not name.startswith("step-") or not name[5:].isdigit():
        raise ValueError(f"--resume {path}: expected a checkpoint named step-NNNNNN (DCP) or step-NNNNNN.pt")
    if not path.exists():
        raise ValueError(f"--resume {path}: no such checkpoint")
    return int(name[5:])


def load_checkpoint(path: str | Path, sync: GradSync, info: DistInfo) -> int:
    """Load a `.pt` file or a DCP folder into the model (and optimizer, where this rank has one).

    Returns the number of completed steps stored in it.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    if path.is_dir():  # DCP: every rank reads the pieces it needs, resharded to this run's layout
        import torch.distributed.checkpoint as dcp

        state = _model_and_optim_state(sync, full=False)
        state["step"] = 0
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(sync.module, state["model"])
        if sync.optimizer is not None and "optim" in state:
            set_optimizer_state_dict(sync.module, sync.optimizer, state["optim"])
        return int(state["step"])
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if sync.mode == "fsdp2":  # full state in the file, sharded model here
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_model_state_dict(sync.module, blob["model"], options=opts)
        if sync.optimizer is not None:
            set_optimizer_state_dict(sync.module, sync.optimizer, blob["optim"], options=opts)
    else:
        sync.raw.load_state_dict(blob["model"])
        if sync.optimizer is not None:
            sync.optimizer.load_state_dict(blob["optim"])
    return int(blob["step"])
