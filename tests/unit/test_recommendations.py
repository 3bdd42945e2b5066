"""Recommendations fire over their thresholds with evidence, and the advice fits what the run already does."""

from __future__ import annotations

import numpy as np
import pytest

from gpuwatch.attribution.budget import compute_rank_budget
from gpuwatch.attribution.recommendations import RULES, recommend
from gpuwatch.records import Category, SpanColumns

STEP_NS = 100_000_000


def rank_with(name: str, category: str, share: float, rank: int = 0) -> SpanColumns:
    """Ten 100 ms steps on one thread: `share` of each step in a span `name` of `category`, the rest compute."""
    rows = []
    for i in range(10):
        t = i * STEP_NS
        cut = t + int(share * STEP_NS)
        rows.append(("step", None, f"step {i}", t, t + STEP_NS, i))
        if category != "unattributed":  # unattributed is time no span covers: leave a gap
            rows.append(("phase", category, name, t, cut, -1))
        rows.append(("phase", "compute", "forward", cut, t + STEP_NS, -1))
    n = len(rows)
    obj = lambda k: np.array([r[k] for r in rows], dtype=object)  # noqa: E731
    return SpanColumns(
        rank=np.full(n, rank, np.int32),
        pid=np.full(n, 1, np.int64),
        tid=np.full(n, 7, np.int64),
        stream=np.full(n, -1, np.int64),
        device_index=np.full(n, -1, np.int32),
        kind=obj(0),
        category=obj(1),
        name=obj(2),
        start_ns=np.array([r[3] for r in rows], np.int64),
        end_ns=np.array([r[4] for r in rows], np.int64),
        step=np.array([r[5] for r in rows], np.int64),
        bytes=np.full(n, -1, np.int64),
        correlation=np.full(n, -1, np.int64),
        seq=np.full(n, -1, np.int64),
        attrs=np.full(n, None, object),
    )


def advice(name: str, category: str, share: float) -> list:
    return recommend([compute_rank_budget(0, rank_with(name, category, share))])


def rule_for(category: Category):
    return next(r for r in RULES if r.category == category)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.category.value)
def test_a_rule_fires_only_above_its_threshold_with_its_evidence(rule) -> None:
    over = advice("the culprit", rule.category.value, (rule.threshold_pct + 3) / 100)
    assert [r.category for r in over] == [rule.category.value]
    assert f"{rule.threshold_pct + 3:.1f}%" in over[0].evidence
    if rule.category != Category.UNATTRIBUTED:
        assert "the culprit" in over[0].evidence
    assert advice("the culprit", rule.category.value, (rule.threshold_pct - 1) / 100) == []


def test_checkpoint_advice_knows_the_loop_already_saves_asynchronously() -> None:
    sync_save = advice("torch.save", "checkpoint_io", 0.10)[0]
    assert sync_save.change == rule_for(Category.CHECKPOINT_IO).change and "async_save" in sync_save.change
    async_save = advice("dcp.async_save (blocking)", "checkpoint_io", 0.10)[0]
    assert "already saves asynchronously" in async_save.change


def test_data_loading_advice_depends_on_whether_workers_exist() -> None:
    no_workers = advice("DataLoader.__next__ (num_workers=0)", "data_loading", 0.3)[0]
    assert "raise DataLoader num_workers" in no_workers.change
    workers = advice("DataLoader.__next__ (num_workers=8)", "data_loading", 0.3)[0]
    assert "already has workers" in workers.change


def test_sync_advice_for_a_manager_node_and_for_ddp() -> None:
    manager = advice("dist.gather_object", "sync", 0.3)[0]
    assert "replace gather-merge-broadcast" in manager.change
    ddp = advice("DDP reducer wait", "sync", 0.3)[0]
    assert "already all-reduced" in ddp.change
