"""The stack -> category table shared by the in-process sampler and `gpuwatch attach`."""

from __future__ import annotations

import torch.distributed.distributed_c10d as c10d
import torch.serialization

from collectors.stack_rules import classify_stack

C10D = c10d.__file__
SERIALIZATION = torch.serialization.__file__
LOADER = "/usr/lib/python3/site-packages/torch/utils/data/dataloader.py"


def category(*frames: tuple[str, str]) -> str | None:
    rule = classify_stack(frames)
    return None if rule is None else rule.category.value


def test_a_checkpoint_is_checkpoint_io_even_inside_other_work() -> None:
    assert (
        category(("train.py", "main"), (SERIALIZATION, "save"), (SERIALIZATION, "_save")) == "checkpoint_io"
    )
    assert category((LOADER, "__next__"), (SERIALIZATION, "load")) == "checkpoint_io"


def test_tensors_pickled_by_an_object_collective_are_the_collective() -> None:
    # gather_object -> _object_to_tensor -> pickle -> Storage.__reduce__ -> torch.save(BytesIO)
    stack = [
        ("train.py", "step"),
        (C10D, "gather_object"),
        (C10D, "_object_to_tensor"),
        (SERIALIZATION, "save"),
    ]
    assert category(*stack) == "sync"
    assert category(*reversed(stack)) == "sync"  # order of frames does not matter
    back = [(C10D, "broadcast_object_list"), (C10D, "_tensor_to_object"), (SERIALIZATION, "load")]
    assert category(*back) == "sync"


def test_priority_between_causes_follows_the_budget() -> None:
    # decode inside the single-process DataLoader's fetch is the loader's time (data_loading > cpu_preprocessing)
    assert category((LOADER, "__next__"), ("/data/jpeg.py", "decode_frame")) == "data_loading"
    assert category(("/data/jpeg.py", "decode_frame")) == "cpu_preprocessing"
    assert category(("/x/torch/nn/functional.py", "normalize")) == "compute"  # torch's, not an augmentation
    assert category(("/usr/lib/python3.11/logging/__init__.py", "info")) == "host_overhead"
    assert category(("/home/me/train.py", "main")) is None
