"""`gpuwatch.watch` / `gpuwatch.span` in this process: hooks found without being told, restored after, never
fatal to the job; spans, discovery of top-level modules, profiler windows, dropped records, ranks."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, span_rows
from torch.utils.data import DataLoader, TensorDataset

import gpuwatch
from gpuwatch.attribution.analysis import analyze_run
from gpuwatch.attribution.summary import summarize
from gpuwatch.store.run_reader import RunReader

torch.set_num_threads(1)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def read(run_dir: Path) -> tuple[list[dict], list]:
    """Every span of rank 0 (as dicts, by start) and the writers."""
    reader = RunReader(run_dir)
    try:
        return span_rows(reader.span_columns(0, with_attrs=True)), reader.writers
    finally:
        reader.close()


class Inner(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(16, 16)
        self.b = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def loader(n: int = 64, workers: int = 0) -> DataLoader:
    data = TensorDataset(torch.randn(n, 16), torch.randn(n, 16))
    return DataLoader(data, batch_size=8, num_workers=workers)


def test_forward_backward_optimizer_and_loader_found_without_being_passed(tmp_path: Path) -> None:
    model = Inner()
    opt = torch.optim.Adam(model.parameters())
    with gpuwatch.watch(tmp_path / "run") as gw:
        for x, y in loader():
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            gw.step()
    rows, _ = read(tmp_path / "run")
    names = [r["name"] for r in rows if r["kind"] == "phase"]
    # only the top-level module is timed, never its submodules
    assert names.count("forward Inner") == 8
    assert not any(n.startswith("forward Linear") or n.startswith("forward Sequential") for n in names)
    assert names.count("backward") == 8 and names.count("optimizer Adam.step") == 8
    assert names.count("DataLoader.__next__ (num_workers=0)") == 9  # 8 batches + the StopIteration call
    tids = {r["tid"] for r in rows if r["kind"] in ("phase", "step")}
    assert tids == {threading.get_native_id()}


def test_hooks_are_gone_after_the_watch(tmp_path: Path) -> None:
    from torch.nn.modules import module as module_mod
    from torch.optim import optimizer as optim_mod
    from torch.utils.data import dataloader as dl

    before = (torch.save, torch.load, dl._BaseDataLoaderIter.__next__, torch.distributed.all_reduce)
    model = Inner()
    with gpuwatch.watch(tmp_path / "run") as gw:
        model(torch.randn(2, 16)).sum().backward()
        gw.step()
        assert torch.save is not before[0]
    assert (torch.save, torch.load, dl._BaseDataLoaderIter.__next__, torch.distributed.all_reduce) == before
    assert not module_mod._global_forward_pre_hooks and not module_mod._global_forward_hooks
    assert not optim_mod._global_optimizer_pre_hooks and not optim_mod._global_optimizer_post_hooks
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert torch.autograd._engine_run_backward.__module__ == "torch.autograd.graph"


def test_discovery_stops_after_the_first_steps_and_finds_new_models_later(tmp_path: Path) -> None:
    from torch.nn.modules import module as module_mod

    first, second = Inner(), Inner()
    with gpuwatch.watch(tmp_path / "run", sample_hz=0) as gw:
        for step in range(12):
            first(torch.randn(2, 16))
            if step >= 10:
                second(torch.randn(2, 16))  # a model that appears late (evaluation, a second network)
            gw.step()
            if step == 1:
                # discovery is over: only the top-level module carries hooks, submodules keep the fast path
                assert not module_mod._global_forward_pre_hooks
                assert first._forward_pre_hooks and not first.a._forward_pre_hooks
    rows, _ = read(tmp_path / "run")
    forwards = [r for r in rows if r["name"] == "forward Inner"]
    assert len(forwards) == 12 + 2  # steps 0-11 of `first`; `second` in steps 10 (found then) and 11


def test_span_context_manager_decorator_error_and_noop(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="category must be one of"):
        gpuwatch.span("x", category="nap_time")
    with gpuwatch.span("outside", category="host_overhead"):  # no watch: nothing happens
        pass

    @gpuwatch.span("log_metrics", category="host_overhead")
    def log_metrics() -> int:
        busy(0.01)
        return 7

    measured = {"decode": 0.0, "rest": 0.0}
    with gpuwatch.watch(tmp_path / "run", sample_hz=0) as gw:
        for _ in range(3):
            t0 = time.perf_counter()
            with gpuwatch.span("decode", category="cpu_preprocessing", source="synthetic"):
                busy(0.02)
            t1 = time.perf_counter()
            assert log_metrics() == 7
            with pytest.raises(KeyError):
                with gpuwatch.span("fails", category="cpu_preprocessing"):
                    raise KeyError("boom")
            with gpuwatch.span("just a label"):
                busy(0.005)
            measured["decode"] += t1 - t0
            measured["rest"] += time.perf_counter() - t1
            gw.step()
    rows, _ = read(tmp_path / "run")
    user = [r for r in rows if r["kind"] == "user"]
    assert [r["name"] for r in user[:4]] == ["decode", "log_metrics", "fails", "just a label"]
    assert user[0]["attrs"] == {"source": "synthetic"} and user[0]["end_ns"] - user[0]["start_ns"] >= 20e6
    assert user[2]["attrs"] == {"raised": "KeyError"}  # closed on error
    assert user[3]["category"] is None
    budget = summarize(analyze_run(tmp_path / "run")).to_json()["ranks"][0]["budget_ms_per_step"]
    # the label-only span explains nothing: its 5 ms are host_overhead, like log_metrics's 10 ms
    recorded = sum(r["end_ns"] - r["start_ns"] for r in user if r["category"] == "cpu_preprocessing") / 3e6
    assert budget["cpu_preprocessing"] == pytest.approx(recorded, abs=0.05)  # the engine counts the spans
    assert budget["cpu_preprocessing"] == pytest.approx(measured["decode"] / 3 * 1e3, abs=1.5), (
        user,
        measured,
    )
    explained_rest = budget["host_overhead"] + budget["unattributed"]  # no sampler: the glue is unattributed
    assert explained_rest == pytest.approx(measured["rest"] / 3 * 1e3, abs=1.5)
    assert budget["host_overhead"] >= 10 + 5 - 0.5
    # decorator keeps the function's identity
    assert log_metrics.__name__ == "log_metrics"


def test_a_failing_hook_is_noted_once_and_the_job_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collectors.hooks import torch_hooks

    def broken(it: object) -> str:
        raise RuntimeError("planted hook failure")

    monkeypatch.setattr(torch_hooks, "_loader_name", broken)
    model = Inner()
    seen = 0
    with gpuwatch.watch(tmp_path / "run") as gw:
        for x, _ in loader():
            model(x)
            seen += 1
            gw.step()
    assert seen == 8
    _, writers = read(tmp_path / "run")
    note = writers[0].notes["hook_error:dataloader"]
    assert "planted hook failure" in note["message"] and note["count"] == 9
    notes = summarize(analyze_run(tmp_path / "run")).to_json()["notes"]
    assert any("planted hook failure" in n and "(x9)" in n for n in notes)


def test_multiprocess_dataloader_workers_stay_quiet(tmp_path: Path) -> None:
    """Forked workers inherit the patched classes; only the training process records."""
    with gpuwatch.watch(tmp_path / "run") as gw:
        for _ in loader(n=48, workers=2):
            gw.step()
    rows, writers = read(tmp_path / "run")
    assert len(writers) == 1
    assert sum(r["name"] == "DataLoader.__next__ (num_workers=2)" for r in rows) == 7
    first = next(r for r in rows if r["name"].startswith("DataLoader.__next__"))
    assert first["attrs"]["num_workers"] == 2


def test_profiler_window_is_imported_onto_the_watch_timeline(tmp_path: Path) -> None:
    model = Inner()
    step_bounds = []
    with gpuwatch.watch(tmp_path / "run", profile_steps=(2, 4), sample_hz=0) as gw:
        for step in range(6):
            t0 = time.time_ns()
            model(torch.randn(64, 16)).sum().backward()
            busy(0.005)
            gw.step()
            step_bounds.append((step, t0, time.time_ns()))
    assert (tmp_path / "run" / "profiles" / "rank0000-steps-2-4.json.gz").exists()
    rows, writers = read(tmp_path / "run")
    anchor = writers[0].run.started_at_unix_ns
    ops = [r for r in rows if r["kind"] == "cpu_op" and r["name"].startswith("aten::")]
    assert ops, {k: v for k, v in writers[0].notes.items() if "nvml" not in k}
    lo = next(t0 for s, t0, _ in step_bounds if s == 2) - anchor
    hi = next(t1 for s, _, t1 in step_bounds if s == 3) - anchor
    # imported operators land inside the profiled steps, on the training thread (2 ms of slack for clocks)
    assert all(lo - 2e6 <= r["start_ns"] and r["end_ns"] <= hi + 2e6 for r in ops)
    assert {r["tid"] for r in ops} == {threading.get_native_id()}
    assert sum(r["kind"] == "step" for r in rows) == 6  # the profiler's own step markers are not steps
    assert "profiler_window" in writers[0].notes


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    with gpuwatch.watch(tmp_path / "run", max_queue=20, flush_interval_s=30, sample_hz=0) as gw:
        for _ in range(50):
            with gpuwatch.span("tiny", category="host_overhead"):
                pass
        gw.step()
    _, writers = read(tmp_path / "run")
    assert writers[0].dropped_spans >= 30
    assert any("dropped" in n for n in summarize(analyze_run(tmp_path / "run")).to_json()["notes"])


def test_rank_from_environment_and_steps_on_another_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    tids = []

    def train(gw: gpuwatch.Watcher) -> None:
        tids.append(threading.get_native_id())
        for _ in range(3):
            with gpuwatch.span("work", category="cpu_preprocessing"):
                busy(0.002)
            gw.step()

    with gpuwatch.watch(tmp_path / "run", sample_hz=0) as gw:
        worker = threading.Thread(target=train, args=(gw,))
        worker.start()
        worker.join()
    assert [p.name.split("-")[0] for p in (tmp_path / "run").iterdir() if p.is_dir()] == ["rank0003"]
    reader = RunReader(tmp_path / "run")
    try:
        assert reader.writers[0].run.world_size == 4
        steps = reader.span_columns(3, with_attrs=False)
        assert set(np.unique(steps.tid[steps.kind == "step"]).tolist()) == set(tids)
    finally:
        reader.close()


def test_a_watcher_made_directly_collects_with_the_default_config(tmp_path: Path) -> None:
    """`gpuwatch.Watcher(dir).start()` (an exported name) runs with `WatchConfig`'s defaults, as `watch()`
    does, and its run's summary has the steps; keywords override a config, and a misspelt one is refused."""
    model = Inner()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gw = gpuwatch.Watcher(tmp_path / "run").start()
    assert not [w for w in caught if "gpuwatch" in str(w.message)]
    assert gw.enabled and gw.config == gpuwatch.WatchConfig()
    for x, y in loader(n=32):
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        gw.step()
    gw.close()
    assert not gw.enabled
    done = run_cli("summary", tmp_path / "run", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ranks"][0]["steps"] == 4
    assert summary["ranks"][0]["budget_pct"]["compute"] > 0

    config = gpuwatch.WatchConfig(sample_hz=0)
    assert gpuwatch.Watcher(tmp_path / "x", config, max_queue=10).config == gpuwatch.WatchConfig(
        sample_hz=0, max_queue=10
    )
    with pytest.raises(TypeError):
        gpuwatch.Watcher(tmp_path / "x", sample_rate_hz=10)
    with pytest.raises(TypeError):
        gpuwatch.WatchConfig(None, 10.0)  # type: ignore[misc]  # keyword-only
    assert not (tmp_path / "x").exists()  # a watcher writes nothing before it starts


def test_a_watch_that_cannot_start_warns_and_the_loop_runs(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="not collecting"):
        with gpuwatch.watch(blocker / "run") as gw:
            for _ in range(3):
                gw.step()
    assert not gw.enabled
    with gpuwatch.watch(tmp_path / "run", sample_hz=0) as outer:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with gpuwatch.watch(tmp_path / "other") as inner:
                inner.step()
        assert any("already running" in str(w.message) for w in caught)
        outer.step()
    assert not (tmp_path / "other").exists()


def test_short_pure_python_gaps_are_explained_by_probes(tmp_path: Path) -> None:
    """A sampling thread rarely gets the GIL during a few ms of pure Python (it waits for the switch interval
    while the loop runs on); the gap probe traces that gap once and its signature explains every step."""
    model = Inner()
    data = TensorDataset(torch.randn(8 * 25, 16), torch.randn(8 * 25, 16))

    class SlowReads(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            time.sleep(0.002)  # releases the GIL: the sampler gets it here, inside a hooked region
            return data[i]

    python_s = 0.0
    total_s = 0.0
    with gpuwatch.watch(tmp_path / "run") as gw:
        t_step = time.perf_counter()
        for x, y in DataLoader(SlowReads(), batch_size=8):
            torch.nn.functional.mse_loss(model(x), y).backward()
            t0 = time.perf_counter()
            n = 0
            while time.perf_counter() - t0 < 0.004:  # bookkeeping in pure Python, never releasing the GIL
                n += sum(range(200))
            python_s += time.perf_counter() - t0
            now = time.perf_counter()
            total_s += now - t_step
            gw.step()
            t_step = time.perf_counter()
            total_s += t_step - now
    doc = summarize(analyze_run(tmp_path / "run")).to_json()["ranks"][0]
    truth_pct = 100 * python_s / total_s
    assert doc["budget_pct"]["host_overhead"] == pytest.approx(truth_pct, abs=3.0)
    assert any(
        e["name"] == "test_watch_api.py:test_short_pure_python_gaps_are_explained_by_probes"
        for e in doc["evidence"]
    )
    _, writers = read(tmp_path / "run")
    assert writers[0].run.meta["stack_probes"] >= 1


def test_stack_classification_of_real_frames() -> None:
    import sys as _sys

    from collectors.hooks.stack_sampler import StackSampler

    def decode_jpeg_batch() -> object:
        return _sys._getframe()

    def log_progress() -> object:
        return _sys._getframe()

    assert StackSampler.classify(decode_jpeg_batch()) == ("cpu_preprocessing", "decode/augment (by name)")
    category, label = StackSampler.classify(log_progress())
    assert category == "host_overhead" and label == "test_watch_api.py:log_progress"
    assert StackSampler.classify(_sys._getframe())[0] == "host_overhead"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_phases_copies_and_syncs_become_device_and_memcpy_spans(tmp_path: Path) -> None:
    model = Inner().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = TensorDataset(torch.randn(64, 16), torch.randn(64, 16))
    with gpuwatch.watch(tmp_path / "run") as gw:
        for x, y in DataLoader(data, batch_size=8, pin_memory=True):
            x, y = x.cuda(non_blocking=True), y.to("cuda", non_blocking=True)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            loss.item()
            gw.step()
    rows, _ = read(tmp_path / "run")
    device = [r for r in rows if r["kind"] == "kernel"]
    assert {r["name"] for r in device} >= {"forward Inner", "backward", "optimizer SGD.step"}
    assert all(r["tid"] == 0 and r["end_ns"] >= r["start_ns"] for r in device)
    copies = [r for r in rows if r["kind"] == "memcpy"]
    assert len(copies) == 16 and all(r["attrs"]["direction"] == "h2d" for r in copies)
    assert sum(r["name"] == "Tensor.item (device sync)" for r in rows) == 8
    assert summarize(analyze_run(tmp_path / "run")).to_json()["ranks"][0]["mode"] == "device"


def test_torch_compile_is_not_recompiled_or_broken_by_the_hooks(tmp_path: Path) -> None:
    """Module hooks that appear or disappear change torch.compile's guards (a recompile, minutes on a big
    model): once compiled code exists the hooks stay as they are, and inside compiled code they step aside."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    def train(watched: bool) -> tuple[int, int]:
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        compiled = torch.compile(Inner(), backend="eager")
        watcher = gpuwatch.watch(tmp_path / "run", sample_hz=0) if watched else None
        gw = watcher.start() if watcher is not None else None
        for _ in range(12):  # past step 10, where eager runs would look for new modules again
            compiled(torch.randn(4, 16)).sum().backward()
            if gw is not None:
                gw.step()
        if watcher is not None:
            watcher.close()
        return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())

    assert train(watched=True) == train(watched=False)
    rows, writers = read(tmp_path / "run")
    assert sum(r["name"] == "forward OptimizedModule(Inner)" for r in rows) == 12, {r["name"] for r in rows}
    assert "torch_compile" in writers[0].notes


def test_safetensors_saves_and_loads_are_checkpoint_io(tmp_path: Path) -> None:
    """safetensors imported after the watch started: wrapped at the next step boundary."""
    with gpuwatch.watch(tmp_path / "run", sample_hz=0) as gw:
        gw.step()
        st = pytest.importorskip("safetensors.torch")
        gw.step()  # the boundary where newly imported checkpoint libraries get wrapped
        path = tmp_path / "w.safetensors"
        st.save_file({"w": torch.randn(256, 256)}, str(path))
        assert st.load_file(str(path))["w"].shape == (256, 256)
        gw.step()
    rows, _ = read(tmp_path / "run")
    ckpt = {r["name"]: r for r in rows if r["category"] == "checkpoint_io"}
    assert set(ckpt) == {"safetensors.save_file", "safetensors.load_file"}
    assert ckpt["safetensors.save_file"]["attrs"]["path"] == str(path)


def test_watches_one_after_another_leave_no_file_open(tmp_path: Path) -> None:
    """A watch per notebook cell: each one's files (segments, the training thread's /proc clock) close."""
    import os

    fds = set(os.listdir("/proc/self/fd"))
    for i in range(5):
        with gpuwatch.watch(tmp_path / f"run{i}") as gw:
            gw.step()
    assert set(os.listdir("/proc/self/fd")) <= fds
