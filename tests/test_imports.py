"""Imports only go down (STYLE): scripts → network/, voc12/, coco14/ → tool/ → engine/. Read from the source, so a
new module is checked as soon as it exists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {path.stem for path in REPO.glob("*.py")}
# What each library package may import from this project.
ALLOWED = {
    "engine": {"engine"},
    "tool": {"tool", "engine"},
    "voc12": {"voc12", "tool", "engine"},
    "coco14": {"coco14", "tool", "engine"},
    "network": {"network", "tool", "engine"},
}


def project_imports(path: Path) -> set[str]:
    """The top-level names of this project's packages and scripts that `path` imports."""
    project = set(ALLOWED) | SCRIPTS | {"bench"}
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    return imported & project


def library_modules() -> list[Path]:
    return sorted(path for package in ALLOWED for path in (REPO / package).glob("*.py"))


def test_project_imports_sees_imports_of_every_form(tmp_path):
    source = tmp_path / "module.py"
    source.write_text(
        "import os\nimport network.weights\nfrom voc12 import data\nfrom engine.errors import UserError\n"
        "def late():\n    import train_cpn\n"
    )
    assert project_imports(source) == {"network", "voc12", "engine", "train_cpn"}


@pytest.mark.parametrize("path", library_modules(), ids=lambda path: str(path.relative_to(REPO)))
def test_library_imports_only_go_down(path):
    package = path.parent.name
    assert project_imports(path) <= ALLOWED[package], f"{package}/ may import only {sorted(ALLOWED[package])}"
