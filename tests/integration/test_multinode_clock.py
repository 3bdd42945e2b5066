"""Two torchrun agents (`--nnodes 2`, c10d rendezvous on 127.0.0.1, one gloo rank each) as two "nodes",
one with a planted clock skew (gpuwatch's test-only GPUWATCH_TEST_CLOCK_OFFSET_NS): the offset estimated
from matched collectives recovers it within 1 ms, and the cross-rank waits are those of the same job
without the skew (the same recorded job with the skew taken out of its anchor), within 2 percentage points.
The same job run again without a skew shows two clocks that agree (no offset invented)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, run_cli

from gpuwatch.store.run_reader import RunReader

PROGRAM = ROOT / "tests" / "support" / "multinode_program.py"
SKEW_NS = -20_000_000
"""The straggler's node clock runs 20 ms behind: more than its lateness, so unaligned it would look early."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_two_nodes(run_dir: Path, skew_ns: int) -> dict:
    port = free_port()
    procs = []
    for node in (0, 1):
        env = cli_env()
        env.pop("GPUWATCH_TEST_CLOCK_OFFSET_NS", None)
        if node == 1:  # the second agent's rank straggles, and its clock may be skewed
            env["MULTINODE_STRAGGLER"] = "1"
            if skew_ns:
                env["GPUWATCH_TEST_CLOCK_OFFSET_NS"] = str(skew_ns)
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nproc-per-node", "1",
            str(PROGRAM), str(run_dir),
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
    proc = run_cli("summary", run_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def straggler_rank(run_dir: Path) -> int:
    """The rank the second agent got (c10d assigns ranks in arrival order): its writer's command line says
    nothing, but its clock domain names its node."""
    reader = RunReader(run_dir)
    try:
        domains = {w.run.rank: w.run.meta.get("clock_domain", "") for w in reader.writers}
    finally:
        reader.close()
    assert len(set(domains.values())) == 2, domains  # two nodes, two clocks
    return next(r for r, d in domains.items() if d.endswith("/node1"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    base = tmp_path_factory.mktemp("multinode")
    out = {}
    for name, skew in (("truth", 0), ("skewed", SKEW_NS)):
        run_dir = base / name
        out[name] = (run_dir, run_two_nodes(run_dir, skew))
    return out


def test_the_planted_offset_is_recovered_within_1ms(runs: dict[str, tuple[Path, dict]]) -> None:
    run_dir, doc = runs["skewed"]
    late = straggler_rank(run_dir)
    offsets = {r["rank"]: r["clock_offset_ms"] for r in doc["ranks"]}
    other = next(r for r in offsets if r != late)
    recovered_ms = offsets[late] - offsets[other]
    assert recovered_ms == pytest.approx(SKEW_NS / 1e6, abs=1.0), offsets
    assert any(n.startswith("clocks:") for n in doc["notes"])
    _, truth = runs["truth"]
    assert all(abs(r["clock_offset_ms"]) < 1.0 for r in truth["ranks"])  # two clocks that agree


def unskewed_copy(run_dir: Path, dest: Path) -> Path:
    """The same recorded job with the planted skew taken out of the skewed writer's anchor."""
    shutil.copytree(run_dir, dest)
    (dest / "summary-cache.json").unlink(missing_ok=True)
    for writer in dest.glob("rank*/writer.json"):
        doc = json.loads(writer.read_text())
        skew = int(doc["meta"].pop("test_clock_offset_ns", 0))
        doc["started_at_unix_ns"] -= skew
        writer.write_text(json.dumps(doc))
    return dest


def test_cross_rank_waits_match_the_job_without_the_offset(
    runs: dict[str, tuple[Path, dict]], tmp_path: Path
) -> None:
    run_dir, skewed = runs["skewed"]
    late = straggler_rank(run_dir)
    proc = run_cli("summary", unskewed_copy(run_dir, tmp_path / "unskewed"), "--json")
    assert proc.returncode == 0, proc.stderr
    truth = json.loads(proc.stdout)
    assert all(abs(r["clock_offset_ms"]) < 1.0 for r in truth["ranks"])
    waits = {
        name: {r["rank"]: r["sync_split_pct"]["wait"] for r in doc["ranks"]}
        for name, doc in (("skewed", skewed), ("unskewed", truth))
    }
    other = next(r for r in waits["unskewed"] if r != late)
    assert waits["unskewed"][other] > 20  # the planted 12 ms of a ~22 ms step: the other rank really waits
    for rank in (late, other):
        assert waits["skewed"][rank] == pytest.approx(waits["unskewed"][rank], abs=2.0), waits
    assert skewed["straggler"]["rank"] == truth["straggler"]["rank"] == late
    # and the separate run without a skew tells the same story
    _, again = runs["truth"]
    assert again["straggler"]["rank"] == straggler_rank(runs["truth"][0])
