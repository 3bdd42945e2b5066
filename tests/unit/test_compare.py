"""`gpuwatch compare` against planted ground truth: noisy synthetic runs of one configuration never alarm,
a planted 10% step-time regression in one category is caught every time and named, the job view is steady
under rank imbalance, runs that cannot be compared are explained, and the three formats are what CI reads
(JUnit valid against the Surefire/Jenkins schema, Markdown tables as GFM parses them, JSON).

The runs are synthetic Kineto traces with planted stalls and planted noise (compare_support.noisy_trace),
imported through the real importer and budget engine: fast, so many pairs are affordable.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from compare_support import gfm_tables, import_run, noisy_trace, validate_junit
from conftest import run_cli

from gpuwatch.attribution.summary import CATEGORY_NAMES, Summary
from reports.compare import Outcome, Thresholds, Verdict, compare, render_junit, render_markdown

BASE_RUNS = 9  # 72 ordered pairs of repeated runs
REGRESSED_RUNS = 8


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Summary]:
    root = tmp_path_factory.mktemp("compare-base")
    return [import_run(noisy_trace(seed), root / f"b{seed}") for seed in range(BASE_RUNS)]


@pytest.fixture(scope="module")
def regressed_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Summary]]:
    root = tmp_path_factory.mktemp("compare-regressed")
    return {
        cat: [
            import_run(noisy_trace(100 + s, regress=cat), root / f"{cat}{s}") for s in range(REGRESSED_RUNS)
        ]
        for cat in ("data_loading", "checkpoint_io")
    }


def regressed_metrics(cmp) -> list[str]:
    return [c.metric for c in cmp.job_checks() if c.outcome is Outcome.REGRESSED]


def test_repeated_runs_of_one_configuration_never_alarm(base_runs: list[Summary]) -> None:
    alarms = []
    for a, b in itertools.permutations(range(BASE_RUNS), 2):
        cmp = compare(base_runs[a], base_runs[b])
        if cmp.verdict is not Verdict.PASS:
            alarms.append((a, b, regressed_metrics(cmp)))
    assert not alarms, alarms


@pytest.mark.parametrize(
    "category, region",
    [
        ("data_loading", "enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__"),
        ("checkpoint_io", "save_checkpoint"),
    ],
)
def test_planted_ten_percent_regression_is_caught_every_time(
    base_runs: list[Summary], regressed_runs: dict[str, list[Summary]], category: str, region: str
) -> None:
    for i, cand in enumerate(regressed_runs[category]):
        cmp = compare(base_runs[i % BASE_RUNS], cand)
        assert cmp.verdict is Verdict.REGRESSION and cmp.exit_code == 1
        named = regressed_metrics(cmp)
        assert category in named, named
        # only the planted category and what it necessarily moves (step time, compute's share)
        assert set(named) <= {category, "step_time", "compute_share"}, named
        check = cmp.job_check(category)
        assert check is not None and 5.0 < check.change < 15.0  # percent of the base step time
        assert any(e.category == category and e.name == region for e in cmp.evidence)


def test_the_fix_passes_and_shows_what_it_recovered(
    base_runs: list[Summary], regressed_runs: dict[str, list[Summary]]
) -> None:
    """The other way round (a regressed run as base, the healthy one as candidate): pass, improvement named."""
    cmp = compare(regressed_runs["data_loading"][0], base_runs[0])
    assert cmp.verdict is Verdict.PASS and cmp.exit_code == 0
    assert cmp.job_check("data_loading").outcome is Outcome.IMPROVED
    md = render_markdown(cmp)
    assert "**Improved:** " in md and "data_loading" in md.split("**Improved:** ")[1].split("\n")[0]


def test_same_runs_give_the_same_answer(base_runs: list[Summary]) -> None:
    a = compare(base_runs[0], base_runs[1]).to_json()
    b = compare(base_runs[0], base_runs[1]).to_json()
    assert a == b
    c = compare(base_runs[0], base_runs[1], Thresholds(seed=7)).to_json()
    assert c["checks"] != a["checks"]  # the seed is what makes it reproducible, not a constant interval


# ---- the job view, on hand-made per-step budgets -------------------------------------------------------


def summary_doc(ranks: dict[int, dict[str, list[float]]], *, mode: str = "host", steps=None) -> dict:
    """A `summary --json` document whose ranks have these per-step category milliseconds."""
    out = []
    for rank, cats in ranks.items():
        n = len(next(iter(cats.values())))
        per_cat = {c: list(cats.get(c, [0.0] * n)) for c in CATEGORY_NAMES}
        wall = [sum(per_cat[c][i] for c in CATEGORY_NAMES) for i in range(n)]
        out.append(
            {
                "rank": rank,
                "mode": mode,
                "steps": n,
                "step_time_ms": {"median": sorted(wall)[n // 2]},
                "budget_pct": {},
                "evidence": [],
                "per_step": {"step": list(steps or range(n)), "wall_ms": wall, "category_ms": per_cat},
            }
        )
    return {"run_id": "hand", "run_dir": "", "ranks": out}


def jittered(value: float, n: int, seed: int, spread: float = 0.05) -> list[float]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [float(v) for v in value * rng.lognormal(0.0, spread, n)]


def two_ranks(seed: int, *, slow_rank1_ms: float = 0.0, rank0_checkpoint_ms: float = 0.0) -> Summary:
    """Data-parallel job: both ranks compute ~100 ms and all-reduce ~5 ms; when one rank is held up the
    other waits for it in sync."""
    n = 12
    c0, c1 = jittered(100, n, seed), jittered(100 + slow_rank1_ms, n, seed + 1)
    ck0 = [rank0_checkpoint_ms] * n
    end0 = [a + b for a, b in zip(c0, ck0)]
    wait0 = [max(0.0, b - a) for a, b in zip(end0, c1)]
    wait1 = [max(0.0, a - b) for a, b in zip(end0, c1)]
    sync = jittered(5, n, seed + 2)
    return Summary.from_json(
        summary_doc(
            {
                0: {"compute": c0, "checkpoint_io": ck0, "sync": [s + w for s, w in zip(sync, wait0)]},
                1: {"compute": c1, "sync": [s + w for s, w in zip(sync, wait1)]},
            }
        )
    )


def test_job_view_is_steady_when_the_machine_slows_one_rank() -> None:
    """Rank 1 runs 30% slower (another job on its cores): rank 0 waits for it. Per rank, rank 0's sync
    grows past its limit, but the job only computed for longer: no regression."""
    cmp = compare(two_ranks(1), two_ranks(2, slow_rank1_ms=30))
    assert cmp.verdict is Verdict.PASS, regressed_metrics(cmp)
    rank0_sync = next(c for c in cmp.checks if c.rank == 0 and c.metric == "sync")
    assert rank0_sync.outcome is Outcome.REGRESSED  # shown where it happened, does not decide
    assert cmp.job_check("sync").outcome is Outcome.OK


def test_job_view_names_rank_zeros_checkpoint() -> None:
    """Rank 0 saves a checkpoint every step (rank 1 waits for it): the job regresses in checkpoint_io."""
    cmp = compare(two_ranks(1), two_ranks(2, rank0_checkpoint_ms=15))
    assert cmp.verdict is Verdict.REGRESSION
    assert regressed_metrics(cmp) == ["checkpoint_io"] or "checkpoint_io" in regressed_metrics(cmp)
    assert cmp.job_check("sync").outcome is not Outcome.REGRESSED  # rank 1's waiting is not a second cause


# ---- what cannot be compared or decided -----------------------------------------------------------------


def test_incomparable_runs_are_explained() -> None:
    one = Summary.from_json(summary_doc({0: {"compute": jittered(100, 8, 1)}}))
    two = two_ranks(1)
    gpu = Summary.from_json(summary_doc({0: {"compute": jittered(100, 8, 1)}}, mode="device"))
    later = Summary.from_json(summary_doc({0: {"compute": jittered(100, 8, 1)}}, steps=range(100, 108)))
    old_doc = summary_doc({0: {"compute": jittered(100, 8, 1)}})
    del old_doc["ranks"][0]["per_step"]
    old = Summary.from_json(old_doc)
    for cand, needle in (
        (two, "different world size"),
        (gpu, "compute means different things"),
        (later, "no common steps: base has steps 0-7, candidate 100-107"),
        (old, "no per-step data"),
    ):
        cmp = compare(one, cand)
        assert cmp.verdict is Verdict.INCOMPARABLE and cmp.exit_code == 2
        assert any(needle in r for r in cmp.reasons), cmp.reasons
        assert needle.split(":")[0] in render_markdown(cmp)
        validate_junit(render_junit(cmp))


def test_too_few_steps_is_said_not_guessed() -> None:
    a = Summary.from_json(summary_doc({0: {"compute": jittered(100, 5, 1)}}))
    # the input pipeline takes half the step again: plain to see, but 4 steps are left after warm-up
    b = Summary.from_json(
        summary_doc({0: {"compute": jittered(100, 5, 2), "data_loading": jittered(50, 5, 3)}})
    )
    cmp = compare(a, b)
    assert cmp.verdict is Verdict.UNDECIDED and cmp.exit_code == 2 and not cmp.checks
    assert "too few steps" in cmp.reasons[0] and "4 common step(s)" in cmp.reasons[0]
    assert compare(a, b, Thresholds(min_steps=4)).verdict is Verdict.REGRESSION  # when asked for, it decides


# ---- formats ----------------------------------------------------------------------------------------------


def test_markdown_is_gfm_tables(base_runs: list[Summary], regressed_runs: dict[str, list[Summary]]) -> None:
    cmp = compare(base_runs[0], regressed_runs["checkpoint_io"][0])
    md = render_markdown(cmp)
    tables = gfm_tables(md)
    assert len(tables) == 2  # the checks, the evidence that grew (one rank: no per-rank table)
    checks, evidence = tables
    assert checks[0][:4] == ["check (job)", "base", "candidate", "change"]
    assert [row[0] for row in checks[1:]] == ["step time (median)", "compute share", *CATEGORY_NAMES[1:]]
    assert all(len(row) == 7 for row in checks)
    row = next(r for r in checks if r[0] == "checkpoint_io")
    assert row[-1] == "**regressed**"
    assert evidence[0] == ["category", "rank", "region", "base ms/step", "candidate ms/step"]
    assert evidence[1][:3] == ["checkpoint_io", "0", "save\\_checkpoint"]


def test_markdown_escapes_names_from_traces() -> None:
    """A region name is data: a pipe, HTML or a newline in it must not break the table."""
    base = two_ranks(1)
    doc = summary_doc(
        {
            0: {"compute": jittered(100, 12, 3), "checkpoint_io": [30.0] * 12, "sync": jittered(5, 12, 4)},
            1: {"compute": jittered(100, 12, 5), "sync": jittered(35, 12, 6)},
        }
    )
    doc["ranks"][0]["evidence"] = [
        {"category": "checkpoint_io", "name": "save|<script>x</script>\nnext", "total_ms": 360.0, "count": 12}
    ]
    cmp = compare(base, Summary.from_json(doc))
    assert cmp.verdict is Verdict.REGRESSION
    md = render_markdown(cmp)
    assert "<script>" not in md
    evidence = gfm_tables(md)[1]
    assert all(len(row) == 5 for row in evidence), evidence
    assert "&lt;script&gt;" in evidence[1][2]
    per_rank = gfm_tables(md)[2]
    assert [r[0] for r in per_rank[1:]] == ["0", "1"]


def test_junit_validates_one_testcase_per_check(
    base_runs: list[Summary], regressed_runs: dict[str, list[Summary]]
) -> None:
    import xml.etree.ElementTree as ET

    for cand in (base_runs[1], regressed_runs["data_loading"][1]):
        cmp = compare(base_runs[0], cand)
        xml = render_junit(cmp)
        validate_junit(xml)
        suite = ET.fromstring(xml).find("testsuite")
        assert suite is not None
        cases = suite.findall("testcase")
        assert len(cases) == int(suite.get("tests")) == 9  # step time, compute share, 7 idle categories
        failed = [c.get("name") for c in cases if c.find("failure") is not None]
        assert int(suite.get("failures")) == len(failed)
        assert failed == [
            {"step_time": "step time (median)", "compute_share": "compute share"}.get(m, m)
            for m in regressed_metrics(cmp)
        ]


def test_junit_schema_rejects_what_ci_would_misread() -> None:
    """The schema is a real check: a testcase with two outcomes or a count that is not a number fails."""
    import xmlschema

    bad = (
        '<testsuites><testsuite name="s" tests="one" failures="0" errors="0">'
        '<testcase name="a" classname="c"/></testsuite></testsuites>'
    )
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        validate_junit(bad)
    two = (
        '<testsuites><testsuite name="s" tests="1" failures="1" errors="0">'
        '<testcase name="a" classname="c"><failure/><skipped/></testcase></testsuite></testsuites>'
    )
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        validate_junit(two)


# ---- the command line -------------------------------------------------------------------------------------


def write_json(summary: Summary, path: Path) -> Path:
    path.write_text(json.dumps(summary.to_json()))
    return path


def test_cli_pass_regression_and_outputs(
    tmp_path: Path, base_runs: list[Summary], regressed_runs: dict[str, list[Summary]]
) -> None:
    base = write_json(base_runs[0], tmp_path / "baseline.json")
    same = write_json(base_runs[1], tmp_path / "same.json")
    slow = write_json(regressed_runs["data_loading"][0], tmp_path / "slow.json")

    ok = run_cli("compare", base, same)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("## gpuwatch compare: PASS") and ok.stderr == ""

    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("earlier step\n")
    junit = tmp_path / "out" / "compare.xml"
    bad = run_cli_env("compare", base, slow, "--junit", junit, "--json", GITHUB_STEP_SUMMARY=step_summary)
    assert bad.returncode == 1, bad.stderr
    doc = json.loads(bad.stdout)  # stdout is only data
    assert doc["verdict"] == "regression" and "data_loading" in doc["regressed"]
    assert bad.stderr.strip() == f"gpuwatch compare: regression: {', '.join(doc['regressed'])}"
    validate_junit(junit.read_text())
    appended = step_summary.read_text()
    assert appended.startswith("earlier step\n## gpuwatch compare: REGRESSION")
    assert gfm_tables(appended)

    # a stricter limit on the one category, a looser one elsewhere: flags parse and apply
    strict = run_cli("compare", base, slow, "--max-increase", "data_loading=50", "--json")
    assert strict.returncode == 0 or "data_loading" not in json.loads(strict.stdout)["regressed"]


def run_cli_env(*args, **env):
    import subprocess
    import sys

    from conftest import ROOT, cli_env

    e = cli_env()
    e.update({k: str(v) for k, v in env.items()})
    return subprocess.run(
        [sys.executable, "-m", "gpuwatch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=e,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def test_cli_run_directories_and_incomparable(tmp_path: Path) -> None:
    one = tmp_path / "one"
    import_run(noisy_trace(1, steps=8), one)
    two = tmp_path / "two"
    two.mkdir()
    traces = [noisy_trace(2, steps=8, rank=r, world_size=2).write(two / f"r{r}.json") for r in (0, 1)]
    from gpuwatch.capture.trace_import import import_to_run

    import_to_run([str(p) for p in traces], two / "run")
    proc = run_cli("compare", one / "run", two / "run")
    assert proc.returncode == 2
    assert proc.stdout.startswith("## gpuwatch compare: CANNOT COMPARE")
    assert proc.stderr.startswith("gpuwatch compare: cannot compare: different world size")
    assert len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--max-increase", "compute=5"], "use --max-compute-drop"),
        (["--max-increase", "dataloading=5"], "unknown category 'dataloading'"),
        (["--max-increase", "sync"], "expected CATEGORY=PP"),
        (["--max-compute-drop", "-1"], "must be a finite number >= 0"),
        (["--min-steps", "1"], "--min-steps must be at least 2"),
    ],
)
def test_cli_bad_limits_are_one_line_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    doc = tmp_path / "s.json"
    doc.write_text(json.dumps(summary_doc({0: {"compute": jittered(100, 8, 1)}})))
    proc = run_cli("compare", doc, doc, *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_cli_inputs_that_are_not_runs(tmp_path: Path) -> None:
    doc = tmp_path / "s.json"
    doc.write_text(json.dumps(summary_doc({0: {"compute": jittered(100, 8, 1)}})))
    notjson = tmp_path / "notes.txt"
    notjson.write_text("hello")
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    for bad, needle in (
        (tmp_path / "missing", "no such run directory or summary file"),
        (notjson, "not a run directory, and not a `gpuwatch summary --json` file"),
        (other, "not a gpuwatch summary document"),
        (tmp_path, "not a gpuwatch run"),
    ):
        proc = run_cli("compare", doc, bad)
        assert proc.returncode == 2 and proc.stdout == "", (bad, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_bootstrap_counts_and_weighted_median_are_exact() -> None:
    """The resamples are whole: each draws n steps; the median of a resample given as counts is the median
    of that resample written out."""
    import numpy as np

    from reports.compare.noise import _counts, _weighted_median, block_length

    assert [block_length(n) for n in (1, 7, 8, 27, 125)] == [1, 2, 2, 3, 5]
    values = np.random.default_rng(3).lognormal(0, 0.5, 11)
    for counts in _counts(11, 300, seed=1):
        assert (counts.sum(axis=1) == 11).all()
        expanded = [np.median(np.repeat(values, row)) for row in counts]
        assert np.allclose(_weighted_median(values, counts), expanded)
