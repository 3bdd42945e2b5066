"""Which budget category a Python stack of the training thread stands for.

Used by the in-process stack sampler (`gpuwatch.watch`) and by `gpuwatch attach` (py-spy samples). The rules
are data: each `StackRule` matches a frame by a regular expression over its file path and one over its
function name. Every frame of the stack is tried; when frames match rules of several categories the budget
priority decides (checkpoint_io > sync > data_loading > cpu_preprocessing > memcpy > compute >
host_overhead), the same priority the engine uses for overlapping spans. Users extend `STACK_RULES`.

Inside a DataLoader that runs the Dataset on the training thread (`num_workers=0`), the loader's own frames
(`__next__`, `fetch`: `StackRule.loader`) do not decide alone: what the thread does under them does, the
innermost frame that names it. Reading (files, object stores, `torch.load` of a sample) is `data_loading`;
decode, resize, crop, to-tensor, normalise and collate are `cpu_preprocessing` (`LOADER_WORK_RULES` adds
transform classes by name there: `Normalize.__call__`). Work nothing names stays the loader's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gpuwatch.records import Category


@dataclass(frozen=True, slots=True)
class StackRule:
    category: Category
    file: str = ""
    """Regex searched in the frame's file path ("" matches any file)."""
    function: str = ""
    """Regex searched in the frame's function name ("" matches any function)."""
    label: str = ""
    """Short human name for evidence ("JPEG decode", "DataLoader wait")."""
    decisive: bool = False
    """When it matches any frame, the whole stack is this rule's, whatever the priority says."""
    loader: bool = False
    """A DataLoader's own frame: the work under it on the same thread decides (module docstring)."""


STACK_RULES: list[StackRule] = [
    # object collectives pickle tensors through torch.save/torch.load: that is the collective, not a checkpoint
    StackRule(
        Category.SYNC,
        r"torch/distributed/distributed_c10d\.py$",
        r"^(_object_to_tensor|_tensor_to_object)$",
        "object collective (pickling)",
        decisive=True,
    ),
    # checkpointing
    StackRule(
        Category.CHECKPOINT_IO,
        r"torch/serialization\.py$",
        r"^(save|load|_save|_load|_legacy_save)$",
        "torch.save/load",
    ),
    StackRule(Category.CHECKPOINT_IO, r"torch/distributed/checkpoint/", "", "torch.distributed.checkpoint"),
    StackRule(Category.CHECKPOINT_IO, r"safetensors/", "", "safetensors"),
    # collectives and host-device syncs
    StackRule(Category.SYNC, r"torch/distributed/distributed_c10d\.py$", "", "torch.distributed collective"),
    StackRule(
        Category.SYNC, r"torch/distributed/c10d_logger\.py$", r"wrapper", "torch.distributed collective"
    ),
    StackRule(Category.SYNC, r"torch/cuda/__init__\.py$", r"^synchronize$", "torch.cuda.synchronize"),
    StackRule(Category.SYNC, r"torch/cuda/streams\.py$", r"synchronize|wait", "CUDA stream/event wait"),
    StackRule(
        Category.SYNC,
        r"torch/nn/parallel/distributed\.py$",
        r"_sync|_check_sync|_pre_forward|_post_forward",
        "DDP sync",
    ),
    # input pipeline: waiting for the next batch, reading inputs
    StackRule(
        Category.DATA_LOADING,
        r"torch/utils/data/dataloader\.py$",
        r"__next__|_next_data|_get_data|_try_get_data",
        "DataLoader wait",
        loader=True,
    ),
    StackRule(
        Category.DATA_LOADING, r"torch/utils/data/_utils/fetch\.py$", "", "DataLoader fetch", loader=True
    ),
    StackRule(
        Category.DATA_LOADING,
        r"multiprocessing/(queues|connection)\.py$",
        r"^(get|recv|_recv|poll|_poll|recv_bytes)",
        "worker queue wait",
    ),
    StackRule(
        Category.DATA_LOADING,
        r"(boto3|botocore|s3fs|fsspec|gcsfs|adlfs|urllib3|requests|webdataset|datasets)/",
        "",
        "object-store / dataset read",
    ),
    StackRule(
        Category.DATA_LOADING,
        r"^(?!.*/torch/)",
        r"^(read_file|load_file|read_bytes|read_text|fetch_|read_sample|load_sample|readinto)",
        "file read",
    ),
    StackRule(
        Category.DATA_LOADING,
        r"numpy/(lib/(_npyio_impl|npyio|format)|_core/memmap)\.py$|h5py/|lmdb|zarr/|pyarrow/",
        r"^(load|loadtxt|genfromtxt|fromfile|read_array|open_memmap|__getitem__|read\w*|_read\w*|__new__)$",
        "file read (array formats)",
    ),
    # decode and augmentation
    StackRule(
        Category.CPU_PREPROCESSING,
        r"PIL/(ImageFile|Image|\w+ImagePlugin)\.py$",
        r"^(load|load_read|load_prepare|_open|draft|decode|open)$",
        "image decode (PIL)",
    ),
    StackRule(Category.CPU_PREPROCESSING, r"PIL/", "", "PIL decode/transform"),
    StackRule(Category.CPU_PREPROCESSING, r"torchvision/(transforms|io)/", "", "torchvision transforms/io"),
    StackRule(
        Category.CPU_PREPROCESSING,
        r"(cv2|simplejpeg|turbojpeg|imageio|decord|av|torchcodec|albumentations)/",
        "",
        "image/video decode",
    ),
    StackRule(
        Category.CPU_PREPROCESSING,
        r"^(?!.*/torch/)",
        r"decode|augment|transform|resize|crop|flip|normalize|jitter|collate|preprocess",
        "decode/augment (by name)",
    ),
    StackRule(Category.CPU_PREPROCESSING, r"numpy/", "", "numpy"),
    StackRule(Category.CPU_PREPROCESSING, r"torch/utils/data/_utils/collate\.py$", "", "collate"),
    # host-device copies
    StackRule(
        Category.MEMCPY,
        r"^(?!.*/torch/)|torch/utils/data/_utils/pin_memory\.py$",
        r"^(pin_memory|_pin_memory_loop|to_device|copy_to_device)$",
        "host-device copy",
    ),
    # the math of the step
    StackRule(Category.COMPUTE, r"torch/nn/modules/", "", "forward"),
    StackRule(Category.COMPUTE, r"torch/nn/functional\.py$", "", "forward"),
    StackRule(
        Category.COMPUTE,
        r"torch/autograd/|torch/_tensor\.py$",
        r"backward|_engine_run_backward|grad",
        "backward",
    ),
    StackRule(Category.COMPUTE, r"torch/optim/", "", "optimizer step"),
    StackRule(Category.COMPUTE, r"torch/_dynamo/|torch/_inductor/|torch/_functorch/", "", "compiled step"),
    # explicit host overhead
    StackRule(
        Category.HOST_OVERHEAD,
        r"(^|/)logging/|tqdm/|wandb/|tensorboard|torch/utils/tensorboard/|mlflow/",
        "",
        "logging/metrics",
    ),
]

PRIORITY: tuple[Category, ...] = (
    Category.CHECKPOINT_IO,
    Category.SYNC,
    Category.DATA_LOADING,
    Category.CPU_PREPROCESSING,
    Category.MEMCPY,
    Category.COMPUTE,
    Category.HOST_OVERHEAD,
)
_RANK = {c: i for i, c in enumerate((*PRIORITY, Category.UNATTRIBUTED))}

WAITING = StackRule(Category.UNATTRIBUTED, label="waiting on another thread (lock, event, queue, future)")
"""A stack no rule names whose innermost frame blocks on another thread of the process: the thread has
nothing of its own there. The engine does not count it as host activity, so what that other thread does
(a collective: sync) or nothing (unattributed) explains the time, not host_overhead."""
_WAIT_FRAME = re.compile(r"(^|/)(threading\.py|queue\.py|selectors\.py|concurrent/futures/_base\.py)$")
_WAIT_FUNCTION = re.compile(r"^(wait|join|_wait_for_tstate_lock|get|select|result|acquire|as_completed)$")

LOADER_WORK_RULES: list[StackRule] = [
    StackRule(
        Category.CPU_PREPROCESSING,
        r"^(?!.*/torch/)",
        r"(?i)(transform|augment|normali[sz]e|resize|crop|flip|rotat|affine|jitter|blur|totensor|to_tensor"
        r"|pil_?to|decode|collate|compose|erasing|grayscale|posterize|solarize|equalize|mixup|cutmix)",
        "transform (by class name)",
    ),
    StackRule(Category.CPU_PREPROCESSING, r"(transforms?|augment\w*)\.py$", "", "transform module"),
]
"""Extra rules for frames a DataLoader runs on the training thread, matched with the qualified function
name (`Normalize.__call__`): torchvision-style transform classes spend their time in `__call__`/`forward`."""
LOADER_READ = StackRule(Category.DATA_LOADING, label="sample read (torch.load in the Dataset)")
"""What a checkpoint rule means under a DataLoader: the Dataset reading a sample, not a checkpoint."""
_LOADER_WORK = (Category.DATA_LOADING, Category.CPU_PREPROCESSING)

Compiled = list[tuple[re.Pattern[str] | None, re.Pattern[str] | None, StackRule]]
_compiled: Compiled = []
_compiled_work: Compiled = []
_compiled_from: list[StackRule] = []
_frame_cache: dict[tuple[str, str], tuple[StackRule | None, StackRule | None]] = {}
_generation = 0


def _compile(rules: list[StackRule]) -> Compiled:
    return [
        (re.compile(r.file) if r.file else None, re.compile(r.function) if r.function else None, r)
        for r in rules
    ]


def _check_tables() -> None:
    """Recompile when a table was extended (a rule added, removed, or its first or last replaced). Called
    once per stack and O(1): comparing the tables by value (dataclass equality) on every frame cost the
    in-process sampler 150 us a stack."""
    global _compiled, _compiled_work, _compiled_from, _generation
    if (
        len(_compiled_from) != len(STACK_RULES) + len(LOADER_WORK_RULES)
        or not STACK_RULES
        or _compiled_from[0] is not STACK_RULES[0]
        or _compiled_from[len(STACK_RULES) - 1] is not STACK_RULES[-1]
        or (LOADER_WORK_RULES and _compiled_from[-1] is not LOADER_WORK_RULES[-1])
    ):
        _compiled = _compile(STACK_RULES)
        _compiled_work = _compile(LOADER_WORK_RULES)
        _compiled_from = STACK_RULES + LOADER_WORK_RULES
        _frame_cache.clear()
        _generation += 1


def _first(rules: Compiled, path: str, function: str) -> StackRule | None:
    for file_re, func_re, rule in rules:
        if (file_re is None or file_re.search(path)) and (func_re is None or func_re.search(function)):
            return rule
    return None


def _frame_rules(filename: str, function: str) -> tuple[StackRule | None, StackRule | None]:
    """(the `STACK_RULES` rule of a frame, what it is as work under a DataLoader), cached per frame."""
    key = (filename, function)
    hit = _frame_cache.get(key)
    if hit is None:
        path = filename.replace("\\", "/")
        short = function.rsplit(".", 1)[-1]  # rules match bare names; samplers may give `Class.method`
        rule = _first(_compiled, path, short)
        work: StackRule | None
        if rule is not None and rule.category == Category.CHECKPOINT_IO:
            work = LOADER_READ
        elif rule is not None and rule.category in _LOADER_WORK and not rule.loader:
            work = rule
        else:
            work = _first(_compiled_work, path, function)
        hit = _frame_cache[key] = (rule, work)
    return hit


def rules_generation() -> int:
    """A number that changes whenever the rule tables were extended since it was last read: a cache of
    classified stacks is good while it stays the same."""
    _check_tables()
    return _generation


def frame_rule(filename: str, function: str) -> StackRule | None:
    """The first rule matching one frame, or None."""
    _check_tables()
    return _frame_rules(filename, function)[0]


def _by_priority(rules: Iterable[StackRule | None]) -> StackRule | None:
    best: StackRule | None = None
    for rule in rules:
        if rule is not None and (best is None or _RANK[rule.category] < _RANK[best.category]):
            best = rule
    return best


def _is_wait(filename: str, function: str) -> bool:
    return bool(
        _WAIT_FRAME.search(filename.replace("\\", "/")) and _WAIT_FUNCTION.match(function.rsplit(".", 1)[-1])
    )


def classify_stack(frames: Iterable[tuple[str, str]]) -> StackRule | None:
    """The winning rule for a whole stack of (filename, function) frames, **innermost frame first**; None if
    none match. `function` may be the bare name or the qualified one (`Normalize.__call__`).

    The budget priority decides between frames, except under a DataLoader's own frames (`StackRule.loader`):
    there the innermost frame doing loader work (a read, or decode/transform/collate) decides between
    data_loading and cpu_preprocessing; sync (anywhere) and checkpoint_io above the loader still win.
    """
    _check_tables()
    matched: list[tuple[StackRule | None, StackRule | None]] = []
    loader_at = -1
    innermost: tuple[str, str] | None = None
    for filename, function in frames:
        if innermost is None:
            innermost = (filename, function)
        rule, work = _frame_rules(filename, function)
        if rule is not None and rule.decisive:
            return rule
        if loader_at < 0 and rule is not None and rule.loader:
            loader_at = len(matched)
        matched.append((rule, work))
    if loader_at < 0:
        best = _by_priority(rule for rule, _ in matched)
        if best is None and innermost is not None and _is_wait(*innermost):
            return WAITING
        return best
    under = matched[:loader_at]
    best = _by_priority(
        [rule for rule, _ in matched[loader_at:]] + [r for r, _ in under if r and r.category == Category.SYNC]
    )
    if best is not None and _RANK[best.category] < _RANK[Category.DATA_LOADING]:
        return best
    for _, work in under:  # innermost first
        if work is not None and work.category in _LOADER_WORK:
            return work
    return best


# ---- the source line the innermost Python frame is on ----------------------------------------------------
# A sampler that sees only Python frames cannot see a C method such as `loss.item()`: the innermost frame is
# the user's line calling it. On a GPU that call blocks until the device catches up, so the line's text
# names the cause. These rules match that text (samplers that can read the target's source files use them;
# the categories join the stack's by the same priority).

SOURCE_RULES: list[StackRule] = [
    StackRule(
        Category.SYNC,
        function=r"\.(item|tolist|cpu|numpy)\(\s*\)|\bsynchronize\(",
        label="host-device sync (.item()/.cpu()/synchronize)",
    ),
]
"""Rules over source text: `function` holds the regex searched in the line (`file` restricts the file)."""


def source_rule(filename: str, text: str) -> StackRule | None:
    """The first `SOURCE_RULES` rule matching the source `text` of a line in `filename`, or None."""
    path = filename.replace("\\", "/")
    for rule in SOURCE_RULES:
        if (not rule.file or re.search(rule.file, path)) and re.search(rule.function, text):
            return rule
    return None


def higher_priority(a: StackRule | None, b: StackRule | None) -> StackRule | None:
    """The rule whose category wins by the budget priority (either may be None)."""
    if a is None or b is None:
        return a or b
    return a if _RANK[a.category] <= _RANK[b.category] else b
