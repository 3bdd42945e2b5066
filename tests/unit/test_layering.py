"""Layering rules of DESIGN.md as tests: `import gpuwatch` stays cheap inside a training job, data flows
collectors -> records -> store -> attribution -> views, and nothing reaches backwards."""

from __future__ import annotations

import ast
import shutil
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
    "module",
    [
        "gpuwatch",
        "gpuwatch.records",
        "gpuwatch.store.segment_writer",
        "gpuwatch.errors",
        "gpuwatch.cli",
        "gpuwatch.capture.span",
    ],
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
    # the probe really ran the import and the store: it decoded the trace (msgspec) and wrote its segments
    # (from a forked child, which loads DuckDB: this process never needs it, as the summary of an import
    # is kept beside the run)
    assert "msgspec" in loaded and list(run.glob("rank*/spans-*.parquet"))
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


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter (the contracts in pyproject.toml) on the tree at `cwd`."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    env = {**cli_env(), "PYTHONPATH": str(cwd)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_import_linter_contracts_hold() -> None:
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 kept, 0 broken" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("file", "bad_import", "contract"),
    [
        ("collectors/base.py", "from gpuwatch.store import run_reader", "collectors know records and errors"),
        ("gpuwatch/store/run_dir.py", "from gpuwatch.attribution import budget", "gpuwatch flows one way"),
        ("reports/terminal.py", "import collectors.stack_rules", "reports consume summaries"),
        ("gpuwatch/attribution/intervals.py", "import plotly", "textual and plotly are imported only"),
    ],
)
def test_import_linter_catches_a_planted_violation(
    tmp_path: Path, file: str, bad_import: str, contract: str
) -> None:
    """The contracts can fail: the same tree with one backwards import planted breaks the named contract."""
    for folder in ("gpuwatch", "collectors", "reports"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / file
    target.write_text(target.read_text() + f"\n{bad_import}  # planted by the test\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    broken = proc.stdout.split("Broken contracts")[-1]
    assert contract in " ".join(broken.split()), proc.stdout


def test_collectors_import_only_records_and_errors_from_gpuwatch() -> None:
    """An allow-list (import-linter only forbids): anything of gpuwatch beyond these two is a violation."""
    allowed = ("gpuwatch.records", "gpuwatch.errors")
    files = py_files("collectors")
    assert len(files) > 10
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {name}"
        for p in files
        for name, line in imports_of(p)
        if _matches(name, ("gpuwatch",)) and not _matches(name, allowed)
    ]
    assert not bad, "\n".join(bad)


def test_gpuwatch_top_level_stays_small() -> None:
    """Each stage is a folder: the package's top level holds only the API, the data model and errors."""
    modules = sorted(p.name for p in (ROOT / "gpuwatch").glob("*.py"))
    assert len(modules) <= 8, modules
    for folder in (ROOT / "gpuwatch").iterdir():
        if folder.is_dir() and folder.name != "__pycache__":
            doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
            assert doc and "import" in doc, f"{folder.name}/__init__.py must say what the stage may import"


def test_core_never_imports_textual_or_plotly_at_module_level() -> None:
    """Everything of gpuwatch/ but its view (tui/, which exists to import textual) stays free of them even
    in function bodies that run at import time; import-linter checks the same for every import."""
    files = [p for p in py_files("gpuwatch") if "tui" not in p.relative_to(ROOT).parts]
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
