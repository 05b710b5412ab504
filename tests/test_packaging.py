"""The project's shape: one dependency list in two files, the layout, notebooks, README, CI."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from ptx_utils.running.pipeline import NOTEBOOKS


def _env_pip_requirements(path: Path) -> list[str]:
    """The ``pip:`` list of environment.yml (a plain reader: the format used there is fixed)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = []
    for line in lines[start + 1 :]:
        m = re.match(r"^\s+-\s+(.+?)\s*$", line)
        if not m:
            break
        reqs.append(m.group(1))
    return reqs


def test_environment_yml_lists_the_same_packages_as_pyproject(repo_root: Path) -> None:
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = _env_pip_requirements(repo_root / "environment.yml")
    assert "-e .[dev]" in env
    assert sorted(r for r in env if not r.startswith("-e ")) == sorted(declared)
    assert "python=3.11" in (repo_root / "environment.yml").read_text()
    for name in (
        "torch",
        "torchvision",
        "jupyterlab",
        "ipywidgets",
        "matplotlib",
        "seaborn",
        "papermill",
        "pandas",
        "tqdm",
    ):
        assert any(re.match(rf"^{name}\b", r) for r in project["dependencies"]), name
    assert project["scripts"]["ptx"] == "ptx_utils.running.cli:main"


def test_top_level_layout(repo_root: Path) -> None:
    for name in ("notebooks", "ptx_utils", "tests", "benchmarks", ".ci"):
        assert (repo_root / name).is_dir(), name
    for name in ("environment.yml", "README.md", "pyproject.toml", "Makefile", ".ci/run"):
        assert (repo_root / name).is_file(), name


@pytest.mark.parametrize(
    "path",
    sorted(Path(__file__).resolve().parent.parent.glob("notebooks/*.ipynb")),
    ids=lambda p: p.name,
)
def test_notebooks_are_stored_clean_and_parameterised(path: Path) -> None:
    assert path.stem in NOTEBOOKS
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill)"
    assert "run_dir" in "".join(tagged[0]["source"])
    assert sum(c["cell_type"] == "markdown" for c in nb["cells"]) >= 3, "notebooks teach"


def test_readme_opens_with_the_two_commands(repo_root: Path) -> None:
    text = (repo_root / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert first_block, "README must open with a code block"
    lines = [ln.split("#")[0].strip() for ln in first_block.group(1).splitlines()]
    commands = [ln for ln in lines if ln]
    assert commands == ["make run", "make test"]
    assert text.index(first_block.group(0)) < text.index("\n## ")


def test_ci_runs_the_readme_test_command(repo_root: Path) -> None:
    ci = (repo_root / ".ci/run").read_text()
    assert "set -euo pipefail" in ci
    assert re.search(r"^make test$", ci, re.M)
    assert "PTX_DATA_ROOT" in ci
