"""Layering rules of DESIGN.md as tests: `import gpuwatch` stays cheap inside a training job, data flows
collectors -> records -> store -> attribution -> views, and nothing reaches backwards."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli_env

HEAVY = ("textual", "plotly", "duckdb", "torch")


def loaded_after(code: str) -> set[str]:
    """Top-level packages loaded by a fresh interpreter after running `code`."""
    probe = code + "\nimport sys\nprint('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


@pytest.mark.parametrize(
    "module", ["gpuwatch", "gpuwatch.records", "gpuwatch.segment_writer", "gpuwatch.errors", "gpuwatch.cli"]
)
def test_core_imports_stay_headless(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert not loaded & set(HEAVY), f"import {module} loaded {sorted(loaded & set(HEAVY))}"


def test_cli_summary_never_imports_torch_textual_or_plotly(tmp_path: Path) -> None:
    """`gpuwatch import` + `gpuwatch summary` run as the user runs them, without torch (seconds of startup)."""
    from synthetic_kineto import planted_rank

    trace = planted_rank(1).write(tmp_path / "t.json")
    run = tmp_path / "run"
    code = (
        "import contextlib, io\n"
        "from gpuwatch.cli import main\n"
        f"assert main(['import', {str(trace)!r}, '--out', {str(run)!r}]) == 0\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['summary', {str(run)!r}, '--json']) == 0\n"
        f"    assert main(['summary', {str(run)!r}]) == 0\n"
    )
    loaded = loaded_after(code)
    assert "duckdb" in loaded  # the probe really ran the store
    assert not loaded & {"torch", "textual", "plotly"}, sorted(loaded & {"torch", "textual", "plotly"})


def imports_of(path: Path, *, module_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import in a file; `module_level_only` skips function bodies and
    `if TYPE_CHECKING:` blocks (they never run at import time)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not module_level_only:
                    visit(child, False)
                continue
            if isinstance(child, ast.If) and module_level_only and "TYPE_CHECKING" in ast.unparse(child.test):
                visit_list(child.orelse, top)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, child.lineno))
                found.extend((f"{child.module}.{a.name}", child.lineno) for a in child.names)
            visit(child, top)

    def visit_list(nodes: list[ast.stmt], top: bool) -> None:
        for n in nodes:
            visit(ast.Module(body=[n], type_ignores=[]), top)

    visit(tree, True)
    return found


def _matches(name: str, banned: tuple[str, ...]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


def py_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_collectors_never_import_the_store_views_or_reports() -> None:
    banned = (
        "gpuwatch.run_reader",
        "gpuwatch.analysis",
        "gpuwatch.summary_view",
        "gpuwatch.tui",
        "textual",
        "plotly",
        "reports",
    )
    files = py_files("collectors")
    assert files
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in files
        for name, line in imports_of(p)
        if _matches(name, banned)
    ]
    assert not bad, "\n".join(bad)


def test_reports_never_import_collectors() -> None:
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in py_files("reports")
        for name, line in imports_of(p)
        if _matches(name, ("collectors",))
    ]
    assert not bad, "\n".join(bad)


def test_core_never_imports_textual_or_plotly_at_module_level() -> None:
    files = py_files("gpuwatch")
    assert len(files) > 10
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {name} at module level"
        for p in files
        for name, line in imports_of(p, module_level_only=True)
        if _matches(name, ("textual", "plotly"))
    ]
    assert not bad, "\n".join(bad)


def test_the_ast_check_sees_what_it_must(tmp_path: Path) -> None:
    """The checker itself: module-level and nested imports found, function bodies and TYPE_CHECKING not."""
    src = tmp_path / "m.py"
    src.write_text(
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import textual\n"
        "try:\n    import plotly.graph_objects as go\nexcept ImportError:\n    go = None\n"
        "def f():\n    import duckdb\n"
        "class C:\n    from rich import table\n"
    )
    top = {n for n, _ in imports_of(src, module_level_only=True)}
    everything = {n for n, _ in imports_of(src)}
    assert "plotly.graph_objects" in top and "rich.table" in top and "os" in top
    assert "textual" not in top and "duckdb" not in top
    assert {"textual", "duckdb", "plotly.graph_objects"} <= everything
