"""Kineto import on the real traces in ../shared/traces, checked against an independent stdlib parse of the
same files (json with exact decimals), and on synthetic traces for what real ones do not contain."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED_TRACES, run_cli, shared_trace_path, trace_files
from synthetic_kineto import planted_rank

from collectors.kineto.kineto_import import import_trace, import_traces
from gpuwatch.errors import TraceFormatError, UsageError

# What a span is, by the Kineto category of an 'X' event (lower-cased; old traces capitalize them).
HOST_CATS = {"cpu_op", "operator", "user_annotation", "python_function"}
RUNTIME_CATS = {"cuda_runtime", "runtime", "cuda_driver"}
DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset"}
# user ranges as a device stream saw them: spans on that stream (kind gpu_annotation), not device work
GPU_ANNOTATION_CATS = {"gpu_user_annotation"}


def raw_trace(path: Path) -> dict[str, Any]:
    """The trace as the stdlib reads it, with every number as an exact Decimal."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return json.loads(data, parse_float=Decimal, parse_int=Decimal)


def x_events(raw: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in raw["traceEvents"] if e.get("ph") == "X"]


def cat_of(e: dict[str, Any]) -> str:
    return str(e.get("cat") or "").lower()


@pytest.mark.parametrize("name", sorted(SHARED_TRACES))
def test_every_shared_trace_imports_every_span(name: str) -> None:
    for path in trace_files(shared_trace_path(name)):
        raw = raw_trace(path)
        xs = x_events(raw)
        imp = import_trace(path)
        cols = imp.spans
        want = Counter(
            "device"
            if cat_of(e) in DEVICE_CATS | GPU_ANNOTATION_CATS
            else "runtime"
            if cat_of(e) in RUNTIME_CATS
            else "host"
            for e in xs
            if cat_of(e) in HOST_CATS | RUNTIME_CATS | DEVICE_CATS | GPU_ANNOTATION_CATS
        )
        got = Counter(
            "device" if s >= 0 else "runtime" if k == "runtime" else "host"
            for s, k in zip(cols.stream.tolist(), cols.kind.tolist())
        )
        assert got == want, path
        assert imp.events_total == len(raw["traceEvents"])
        assert (cols.end_ns >= cols.start_ns).all() and (cols.start_ns >= 0).all()
        dist = raw.get("distributedInfo")
        if dist is not None:
            assert imp.rank == int(dist["rank"])
            if "world_size" in dist:
                assert imp.world_size == int(dist["world_size"])
        assert set(np.unique(cols.rank).tolist()) == {imp.rank}


def test_old_capitalized_categories() -> None:
    path = shared_trace_path("trace_file_list")
    raw = raw_trace(path)
    cats = Counter(e["cat"] for e in x_events(raw))
    assert cats["Kernel"] and cats["Runtime"]  # the old format this test is about
    cols = import_trace(path).spans
    assert int((cols.kind == "kernel").sum()) == cats["Kernel"]
    assert int((cols.kind == "runtime").sum()) == cats["Runtime"]


def test_float_sub_microsecond_timestamps_keep_nanoseconds() -> None:
    path = shared_trace_path("nccl_parser_config")
    raw = raw_trace(path)
    kernels = [e for e in x_events(raw) if cat_of(e) == "kernel"]
    assert any(e["ts"] != int(e["ts"]) for e in kernels)  # the trace really is sub-µs
    cols = import_trace(path).spans
    by_corr = {int(c): i for i, c in enumerate(cols.correlation.tolist()) if cols.stream[i] >= 0}
    first = min(kernels, key=lambda e: e["ts"])
    i0 = by_corr[int(first["args"]["correlation"])]
    checked = 0
    for e in kernels[:400]:
        i = by_corr[int(e["args"]["correlation"])]
        assert int(cols.end_ns[i] - cols.start_ns[i]) == pytest.approx(float(e["dur"] * 1000), abs=1)
        want_gap_ns = (e["ts"] - first["ts"]) * 1000  # exact decimal arithmetic
        assert int(cols.start_ns[i] - cols.start_ns[i0]) == pytest.approx(float(want_gap_ns), abs=1)
        checked += 1
    assert checked >= 100
    assert (cols.start_ns % 1000 != 0).mean() > 0.5


def test_trace_without_profiler_steps_is_one_step(shared_runs) -> None:
    (path,) = trace_files(shared_trace_path("critical_path_alexnet"))
    raw = raw_trace(path)
    assert not any(str(e.get("name", "")).startswith("ProfilerStep") for e in raw["traceEvents"])
    from gpuwatch.attribution.analysis import analyze_run
    from gpuwatch.attribution.summary import summarize

    doc = summarize(analyze_run(shared_runs("critical_path_alexnet"))).to_json()
    (rank,) = doc["ranks"]
    assert rank["steps"] == 1 and rank["steps_from_markers"] is False
    assert sum(rank["budget_pct"].values()) == pytest.approx(100.0, abs=0.01)


def test_cpu_only_rank(shared_runs) -> None:
    (path,) = trace_files(shared_trace_path("cpu_only"))
    imp = import_trace(path)
    assert imp.rank == 34 and imp.world_size == 300 and imp.backend == "gloo"
    assert (imp.spans.stream < 0).all()
    from gpuwatch.attribution.analysis import analyze_run
    from gpuwatch.attribution.summary import summarize

    doc = summarize(analyze_run(shared_runs("cpu_only"))).to_json()
    (rank,) = doc["ranks"]
    assert rank["rank"] == 34 and rank["mode"] == "host" and rank["temporal_basis"] == "host"
    assert sum(rank["budget_pct"].values()) == pytest.approx(100.0, abs=0.01)


def test_rocm_trace_links_hip_launches_to_kernels() -> None:
    (path,) = trace_files(shared_trace_path("amd_trace"))
    raw = raw_trace(path)
    assert "distributedInfo" not in raw  # the missing-distributedInfo case too
    imp = import_trace(path)
    cols = imp.spans
    assert imp.rank == 0
    runtime = cols.kind == "runtime"
    assert any(n.startswith("hip") for n in cols.name[runtime].tolist())
    raw_kernels = [e for e in x_events(raw) if cat_of(e) == "kernel"]
    kernel_corr = {int(e["args"]["correlation"]) for e in raw_kernels}
    launch_corr = {int(e["args"]["correlation"]) for e in x_events(raw) if cat_of(e) == "cuda_runtime"}
    assert kernel_corr & launch_corr  # the trace links them ...
    got_kernels = set(cols.correlation[cols.kind == "kernel"].tolist())
    got_launches = set(cols.correlation[runtime].tolist())
    assert (
        got_kernels == kernel_corr and got_kernels & got_launches == kernel_corr & launch_corr
    )  # ... so do we


def test_rank_from_file_name_when_distributed_info_is_missing(tmp_path: Path) -> None:
    tr = planted_rank(1, distributed_info=False)
    a = tr.write(tmp_path / "job_rank3.pt.trace.json.gz")
    b = planted_rank(1, distributed_info=False).write(tmp_path / "job_rank11.pt.trace.json")
    ranks = sorted(t.rank for t in import_traces([str(a), str(b)]))
    assert ranks == [3, 11]


def test_nccl_metadata_is_kept() -> None:
    path = shared_trace_path("nccl_parser_config")
    raw = raw_trace(path)
    cols = import_trace(path).spans
    raw_nccl = [e for e in x_events(raw) if cat_of(e) == "kernel" and e["name"].startswith("nccl")]
    assert len(raw_nccl) > 10
    device_coll = (cols.kind == "collective") & (cols.stream >= 0)
    assert int(device_coll.sum()) == len(raw_nccl)
    by_corr = {int(cols.correlation[i]): i for i in np.flatnonzero(device_coll)}
    for e in raw_nccl:
        a = e["args"]
        i = by_corr[int(a["correlation"])]
        attrs = json.loads(cols.attrs[i])
        assert attrs["collective"] == a["Collective name"]
        assert attrs["in_nelems"] == a["In msg nelems"] and attrs["out_nelems"] == a["Out msg nelems"]
        assert attrs["group_size"] == a["Group size"] == 2
        assert attrs["process_group"] == a["Process Group Name"]
        assert attrs["dtype"] == a["dtype"]
        elem = {"Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4}[a["dtype"]]
        assert cols.bytes[i] == a["In msg nelems"] * elem
    # sequence numbers: the n-th collective of the group on this rank, in issue order
    order = np.argsort(cols.start_ns[device_coll], kind="stable")
    seqs = cols.seq[device_coll][order]
    assert seqs.tolist() == list(range(1, len(raw_nccl) + 1))
    # host side: record_param_comms calls carry the same metadata
    raw_host = [e for e in x_events(raw) if e["name"] == "record_param_comms"]
    host_coll = (cols.kind == "collective") & (cols.stream < 0)
    assert int(host_coll.sum()) == len(raw_host) > 0
    got = Counter(json.loads(s)["collective"] for s in cols.attrs[host_coll].tolist())
    assert got == Counter(e["args"]["Collective name"] for e in raw_host)


@pytest.mark.parametrize("name", ["nccl_parser_config", "trace_diff_control", "trace_filter"])
def test_cpu_gpu_correlation_is_kept(name: str) -> None:
    for path in trace_files(shared_trace_path(name)):
        raw = raw_trace(path)
        xs = x_events(raw)
        want_dev = Counter(int(e["args"]["correlation"]) for e in xs if cat_of(e) in DEVICE_CATS)
        want_rt = {int(e["args"]["correlation"]) for e in xs if cat_of(e) in RUNTIME_CATS}
        cols = import_trace(path).spans
        dev = (cols.stream >= 0) & (cols.kind != "gpu_annotation")
        assert Counter(cols.correlation[dev].tolist()) == want_dev
        linked = np.isin(cols.correlation[dev], np.array(sorted(want_rt)))
        assert linked.mean() == pytest.approx(sum(want_dev[c] for c in want_rt) / sum(want_dev.values()))
        assert linked.mean() > 0.9


def test_directory_of_ranks_keeps_each_rank(shared_runs) -> None:
    path = shared_trace_path("trace_filter")
    got = sorted((t.rank, t.world_size) for t in import_traces([str(path)]))
    assert [r for r, _ in got] == [0, 1]
    control = import_trace(shared_trace_path("trace_diff_control"))
    assert (control.rank, control.world_size) == (3, 8)


def test_unknown_event_kinds_are_skipped_and_counted(tmp_path: Path) -> None:
    tr = planted_rank(2)
    tr.add_unknown_events(6, 200_000)
    path = tr.write(tmp_path / "trace.json.gz")
    imp = import_trace(path)
    assert sum(imp.skipped.values()) == tr.unknown_events == 6
    assert any("vendor_magic_counter" in k for k in imp.skipped) and any("'Z'" in k for k in imp.skipped)
    proc = run_cli("import", path, "--out", tmp_path / "run", "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert "6 events of unknown kinds skipped" in proc.stderr
    assert "vendor_magic_counter" in proc.stderr


def test_two_files_claiming_one_rank_is_a_usage_error(tmp_path: Path) -> None:
    a = planted_rank(1, rank=2, world_size=4).write(tmp_path / "a.json")
    b = planted_rank(1, rank=2, world_size=4).write(tmp_path / "b.json")
    with pytest.raises(UsageError, match="two traces claim rank 2"):
        import_traces([str(a), str(b)])


def test_int_and_float_timestamps_give_the_same_spans(tmp_path: Path) -> None:
    """The same planted trace written with integer µs and with float µs imports to the same nanoseconds."""
    a = planted_rank(2, float_ts=False, origin_us=1_661_203_462_598_738).write(tmp_path / "int.json")
    b = planted_rank(2, float_ts=True).write(tmp_path / "float.json")
    ca, cb = import_trace(a).spans, import_trace(b).spans
    assert len(ca) == len(cb)
    oa, ob = np.lexsort((ca.end_ns, ca.start_ns)), np.lexsort((cb.end_ns, cb.start_ns))
    # float traces carry a sub-µs phase (304 ns) that the importer keeps
    assert ((cb.start_ns[ob] - cb.start_ns[ob].min()) == (ca.start_ns[oa] - ca.start_ns[oa].min())).all()
    assert ((cb.end_ns - cb.start_ns)[ob] == (ca.end_ns - ca.start_ns)[oa]).all()


def _same_columns(a, b) -> None:
    for name in ("rank", "pid", "tid", "stream", "device_index", "start_ns", "end_ns", "step", "bytes",
                 "correlation", "seq"):  # fmt: skip
        assert (getattr(a, name) == getattr(b, name)).all(), name
    for name in ("kind", "category", "name", "attrs"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name


def test_chunked_decode_equals_one_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events are decoded a few MB at a time; cutting the array anywhere must change nothing, including
    next to args that hold arrays of objects (where a naive cut between `}, {"` would land)."""
    import collectors.kineto.kineto_import as ki

    tr = planted_rank(3, realistic=True)
    tricky = {"groups": [{"a": 1}, {"b": 2}], "text": 'a}, {"b'}
    for k in range(0, len(tr.events), 40):
        ev = tr.events[k]
        if ev.get("cat") == "cpu_op":
            ev["args"].update(tricky)
    path = tr.write(tmp_path / "t.json")
    whole = import_trace(path)  # small: decoded in one pass, events with the top level
    monkeypatch.setattr(ki, "_ONE_PASS_BYTES", 0)
    events = ki._decode(path, path.read_bytes())[1]
    for size in (257, 1000, 5000, 40_000):
        monkeypatch.setattr(ki, "_CHUNK_BYTES", size)
        try:
            chunks = list(ki._event_chunks(events))
            assert len(chunks) > 1 and sum(map(len, chunks)) == whole.events_total
        except ki._BadCut:
            pass  # a cut landed inside an event: import_trace decodes in one piece instead
        got = import_trace(path)
        assert got.events_total == whole.events_total
        _same_columns(got.spans, whole.spans)


def test_large_trace_top_level_around_the_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large trace is read without a pass that only skips its events: the keys before the event array are
    decoded on their own, those after it with the last chunk. Where those keys sit, a key name inside a
    string, or `}, {"` after the array must change nothing; a broken document still fails as invalid."""
    import collectors.kineto.kineto_import as ki

    tr = planted_rank(3, realistic=True, rank=1, world_size=4)
    doc = json.loads(tr.write(tmp_path / "plain.json").read_text())
    events = doc.pop("traceEvents")
    reference = import_trace(tmp_path / "plain.json")
    assert reference.rank == 1
    header = {k: v for k, v in doc.items() if k != "distributedInfo"}
    after = {"distributedInfo": doc["distributedInfo"], "deviceProperties": [{"id": 0}, {"id": 1}]}
    layouts = {
        "after": {**header, "note": '"traceEvents": [', "traceEvents": events, **after},
        "before": {**doc, "traceEvents": events, "traceName": "x"},
    }
    monkeypatch.setattr(ki, "_ONE_PASS_BYTES", 0)
    monkeypatch.setattr(ki, "_CHUNK_BYTES", 3000)
    for label, layout in layouts.items():
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(layout))
        got = import_trace(path)
        assert (got.rank, got.world_size, got.events_total) == (
            1,
            reference.world_size,
            reference.events_total,
        )
        _same_columns(got.spans, reference.spans)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(layouts["before"])[:-1] + ', "x": }')
    with pytest.raises(ki.TraceFormatError, match="not valid JSON"):
        import_trace(broken)


def test_chunked_decode_of_a_real_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    import collectors.kineto.kineto_import as ki

    path = shared_trace_path("nccl_parser_config")
    whole = import_trace(path)
    monkeypatch.setattr(ki, "_ONE_PASS_BYTES", 0)
    monkeypatch.setattr(ki, "_CHUNK_BYTES", 100_000)
    events = ki._decode(path, ki.read_trace_bytes(path))[1]
    assert len(list(ki._event_chunks(events))) > 50
    _same_columns(import_trace(path).spans, whole.spans)


def test_odd_but_valid_events_take_the_lenient_paths(tmp_path: Path) -> None:
    """Chrome traces from other producers: string pids/tids, null args, string correlation ids, missing
    durations, non-numeric timestamps (skipped and counted), numeric names. Nothing is fatal."""
    events = [
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "pid": "host", "tid": "main",
         "ts": 100, "dur": 1000},
        {"ph": "X", "cat": "cpu_op", "name": 42, "pid": "host", "tid": "main", "ts": 150, "args": None},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": "host", "tid": "main",
         "ts": 200, "dur": 5, "args": {"correlation": "77"}},
        {"ph": "X", "cat": "kernel", "name": "gemm", "pid": "GPU 0", "tid": "stream 7", "ts": 210.5,
         "dur": 50.25, "args": {"correlation": "77", "device": "0"}},
        {"ph": "X", "cat": "kernel", "name": "gemm2", "pid": 0, "tid": 7, "ts": 300, "dur": 10, "args": None},
        {"ph": "X", "cat": "kernel", "name": "ncclKernel_odd", "pid": 0, "tid": 9, "ts": 320, "dur": 1,
         "args": [1, 2]},
        {"ph": "X", "cat": "cpu_op", "name": "record_param_comms", "pid": "host", "tid": "main", "ts": 330,
         "dur": 1, "args": "not an object"},
        {"ph": "X", "cat": "cpu_op", "name": "aten::bad_ts", "pid": "host", "tid": "main", "ts": None, "dur": 1},
        {"ph": "X", "cat": "cpu_op", "name": "aten::str_ts", "pid": "host", "tid": "main", "ts": "soon"},
    ]  # fmt: skip
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"traceEvents": events}))
    imp = import_trace(path)
    cols = imp.spans
    assert len(cols) == 7 and imp.skipped == {"no numeric timestamp": 2}
    order = np.argsort(cols.start_ns, kind="stable")
    assert cols.name[order].tolist()[:5] == ["ProfilerStep#1", "42", "cudaLaunchKernel", "gemm", "gemm2"]
    assert cols.kind[order].tolist() == [
        "step",
        "cpu_op",
        "runtime",
        "kernel",
        "kernel",
        "collective",
        "collective",
    ]
    k = order[3]
    assert cols.correlation[k] == 77 and cols.device_index[k] == 0 and cols.stream[k] == 7  # "stream 7"
    assert (
        cols.end_ns[k] - cols.start_ns[k] == 50_250 and cols.start_ns[k] - cols.start_ns[order[0]] == 110_500
    )
    assert cols.stream[order[4]] == 7 and cols.device_index[order[4]] == 0  # stream/device from tid/pid
    assert cols.end_ns[order[1]] == cols.start_ns[order[1]]  # no dur: an instant
    from gpuwatch.attribution.budget import compute_rank_budget

    budget = compute_rank_budget(0, cols)
    assert budget.mode == "device" and budget.step_category_ns.sum() == 1_000_000
    compute = budget.step_category_ns[0][0]
    assert compute == 50_250 + 10_000  # both kernels are device work, whatever their ids looked like


@pytest.mark.parametrize("trace", ["nccl_parser_config", "trace_filter", "cpu_only", "trace_file_list"])
def test_kind_and_category_codes_name_the_columns(trace: str) -> None:
    """The importer hands the engine its kinds and categories as codes too; they must say exactly what the
    object columns say (the engine reads the codes, the store writes the columns)."""
    from gpuwatch.records import CATEGORY_OR_NONE, SPAN_KINDS

    for res in import_traces([str(shared_trace_path(trace))]):
        cols = res.spans
        assert cols.kind_code is not None and cols.category_code is not None
        assert [SPAN_KINDS[k] for k in cols.kind_code.tolist()] == cols.kind.tolist()
        assert [CATEGORY_OR_NONE[c] for c in cols.category_code.tolist()] == cols.category.tolist()


def test_ranks_imported_in_parallel_equal_the_sequential_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large multi-rank imports run one worker process per core. What comes back must equal the one-process
    import, ranks included: from distributedInfo, from the file name, or from the file's order, which a
    non-trace file before it must not shift (it does not in one process)."""
    import shutil

    import collectors.kineto.parallel_import as par

    folder = tmp_path / "job"
    folder.mkdir()
    for p in trace_files(shared_trace_path("trace_filter")):
        shutil.copy(p, folder / p.name)
    (folder / "a_config.json").write_text('{"lr": 0.1}')  # sorted first: valid JSON, no trace
    tr = planted_rank(2, realistic=True, distributed_info=False)
    tr.write(folder / "z_no_rank.json")  # rank from its order among the traces
    sequential = import_traces([str(folder)], on_skip=lambda *_: None)
    assert [r.rank_source for r in sequential] == ["trace", "trace", "order"]
    monkeypatch.setattr(par, "PARALLEL_MIN_BYTES", 0)
    assert par.worker_count(trace_files(folder)) == 2 or (os.cpu_count() or 1) < 2
    skipped: list[Path] = []
    parallel = import_traces([str(folder)], on_skip=lambda path, why: skipped.append(path))
    assert skipped == [folder / "a_config.json"]
    assert [(r.path, r.rank, r.world_size, r.rank_source) for r in parallel] == [
        (r.path, r.rank, r.world_size, r.rank_source) for r in sequential
    ]
    for a, b in zip(parallel, sequential, strict=True):
        _same_columns(a.spans, b.spans)
    with pytest.raises(UsageError, match="no such file"):
        import_traces([str(folder / "missing.json")])


def test_a_worker_that_cannot_run_leaves_the_import_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No usable worker interpreter (an embedded Python whose sys.executable is not python): the traces are
    imported here instead, and a corrupt one still fails as it would."""
    import collectors.kineto.parallel_import as par

    folder = tmp_path / "job"
    folder.mkdir()
    for rank in (0, 1):
        planted_rank(2, realistic=True, rank=rank, world_size=2).write(folder / f"rank{rank}.json")
    monkeypatch.setattr(par, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(par.sys, "executable", "/bin/false")
    got = import_traces([str(folder)])
    assert [r.rank for r in got] == [0, 1]
    (folder / "rank1.json").write_text('{"traceEvents": [')
    with pytest.raises(TraceFormatError, match="not valid JSON"):
        import_traces([str(folder)])


def _same_name_codes(a, b) -> None:
    """Equal names share a code in both, unequal ones do not (the numbers themselves may differ)."""
    pairs = set(zip(a.name_code.tolist(), b.name_code.tolist()))
    assert len({x for x, _ in pairs}) == len({y for _, y in pairs}) == len(pairs)


def test_split_read_equals_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large trace read half here and half in a forked child gives exactly the one-process import: the
    keys after the event array (read by the child), names first seen in either half, collectives' args
    (their indices shift by the first half's spans). Args holding arrays of objects (where a cut between
    `}, {"` lands inside an event) send it back to one process, with the same result."""
    import collectors.kineto.kineto_import as ki
    import collectors.kineto.split_import as si

    def trace_with(extra_args: dict[str, Any], name: str) -> Path:
        tr = planted_rank(3, realistic=True, rank=1, world_size=4)
        for k in range(0, len(tr.events), 40):
            if tr.events[k].get("cat") == "cpu_op":
                tr.events[k]["args"].update(extra_args)
        last = tr.events[-1]
        tr.events.append({"ph": "X", "cat": "cpu_op", "name": "only_in_the_second_half", "pid": last["pid"],
                          "tid": last["tid"], "ts": last["ts"], "dur": 1, "args": {}})  # fmt: skip
        doc = json.loads(tr.write(tmp_path / f"{name}-as-written.json").read_text())
        events = doc.pop("traceEvents")
        path = tmp_path / f"{name}.json"
        after = {k: doc.pop(k) for k in ("distributedInfo", "baseTimeNanoseconds")}  # read by the child
        path.write_text(json.dumps({**doc, "traceEvents": events, **after}))
        return path

    plain = trace_with({"text": 'a}, {"b'}, "plain")
    tricky = trace_with({"groups": [{"a": 1}, {"b": 2}]}, "tricky")
    references = {p: import_trace(p) for p in (plain, tricky)}
    monkeypatch.setattr(si, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(ki, "_CHUNK_BYTES", 5000)
    assert si.can_split(), "needs fork, two cores and no other thread"
    assert si.read_split(plain.read_bytes()) is not None
    assert len(ki._chunk_bounds(ki._split_top(plain.read_bytes())[1])) > 4
    assert si.read_split(tricky.read_bytes()) is None  # a cut inside an event: one process reads it
    for path, reference in references.items():
        got = import_trace(path, split=True)
        assert (got.rank, got.world_size, got.events_total, got.skipped) == (
            1, 4, reference.events_total, reference.skipped,
        )  # fmt: skip
        assert got.thread_names == reference.thread_names
        _same_columns(got.spans, reference.spans)
        _same_name_codes(got.spans, reference.spans)
        assert "only_in_the_second_half" in got.spans.name.tolist()
        assert (got.spans.kind == "collective").sum() == (reference.spans.kind == "collective").sum() > 0


def test_a_split_read_whose_child_fails_is_read_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's half fails (here: its decoder raises): the trace is read again in this process, whole, and
    no child is left behind; a bad cut in this process's half does the same."""
    import collectors.kineto.kineto_import as ki
    import collectors.kineto.split_import as si

    path = planted_rank(2, realistic=True).write(tmp_path / "t.json")
    reference = import_trace(path)
    monkeypatch.setattr(si, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(ki, "_CHUNK_BYTES", 5000)
    parent, real_chunks = os.getpid(), si._event_chunks

    def failing_in(who: str):  # type: ignore[no-untyped-def]
        def chunks(*args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
            if (os.getpid() == parent) == (who == "parent"):
                raise ki._BadCut() if who == "parent" else MemoryError("planted")
            return real_chunks(*args, **kwargs)

        return chunks

    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    for who in ("child", "parent"):
        monkeypatch.setattr(si, "_event_chunks", failing_in(who))
        forked.clear()
        monkeypatch.setattr(os, "fork", fork)
        assert si.read_split(path.read_bytes()) is None, who
        monkeypatch.setattr(os, "fork", real_fork)
        assert len(forked) == 1
        with pytest.raises(ChildProcessError):
            os.waitpid(forked[0], os.WNOHANG)  # the split's child is gone and reaped, not left running
        got = import_trace(path, split=True)
        _same_columns(got.spans, reference.spans)


def test_a_split_read_that_cannot_fork_is_read_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No child can be started (EAGAIN, ENOMEM): the trace is read in one process, and the pipe meant for the
    child is closed, not leaked."""
    import errno

    import collectors.kineto.kineto_import as ki
    import collectors.kineto.split_import as si

    path = planted_rank(2, realistic=True).write(tmp_path / "t.json")
    reference = import_trace(path)
    monkeypatch.setattr(si, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(ki, "_CHUNK_BYTES", 5000)

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    fds = len(os.listdir("/proc/self/fd"))
    assert si.read_split(path.read_bytes()) is None
    assert len(os.listdir("/proc/self/fd")) == fds
    _same_columns(import_trace(path, split=True).spans, reference.spans)


def test_split_read_of_a_real_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    import collectors.kineto.kineto_import as ki
    import collectors.kineto.split_import as si

    path = shared_trace_path("nccl_parser_config")
    whole = import_trace(path)
    monkeypatch.setattr(si, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(ki, "_CHUNK_BYTES", 100_000)
    assert si.read_split(ki.read_trace_bytes(path)) is not None
    got = import_trace(path, split=True)
    assert got.events_total == whole.events_total and got.thread_names == whole.thread_names
    _same_columns(got.spans, whole.spans)
    _same_name_codes(got.spans, whole.spans)


def test_the_import_command_splits_large_traces(tmp_path: Path) -> None:
    """`gpuwatch import` of one large trace takes the split read (made to split a small one here), and its
    run reads as the run of a one-process import."""
    import sys

    from conftest import ROOT, run_program, summary_json

    path = shared_trace_path("nccl_parser_config")
    assert run_cli("import", path, "--out", tmp_path / "plain").returncode == 0
    code = (
        "import sys\n"
        "import collectors.kineto.kineto_import as ki, collectors.kineto.split_import as si\n"
        "si.SPLIT_MIN_BYTES, ki._CHUNK_BYTES, real = 0, 100_000, si.read_split\n"
        "def spy(data, after=None):\n"
        "    read = real(data, after)\n"
        "    print('split' if read is not None else 'not split', file=sys.stderr)\n"
        "    return read\n"
        "si.read_split = spy\n"
        "sys.argv = ['gpuwatch', 'import', sys.argv[1], '--out', sys.argv[2]]\n"
        "from gpuwatch.cli import console_main; console_main()\n"
    )
    proc = run_program([sys.executable, "-c", code, path, tmp_path / "split"], cwd=ROOT)
    assert proc.returncode == 0 and proc.stderr.startswith("split\n"), proc.stderr
    plain, split = summary_json(tmp_path / "plain"), summary_json(tmp_path / "split")
    for a, b in zip(plain["ranks"], split["ranks"], strict=True):
        assert a["budget_pct"] == b["budget_pct"] and a["steps"] == b["steps"]


def _four_ranks(tmp_path: Path) -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    for rank in range(4):
        planted_rank(2, realistic=True, rank=rank, world_size=4).write(folder / f"rank{rank}.json")
    return folder


def test_a_worker_imports_file_after_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers, four files: each worker process is started once and goes on to the next file."""
    import collectors.kineto.parallel_import as par

    folder = _four_ranks(tmp_path)
    sequential = import_traces([str(folder)])
    monkeypatch.setattr(par, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(par, "worker_count", lambda files: 2)
    started: list[Any] = []
    real_start = par._Worker.start

    def start(live):  # type: ignore[no-untyped-def]
        worker = real_start(live)
        started.append(worker.proc)
        return worker

    monkeypatch.setattr(par._Worker, "start", staticmethod(start))
    parallel = import_traces([str(folder)])
    assert [r.rank for r in parallel] == [0, 1, 2, 3]
    for a, b in zip(parallel, sequential, strict=True):
        _same_columns(a.spans, b.spans)
    assert len(started) == 2
    assert all(proc.returncode == 0 for proc in started)  # each left at the end of its input, reaped


def test_a_worker_that_dies_leaves_its_file_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed in the middle of a file (here: it exits on rank1.json): that file is imported here,
    the next one gets a new worker, and the result is the sequential import's."""
    import collectors.kineto.parallel_import as par

    folder = _four_ranks(tmp_path)
    sequential = import_traces([str(folder)])
    monkeypatch.setattr(par, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(par, "worker_count", lambda files: 2)
    monkeypatch.setattr(
        par,
        "_WORKER",
        "import json, os, sys\n"
        "sys.path[:0] = json.loads(sys.argv[1])\n"
        "import collectors.kineto.parallel_import as p\n"
        "real = p._import_here\n"
        "p._import_here = lambda path, r: os._exit(9) if path.name == 'rank1.json' else real(path, r)\n"
        "p.worker_main()\n",
    )
    here: list[str] = []
    real_here = par._import_here
    monkeypatch.setattr(par, "_import_here", lambda path, r: here.append(path.name) or real_here(path, r))
    parallel = import_traces([str(folder)])
    assert here == ["rank1.json"]
    for a, b in zip(parallel, sequential, strict=True):
        assert a.rank == b.rank
        _same_columns(a.spans, b.spans)


def _identical_columns(a: Any, b: Any) -> None:
    from gpuwatch.records import SpanColumns

    for name in SpanColumns.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tolist() == y.tolist(), name


@pytest.mark.parametrize("name", sorted(SHARED_TRACES))
def test_imported_columns_pickle_back_equal_through_their_codes(name: str) -> None:
    """An import's columns cross to the writer process and back from a parallel worker pickled: the string
    columns go as codes (SpanColumns.__reduce__) and must come back equal, string for string, None for None."""
    import dataclasses
    import pickle

    for path in trace_files(shared_trace_path(name)):
        cols = import_trace(path).spans
        packed = pickle.dumps(cols, protocol=5)
        _identical_columns(pickle.loads(packed), cols)
        # the same columns as a plain dict pickle their object arrays whole, a memo reference per span each
        plain = {f: getattr(cols, f) for f in type(cols).__dataclass_fields__}
        if len(cols) >= 1000:
            assert len(packed) < len(pickle.dumps(plain, protocol=5)) - len(cols), path
        # without codes, the object columns are pickled whole, and still come back equal
        whole = dataclasses.replace(cols, name_code=None, kind_code=None, category_code=None)
        _identical_columns(pickle.loads(pickle.dumps(whole, protocol=5)), whole)


def test_columns_whose_codes_are_not_small_pickle_whole() -> None:
    """A name code far beyond the number of spans (a hash, say) is not a table index: the names go whole."""
    import pickle

    from gpuwatch.records import SpanColumns

    n = 4
    ints = np.arange(n, dtype=np.int64)
    names = np.array(["a", "b", None, "a"], dtype=object)
    cols = SpanColumns(
        rank=np.zeros(n, dtype=np.int32), pid=ints, tid=ints, stream=ints, device_index=np.zeros(n, np.int32),
        kind=np.array(["cpu_op"] * n, dtype=object), category=np.full(n, None, dtype=object), name=names,
        start_ns=ints, end_ns=ints + 1, step=ints, bytes=ints, correlation=ints, seq=ints,
        attrs=np.array([None, '{"x": 1}', None, None], dtype=object),
        name_code=np.array([7, 2**40, 9, 7], dtype=np.int64),
    )  # fmt: skip
    back = pickle.loads(pickle.dumps(cols, protocol=5))
    _identical_columns(back, cols)
