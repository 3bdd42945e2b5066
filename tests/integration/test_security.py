"""Names are data (SECURITY.md): a corpus of XSS, SQL-injection, terminal-markup and escape-sequence strings
goes in as kernel, operator, annotation, span, stage and tag names, through the importer and through a
watched program, and comes out exactly as written in every view (`summary` text and JSON, the run's SQL
views, `report`, `top`), never run, never styled, never moving the terminal's cursor. A path written in a
trace is never opened; no command opens a network socket unless asked, and then on loopback.

The report's page is opened in headless Chromium by tests/integration/test_report_browser.py (which plants
this same corpus); here its HTML is checked as text.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_cli, run_program
from hostile_names import HOSTILE, hostile_runs, hostile_trace

from gpuwatch.store.run_reader import RunReader


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An imported run with hostile names, and a watched one with hostile spans, stages and tags."""
    return hostile_runs(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("which", ["imported", "watched"])
def test_names_round_trip_exactly_through_the_store(runs: dict[str, Path], which: str) -> None:
    """What the SQL views return is exactly what was written: names never became SQL."""
    reader = RunReader(runs[which])
    try:
        names = {n for (n,) in reader.query("SELECT DISTINCT name FROM spans").fetchall()}
        # bound as parameters, a hostile name finds exactly its own spans
        for h in HOSTILE:
            assert h in names, h
            (count,) = reader.query("SELECT count(*) FROM spans WHERE name = ?", [h]).fetchone()
            assert count > 0
        assert reader.query("SELECT count(*) FROM spans").fetchone()[0] > 0  # the table is still there
    finally:
        reader.close()


@pytest.mark.parametrize("which", ["imported", "watched"])
def test_summary_prints_names_as_text(runs: dict[str, Path], which: str) -> None:
    text = run_cli("summary", runs[which], "--no-cache")
    assert text.returncode == 0, text.stderr
    assert "\x1b" not in text.stdout and "\x07" not in text.stdout  # no escape sequence reaches the terminal
    doc = run_cli("summary", runs[which], "--json")
    assert doc.returncode == 0, doc.stderr
    shown = json.dumps(json.loads(doc.stdout), ensure_ascii=False)
    if which == "watched":  # stage and tag names come back as the job wrote them
        stages = {s["stage"] for s in json.loads(doc.stdout)["stages"]}
        assert stages <= set(HOSTILE) and len(stages) >= len(HOSTILE) - 1, stages  # warm-up may drop one
        assert "[/]" in text.stdout  # shown as written: rich markup in a name is text (it used to crash)
    else:
        assert any(h in shown for h in HOSTILE)


def test_report_html_holds_names_only_escaped(runs: dict[str, Path], tmp_path: Path) -> None:
    for which, run in runs.items():
        out = tmp_path / f"{which}.html"
        proc = run_cli("report", run, "-o", out)
        assert proc.returncode == 0, proc.stderr
        page = out.read_text()
        for raw in ("<script>window.pwned", "<img src=x", "<svg onload", "<iframe"):
            assert raw not in page, (which, raw)


def test_top_shows_names_as_text(runs: dict[str, Path]) -> None:
    from gpuwatch.tui.app import TopApp

    app = TopApp(runs["watched"])

    async def main() -> str:
        async with app.run_test(size=(140, 45)) as pilot:
            for _ in range(200):
                if app.view is not None and app.view.summary is not None:
                    break
                await pilot.pause(0.05)
            await pilot.pause(0.2)
            return "\n".join(strip.text for strip in app.screen._compositor.render_strips())

    screen = asyncio.run(main())
    assert app.view is not None and app.view.summary is not None, screen
    assert "\x1b" not in screen


AUDIT = """
import json, sys
events = {"opened": [], "sockets": []}
canary = sys.argv[1]

def hook(event, args):
    if event == "open" and args and canary in str(args[0]):
        events["opened"].append(str(args[0]))
    elif event in ("socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo"):
        events["sockets"].append([event, repr(args)[:200]])

sys.addaudithook(hook)
from gpuwatch.cli.main import main
for argv in json.loads(sys.argv[2]):
    rc = main(argv)
    assert rc == 0, (argv, rc)
if len(sys.argv) > 3:  # a watch that asks for its metrics endpoint
    import gpuwatch
    with gpuwatch.watch(sys.argv[3], metrics_port=0, flush_interval_s=0.1) as gw:
        gw.step()
print(json.dumps(events))
"""


def test_paths_in_a_trace_are_never_opened_and_no_socket_unless_asked(tmp_path: Path) -> None:
    """Every path field of the trace names a FIFO: reading one would block (the time limit catches a C-level
    open too), and Python's audit hook sees every open() and socket of import, summary, report, compare,
    consolidate and sql."""
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    canary = canary_dir / "secret.py"
    os.mkfifo(canary)
    trace = hostile_trace(tmp_path / "rank0.json.gz", canary, steps=8)  # compare needs 5 steps
    run, run2 = tmp_path / "run", tmp_path / "run2"
    argv = [
        ["import", str(trace), "--out", str(run)],
        ["import", str(trace), "--out", str(run2)],
        ["summary", str(run), "--no-cache"],
        ["summary", str(run), "--json"],
        ["report", str(run), "-o", str(tmp_path / "r.html")],
        ["report", str(run), str(run2), "-o", str(tmp_path / "d.html")],
        ["compare", str(run), str(run2)],
        ["consolidate", str(run), "-o", str(tmp_path / "run.duckdb")],
        ["sql", str(run), "SELECT count(*) FROM spans"],
    ]
    proc = run_program(
        [sys.executable, "-c", AUDIT, canary_dir, json.dumps(argv)],
        cwd=tmp_path,
        timeout=240,  # a FIFO opened for reading never returns
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert events == {"opened": [], "sockets": []}


def test_the_metrics_endpoint_binds_loopback_only_when_asked(tmp_path: Path) -> None:
    proc = run_program([sys.executable, "-c", AUDIT, "no-canary", "[]", tmp_path / "run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sockets = json.loads(proc.stdout.strip().splitlines()[-1])["sockets"]
    binds = [args for event, args in sockets if event == "socket.bind"]
    assert binds and all("'127.0.0.1'" in args for args in binds), sockets
    assert not [e for e, _ in sockets if e == "socket.connect"], sockets


def test_the_repository_has_a_security_policy() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    for needle in ("Reporting a vulnerability", "reads", "writes", "network", "escaped", "bound"):
        assert needle in text, needle
