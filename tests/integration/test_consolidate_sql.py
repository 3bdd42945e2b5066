"""`gpuwatch consolidate` and `gpuwatch sql` on real runs: the documented relations, the budget equal to
`gpuwatch summary --json`, the same answers from a run directory (also while written) and its file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import duckdb
import pytest
from conftest import run_cli
from labeled_run import LabeledPlan, write_labeled_run
from synthetic_run import SyntheticRun

from gpuwatch.attribution.summary import CATEGORY_NAMES, load_summary

BUDGET_BY_RANK = (
    "SELECT rank, count(*) AS steps, "
    + ", ".join(f"sum({c}_ns) AS {c}" for c in CATEGORY_NAMES)
    + " FROM budget GROUP BY rank ORDER BY rank"
)


def plan() -> LabeledPlan:
    draws = [["image", "video_hr" if i % 3 == 1 else "image"] for i in range(12)]
    stages: list[str | None] = [None] * 12
    stages[0], stages[6] = "images", "video_256"
    return LabeledPlan(draws=draws, stages=stages, stage_extra_ms={"video_256": 8.0})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sql")
    run = write_labeled_run(base / "run", plan())
    out = base / "run.duckdb"
    proc = run_cli("consolidate", run, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "wrote" in proc.stderr
    return run, out


def test_the_file_opens_in_plain_duckdb_with_every_documented_relation(runs: tuple[Path, Path]) -> None:
    run, out = runs
    con = duckdb.connect(str(out), read_only=True)
    try:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert {"runs", "spans", "samples", "steps", "budget", "gpuwatch_meta"} <= names
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (2,)
        assert con.execute("SELECT count(*) FROM spans WHERE kind = 'step'").fetchone() == (24,)
        stages = con.execute("SELECT stage, count(*) FROM steps GROUP BY stage ORDER BY stage").fetchall()
        assert stages == [("images", 12), ("video_256", 12)]  # a stage persists until changed
        got = con.execute(BUDGET_BY_RANK).fetchall()
        walls = con.execute("SELECT sum(wall_ns) FROM budget GROUP BY rank ORDER BY rank").fetchall()
    finally:
        con.close()
    summary = load_summary(run, use_cache=False)
    for row, wall, r in zip(got, walls, summary.ranks):
        assert row[0] == r.rank and row[1] == r.steps
        for c, ns in zip(CATEGORY_NAMES, row[2:]):
            assert ns / 1e6 == pytest.approx(r.budget_ms_per_step.get(c) * r.steps, abs=1e-3)
        assert sum(row[2:]) == wall[0]


def test_a_run_directory_and_its_file_answer_alike(runs: tuple[Path, Path]) -> None:
    run, out = runs
    answers = []
    for source in (run, out):
        proc = run_cli("sql", source, BUDGET_BY_RANK, "--json")
        assert proc.returncode == 0, proc.stderr
        answers.append(json.loads(proc.stdout))
    assert answers[0] == answers[1] and len(answers[0]) == 2
    proc = run_cli(
        "sql", out, "SELECT stage, sum(sync_wait_ns) AS w FROM budget GROUP BY 1 ORDER BY 1", "--csv"
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert rows[0] == ["stage", "w"] and [r[0] for r in rows[1:]] == ["images", "video_256"]
    table = run_cli("sql", run, "SELECT rank, host FROM runs ORDER BY rank")
    assert table.returncode == 0 and "host-a" in table.stdout


def test_sql_reads_a_run_while_it_is_written(tmp_path: Path) -> None:
    live = SyntheticRun(tmp_path / "live", ranks=2)
    live.append(10)
    first = json.loads(run_cli("sql", tmp_path / "live", "SELECT count(*) AS n FROM steps", "--json").stdout)
    live.append(10)
    second = json.loads(run_cli("sql", tmp_path / "live", "SELECT count(*) AS n FROM steps", "--json").stdout)
    live.close()
    assert (first[0]["n"], second[0]["n"]) == (20, 40)


def test_errors_are_one_line_with_their_exit_codes(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = runs
    bad = run_cli("sql", run, "SELEC 1")
    assert bad.returncode == 2 and bad.stderr.startswith("gpuwatch sql: bad query") and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1
    assert run_cli("sql", tmp_path / "nowhere", "SELECT 1").returncode == 2
    foreign = tmp_path / "other.duckdb"
    duckdb.connect(str(foreign)).close()
    other = run_cli("sql", foreign, "SELECT 1")
    assert other.returncode == 1 and "not a consolidated gpuwatch run" in other.stderr
    assert run_cli("consolidate", tmp_path / "nowhere", "-o", tmp_path / "x.duckdb").returncode == 2
