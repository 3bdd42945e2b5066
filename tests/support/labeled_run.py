"""A synthetic multi-rank run whose steps carry stages and tags, with planted per-source costs.

Each step every rank draws a source from `draws[step][rank]`; loading it costs `source_ms[source]` (data
loading), then compute, then an all_reduce every rank joins: the ranks that arrive first wait for the last
one, then `transfer_ms` of transfer. The stage of step i is `stages[i]` (named on its step span as
`gw.step(stage=...)` does); the stage's data cost is added to every rank (`stage_extra_ms`). Each rank can
record its clock anchor off by `anchor_offset_ns[rank]` (its times relative to the anchor stay true) and
its own host name: the planted clock skew of a multi-node job, whose times land that much late on the run's
timeline.

Everything is computed from the arguments, so the expected figures are known before gpuwatch runs:
`expected_wait_ms(rank)`, `expected_caused_ms(rank)`, `expected_data_ms(stage)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gpuwatch.records import Run, Span
from gpuwatch.store.segment_writer import SegmentWriter

ANCHOR_UNIX_NS = 1_700_000_000_000_000_000
MS = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class LabeledPlan:
    draws: list[list[str]]
    """Per step, per rank, the source drawn."""
    stages: list[str | None]
    """Per step, the stage named on the step (None: name none on that step, the last one persists)."""
    source_ms: dict[str, float] = field(default_factory=lambda: {"image": 5.0, "video_hr": 40.0})
    stage_extra_ms: dict[str, float] = field(default_factory=dict)
    compute_ms: float = 20.0
    transfer_ms: float = 2.0
    optimizer_ms: float = 3.0
    anchor_offset_ns: dict[int, int] = field(default_factory=dict)
    hosts: dict[int, str] = field(default_factory=dict)

    @property
    def ranks(self) -> int:
        return len(self.draws[0])

    def stage_of(self, step: int) -> str | None:
        named = [s for s in self.stages[: step + 1] if s is not None]
        return named[-1] if named else None

    def data_ms(self, step: int, rank: int) -> float:
        stage = self.stage_of(step)
        return self.source_ms[self.draws[step][rank]] + self.stage_extra_ms.get(stage or "", 0.0)

    def arrive_ms(self, step: int, rank: int) -> float:
        return self.data_ms(step, rank) + self.compute_ms

    def expected_wait_ms(self, rank: int) -> float:
        """Total ms the rank waits for a later rank, over the run."""
        return sum(
            max(self.arrive_ms(i, r) for r in range(self.ranks)) - self.arrive_ms(i, rank)
            for i in range(len(self.draws))
        )


def write_labeled_run(run_dir: str | Path, plan: LabeledPlan) -> Path:
    """Write the run (one writer per rank, synchronously) and close it."""
    writers = []
    for rank in range(plan.ranks):
        run = Run(
            run_id="labeled0001",
            rank=rank,
            host=plan.hosts.get(rank, "host-a"),
            pid=5000 + rank,
            command="python train.py (labeled synthetic)",
            world_size=plan.ranks,
            started_at_unix_ns=ANCHOR_UNIX_NS + plan.anchor_offset_ns.get(rank, 0),
            tool_version="synthetic",
            source="watch",
            meta={"clock_domain": plan.hosts.get(rank, "host-a")},
        )
        writers.append(SegmentWriter(run_dir, run, background=False))
    t0 = 10 * MS
    for i, draws in enumerate(plan.draws):
        arrive = [t0 + int(plan.arrive_ms(i, r) * MS) for r in range(plan.ranks)]
        coll_end = max(arrive) + int(plan.transfer_ms * MS)
        step_end = coll_end + int(plan.optimizer_ms * MS)
        for rank in range(plan.ranks):
            pid, tid = 5000 + rank, 7000 + rank
            data_end = t0 + int(plan.data_ms(i, rank) * MS)
            attrs: dict[str, object] = {"tags": {"source": draws[rank]}}
            if plan.stages[i] is not None:
                attrs["stage"] = plan.stages[i]
            spans = [
                Span(rank, "phase", "DataLoader.__next__", t0, data_end, "data_loading", pid, tid, step=i),
                Span(rank, "phase", "forward", data_end, arrive[rank], "compute", pid, tid, step=i),
                Span(
                    rank,
                    "collective",
                    "all_reduce",
                    arrive[rank],
                    coll_end,
                    "sync",
                    pid,
                    tid,
                    step=i,
                    seq=i + 1,
                    attrs={"collective": "all_reduce", "process_group": "0"},
                ),  # fmt: skip
                Span(rank, "phase", "optimizer.step", coll_end, step_end, "compute", pid, tid, step=i),
                Span(rank, "step", f"step {i}", t0, step_end, None, pid, tid, step=i, attrs=attrs),
            ]
            for s in spans:
                writers[rank].emit_span(s)
        t0 = step_end
    for w in writers:
        w.close()
    return Path(run_dir)
