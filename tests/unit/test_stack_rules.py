"""The stack -> category table shared by the in-process sampler and `gpuwatch attach`."""

from __future__ import annotations

import torch.distributed.distributed_c10d as c10d
import torch.serialization

from collectors.stack_rules import classify_stack

C10D = c10d.__file__
SERIALIZATION = torch.serialization.__file__
LOADER = "/usr/lib/python3/site-packages/torch/utils/data/dataloader.py"


FETCH = "/usr/lib/python3/site-packages/torch/utils/data/_utils/fetch.py"
COLLATE = "/usr/lib/python3/site-packages/torch/utils/data/_utils/collate.py"
PIN = "/usr/lib/python3/site-packages/torch/utils/data/_utils/pin_memory.py"
PIL_IMAGE_FILE = "/usr/lib/python3/site-packages/PIL/ImageFile.py"
TV_TRANSFORMS = "/usr/lib/python3/site-packages/torchvision/transforms/transforms.py"
TV_FOLDER = "/usr/lib/python3/site-packages/torchvision/datasets/folder.py"
QUEUES = "/usr/lib/python3.11/multiprocessing/queues.py"


def label(*frames: tuple[str, str]) -> tuple[str, str] | None:
    """Frames as one reads a traceback, outermost first (the rules take them innermost first)."""
    rule = classify_stack(list(reversed(frames)))
    return None if rule is None else (rule.category.value, rule.label)


def category(*frames: tuple[str, str]) -> str | None:
    got = label(*frames)
    return None if got is None else got[0]


IN_LOADER = (
    ("train.py", "main"),
    (LOADER, "_BaseDataLoaderIter.__next__"),
    (LOADER, "_SingleProcessDataLoaderIter._next_data"),
    (FETCH, "_MapDatasetFetcher.fetch"),
)
"""A DataLoader without workers running the Dataset on the training thread."""


def test_a_checkpoint_is_checkpoint_io_even_inside_other_work() -> None:
    assert (
        category(("train.py", "main"), (SERIALIZATION, "save"), (SERIALIZATION, "_save")) == "checkpoint_io"
    )
    assert category(("train.py", "main"), (SERIALIZATION, "load")) == "checkpoint_io"
    # ... but a Dataset that torch.loads its samples is reading input (as the DataLoader hook says)
    assert (
        category(*IN_LOADER, ("/data/ds.py", "PtDataset.__getitem__"), (SERIALIZATION, "load"))
        == "data_loading"
    )


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
    assert category(("/data/jpeg.py", "decode_frame")) == "cpu_preprocessing"
    assert category(("/data/jpeg.py", "decode_frame"), ("/data/io.py", "read_file")) == "data_loading"
    assert category(("/x/torch/nn/functional.py", "normalize")) == "compute"  # torch's, not an augmentation
    assert category(("/usr/lib/python3.11/logging/__init__.py", "info")) == "host_overhead"
    assert category(("/home/me/train.py", "main")) is None


def test_inside_the_loader_what_the_thread_does_decides() -> None:
    """num_workers=0: reading the file is data_loading; decode, transforms and collate are preprocessing."""
    ds = ("/data/ds.py", "ImageFolder.__getitem__")
    assert label(*IN_LOADER, ds) == (
        "data_loading",
        "DataLoader fetch",
    )  # the Dataset's own lines: the loader
    assert category(*IN_LOADER, ds, ("/data/ds.py", "read_file")) == "data_loading"
    assert category(*IN_LOADER, ds, ("/usr/lib/python3.11/pathlib.py", "Path.read_bytes")) == "data_loading"
    assert category(*IN_LOADER, ds, ("/data/ds.py", "decode_frame")) == "cpu_preprocessing"
    assert label(*IN_LOADER, ds, (PIL_IMAGE_FILE, "ImageFile.load")) == (
        "cpu_preprocessing",
        "image decode (PIL)",
    )
    # torchvision's ImageFolder: pil_loader -> PIL; transforms through Compose
    assert category(*IN_LOADER, (TV_FOLDER, "DatasetFolder.__getitem__"), (TV_FOLDER, "pil_loader")) == (
        "data_loading"
    )
    assert (
        category(*IN_LOADER, (TV_FOLDER, "pil_loader"), (PIL_IMAGE_FILE, "ImageFile.load"))
        == "cpu_preprocessing"
    )
    assert category(*IN_LOADER, ds, (TV_TRANSFORMS, "Compose.__call__")) == "cpu_preprocessing"
    # torchvision-like transform classes of the job's own, told by their class name
    assert label(*IN_LOADER, ds, ("/data/ds.py", "Normalize.__call__")) == (
        "cpu_preprocessing",
        "transform (by class name)",
    )
    assert category(*IN_LOADER, ds, ("/data/ds.py", "RandomResizedCrop.__call__")) == "cpu_preprocessing"
    assert category(*IN_LOADER, ds, ("/data/my_transforms.py", "Pipeline.__call__")) == "cpu_preprocessing"
    # the innermost frame decides: a read inside a transform is a read, a decode inside a reader a decode
    assert category(*IN_LOADER, ds, ("/data/ds.py", "Normalize.__call__"), ("/d/io.py", "read_file")) == (
        "data_loading"
    )
    assert category(*IN_LOADER, ds, ("/d/io.py", "load_sample"), (PIL_IMAGE_FILE, "ImageFile.load")) == (
        "cpu_preprocessing"
    )
    # numpy array files are read, numpy math is preprocessing
    npyio = "/usr/lib/python3/site-packages/numpy/lib/_npyio_impl.py"
    assert category(*IN_LOADER, ds, (npyio, "load")) == "data_loading"
    numeric = "/usr/lib/python3/site-packages/numpy/_core/numeric.py"
    assert category(*IN_LOADER, ds, (numeric, "outer")) == "cpu_preprocessing"
    # collate runs under _next_data, after the fetch
    loader = IN_LOADER[:3]
    assert label(*loader, (COLLATE, "default_collate")) == ("cpu_preprocessing", "collate")
    # waiting for workers, and pinning, stay the loader's as before
    assert category(*loader, (LOADER, "_get_data"), (QUEUES, "Queue.get")) == "data_loading"
    assert category(*loader, (PIN, "pin_memory")) == "data_loading"
    # outside a loader, class names mean nothing (a model called Transformer is no transform)
    assert category(("train.py", "main"), ("/m/model.py", "Transformer.forward")) is None


def test_sync_inside_the_loader_still_wins() -> None:
    assert category(*IN_LOADER, ("/data/ds.py", "DS.__getitem__"), (C10D, "broadcast")) == "sync"
