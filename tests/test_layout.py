"""The package's shape: sub-packages along the data flow, imports only from earlier ones, small
modules with short docstrings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ptx_utils

PACKAGE = Path(ptx_utils.__file__).parent
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "splits" not in p.parts)
MAX_LINES = 450
MAX_DOCSTRING_LINES = 10


def _subpackage(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def _imported_subpackages(path: Path) -> set[str]:
    """Every ``ptx_utils.<sub>`` a module imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ptx_utils" and len(parts) > 1 and parts[1] in ptx_utils.FLOW:
                found.add(parts[1])
    return found


def test_every_subpackage_is_in_the_flow() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ptx_utils.FLOW)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_with_the_flow(path: Path) -> None:
    """A sub-package imports only from itself and the sub-packages before it in the flow."""
    own = _subpackage(path)
    if own is None:
        assert not _imported_subpackages(path), "the root __init__ imports no sub-package"
        return
    rank = ptx_utils.FLOW.index(own)
    later = sorted(s for s in _imported_subpackages(path) if ptx_utils.FLOW.index(s) > rank)
    assert not later, f"{own} must not import from later sub-packages {later}"


def test_root_holds_at_most_five_modules() -> None:
    root = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(root) <= 5, root


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_small_with_short_docstrings(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES
    doc = ast.get_docstring(ast.parse(text), clean=False) or ""
    assert len(doc.strip().splitlines()) <= MAX_DOCSTRING_LINES, "rationale belongs in docs/"
