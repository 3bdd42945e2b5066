"""Checkpoints round-trip through fresh processes: FSDP2 + DCP async_save, and manager node + torch.save.

Each run is the real trainer under torchrun with two gloo ranks (and gpuwatch.watch). A resumed run must
compute exactly the loss the uninterrupted run computed at the same step, on every rank; and the three ways
of synchronizing gradients (manager node, DDP, FSDP2) must train the same model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reference_trainer_support import run_trainer, shared_data_root, step_losses

pytestmark = pytest.mark.slow

# Same data path for every run (decode in workers at reduced size, no modelled storage delays): the runs
# differ only in how gradients are synchronized and how checkpoints are written.
COMMON = [
    "--preset", "fixed", "--nproc", "2", "--steps", "4", "--checkpoint-every", "3", "--log-every", "1",
    "--read-latency-ms", "0", "--checkpoint-write-mb-s", "0", "--num-workers", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rt-ckpt")
    data = ["--data-dir", str(shared_data_root())]
    out = {}
    for name, extra in {
        "fsdp2": ["--grad-sync", "fsdp2", "--checkpoint", "async"],
        "manager": ["--grad-sync", "manager", "--checkpoint", "sync"],
        "ddp": ["--grad-sync", "ddp", "--checkpoint", "async"],
    }.items():
        out[name] = base / name
        run_trainer([*COMMON, *extra, *data, "--run-dir", str(out[name])])
    # fresh processes, loading the step-3 checkpoints
    out["fsdp2-resumed"] = base / "fsdp2-resumed"
    run_trainer(
        [*COMMON, "--grad-sync", "fsdp2", "--checkpoint", "async", *data, "--run-dir", str(out["fsdp2-resumed"]),
         "--resume", str(out["fsdp2"] / "trainer" / "checkpoints" / "step-000003")]
    )  # fmt: skip
    out["manager-resumed"] = base / "manager-resumed"
    run_trainer(
        [*COMMON, "--grad-sync", "manager", "--checkpoint", "sync", *data, "--run-dir", str(out["manager-resumed"]),
         "--resume", str(out["manager"] / "trainer" / "checkpoints" / "step-000003.pt")]
    )  # fmt: skip
    return out


def test_fsdp2_async_checkpoint_resumes_with_identical_next_step_loss(runs: dict[str, Path]) -> None:
    ckpt = runs["fsdp2"] / "trainer" / "checkpoints" / "step-000003"
    assert (ckpt / ".metadata").exists()
    assert len(list(ckpt.glob("*.distcp"))) == 2  # sharded state: each rank wrote its own shard
    for rank in (0, 1):
        resumed = step_losses(runs["fsdp2-resumed"], rank)
        assert sorted(resumed) == [3]  # it started where the checkpoint left off
        assert resumed[3] == step_losses(runs["fsdp2"], rank)[3]


def test_manager_node_torch_save_resumes_with_identical_next_step_loss(runs: dict[str, Path]) -> None:
    for rank in (0, 1):
        resumed = step_losses(runs["manager-resumed"], rank)
        assert sorted(resumed) == [3]
        assert resumed[3] == step_losses(runs["manager"], rank)[3]


def test_manager_ddp_and_fsdp2_train_the_same_model(runs: dict[str, Path]) -> None:
    for rank in (0, 1):
        manager = step_losses(runs["manager"], rank)
        assert sorted(manager) == [0, 1, 2, 3]
        for other in ("ddp", "fsdp2"):
            losses = step_losses(runs[other], rank)
            assert losses[0] == manager[0]  # same weights, data and noise before any update
            for step in (1, 2, 3):  # same updates, up to the order of floating-point sums
                assert losses[step] == pytest.approx(manager[step], rel=1e-4), (other, rank, step)
