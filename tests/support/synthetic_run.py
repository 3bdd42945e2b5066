"""A synthetic multi-rank CPU training run written with the real segment writer, with a known budget.

Every rank runs the same steps on one shared clock: data loading (`data_ms`, longer on `slow_rank`), CPU
augmentation, forward, backward, an all_reduce every rank joins (the ranks that arrive first wait for the
last one, then `transfer_ms` of transfer), then the optimizer. Rank 0 also saves a checkpoint before the
all_reduce every `checkpoint_every` steps (the manager-node pattern: the others wait for it). The /proc
samples of each rank (and NVML samples with `gpu=True`) are written once per flush.

Everything, times included, is a pure function of the arguments: two runs written with the same arguments
are identical but for the wall-clock `updated_at` of each writer.json (which nothing displays), so the
dashboard's snapshots of such a run are stable.

    run = SyntheticRun(path, ranks=2)
    run.append(100)        # 100 more steps on every rank, one flush per `steps_per_flush`
    run.close()            # writers marked ended
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpuwatch.records import Run, Sample, Span
from gpuwatch.store.segment_writer import SegmentWriter

ANCHOR_UNIX_NS = 1_700_000_000_000_000_000
"""A fixed wall-clock anchor (2023-11-14), so every time in the run is the same on every machine."""
MS = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class StepPlan:
    """Milliseconds of each phase of a step (rank 0's checkpoint and the slow rank's data come on top)."""

    data_ms: float = 10.0
    slow_data_ms: float = 30.0
    augment_ms: float = 5.0
    forward_ms: float = 30.0
    backward_ms: float = 40.0
    transfer_ms: float = 5.0
    optimizer_ms: float = 10.0
    checkpoint_ms: float = 200.0


class SyntheticRun:
    """Writes a run directory step by step (one `SegmentWriter` per rank, no background threads)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        ranks: int = 2,
        slow_rank: int | None = 1,
        checkpoint_every: int = 50,
        steps_per_flush: int = 10,
        plan: StepPlan | None = None,
        gpu: bool = False,
        run_id: str = "synthetic0001",
        notes: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.ranks = ranks
        self.slow_rank = slow_rank
        self.checkpoint_every = checkpoint_every
        self.steps_per_flush = steps_per_flush
        self.plan = plan or StepPlan()
        self.gpu = gpu
        self.steps = 0
        self.t_ns = 0
        self._io_total = [0] * ranks
        self.writers = []
        for rank in range(ranks):
            run = Run(
                run_id=run_id,
                rank=rank,
                host="synthetic-host",
                pid=4000 + rank,
                command="python train.py (synthetic)",
                world_size=ranks,
                started_at_unix_ns=ANCHOR_UNIX_NS,
                tool_version="synthetic",
                source="watch",
            )
            writer = SegmentWriter(self.run_dir, run, background=False)
            if notes and rank == 0:
                writer.note(
                    "dataloader", "DataLoader num_workers=0: batches are loaded on the training thread"
                )
                writer._notes["dataloader"]["t_unix_ns"] = ANCHOR_UNIX_NS  # a fixed time, for stable screens
            self.writers.append(writer)

    def append(self, steps: int) -> None:
        """Write `steps` more steps on every rank, flushing every `steps_per_flush` steps and at the end."""
        p = self.plan
        for _ in range(steps):
            i = self.steps
            t0 = self.t_ns
            arrive = []
            per_rank: list[list[Span]] = []
            for rank in range(self.ranks):
                tid, pid = 1000 + rank, 4000 + rank
                data = p.slow_data_ms if rank == self.slow_rank else p.data_ms
                phases = [
                    ("phase", "DataLoader.__next__", "data_loading", data),
                    ("user", "augment", "cpu_preprocessing", p.augment_ms),
                    ("phase", "forward", "compute", p.forward_ms),
                    ("phase", "backward", "compute", p.backward_ms),
                ]
                if (
                    rank == 0
                    and self.checkpoint_every
                    and i % self.checkpoint_every == self.checkpoint_every - 1
                ):
                    phases.append(("phase", "torch.save", "checkpoint_io", p.checkpoint_ms))
                t = t0
                spans = []
                for kind, name, category, ms in phases:
                    end = t + int(ms * MS)
                    spans.append(_span(rank, pid, tid, kind, name, category, t, end, i))
                    t = end
                arrive.append(t)
                per_rank.append(spans)
            coll_end = max(arrive) + int(p.transfer_ms * MS)
            step_end = coll_end + int(p.optimizer_ms * MS)
            for rank, spans in enumerate(per_rank):
                tid, pid = 1000 + rank, 4000 + rank
                attrs = {"collective": "all_reduce", "process_group": "0"}
                coll = _span(rank, pid, tid, "collective", "all_reduce", "sync", arrive[rank], coll_end, i)
                spans.append(_with(coll, seq=i + 1, bytes=4 << 20, attrs=attrs))
                spans.append(
                    _span(rank, pid, tid, "phase", "optimizer.step", "compute", coll_end, step_end, i)
                )
                spans.append(_span(rank, pid, tid, "step", f"step {i}", None, t0, step_end, i))
                for s in spans:
                    self.writers[rank].emit_span(s)
            self.t_ns = step_end
            self.steps += 1
            if self.steps % self.steps_per_flush == 0:
                self.flush()
        if self.steps % self.steps_per_flush:
            self.flush()

    def flush(self) -> None:
        for rank, writer in enumerate(self.writers):
            for sample in self._samples(rank):
                writer.emit_sample(sample)
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def _samples(self, rank: int) -> list[Sample]:
        t, pid = self.t_ns, 4000 + rank
        self._io_total[rank] += 64 << 20
        out = [
            Sample(rank, "proc_cpu_pct", t, 95.0 + rank, -1, pid),
            Sample(rank, "rss_bytes", t, float((1500 + 100 * rank) << 20), -1, pid),
            Sample(rank, "child_count", t, 2.0, -1, pid),
            Sample(rank, "children_cpu_pct", t, 140.0 + rank, -1, pid),
            Sample(rank, "children_rss_bytes", t, float(800 << 20), -1, pid),
            Sample(rank, "io_read_bytes_total", t, float(self._io_total[rank]), -1, pid),
            Sample(rank, "io_write_bytes_total", t, float(self._io_total[rank] // 8), -1, pid),
        ]
        if self.gpu:
            out += [
                Sample(rank, "gpu_util_pct", t, 60.0 + 5 * rank, rank, 0),
                Sample(rank, "mem_used_bytes", t, float((30 + rank) << 30), rank, 0),
                Sample(rank, "mem_total_bytes", t, float(80 << 30), rank, 0),
                Sample(rank, "power_mw", t, 350_000.0 + 1000 * rank, rank, 0),
            ]
        return out


def _span(
    rank: int, pid: int, tid: int, kind: str, name: str, category: str | None, start: int, end: int, step: int
) -> Span:
    return Span(
        rank=rank,
        kind=kind,
        name=name,
        start_ns=start,
        end_ns=end,
        category=category,
        pid=pid,
        tid=tid,
        step=step,
    )


def _with(span: Span, **fields: object) -> Span:
    import msgspec

    return msgspec.structs.replace(span, **fields)


def write_synthetic_run(run_dir: str | Path, *, steps: int = 100, **kwargs: object) -> Path:
    """A finished synthetic run of `steps` steps (see `SyntheticRun` for the keyword arguments)."""
    run = SyntheticRun(run_dir, **kwargs)  # type: ignore[arg-type]
    run.append(steps)
    run.close()
    return Path(run_dir)
