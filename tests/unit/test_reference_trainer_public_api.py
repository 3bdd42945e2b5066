"""The reference trainer is a user of gpuwatch: it imports `gpuwatch` and nothing below it (and no collector);
results come back through the `gpuwatch` command line."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = {"watch", "span", "Category"}


def test_trainer_uses_only_gpuwatchs_public_api() -> None:
    files = sorted((ROOT / "reference_trainer").rglob("*.py")) + sorted((ROOT / "examples").glob("*.py"))
    used: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name == "gpuwatch" or not alias.name.startswith(
                        ("gpuwatch.", "collectors", "reports")
                    ), (
                        path,
                        alias.name,
                    )
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("gpuwatch", "collectors", "reports")), (path, node.module)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "gpuwatch"
            ):
                used.add(node.attr)
    assert used and used <= PUBLIC, used
