"""The notebooks as stored: no outputs, one ``parameters`` cell holding the demo preset, markdown
that teaches, no logic of their own; and a notebook run without its inputs says which to run."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from ptx_utils.running.pipeline import NOTEBOOK_DIR, NOTEBOOKS, PipelineError, execute_notebook
from ptx_utils.running.presets import get_preset

PATHS = [NOTEBOOK_DIR / f"{name}.ipynb" for name in NOTEBOOKS]


def _parameters(nb: nbformat.NotebookNode) -> dict[str, object]:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    values: dict[str, object] = {}
    exec(cells[0].source, {}, values)  # the cell is plain assignments of literals
    return values


@pytest.mark.parametrize("path", PATHS, ids=NOTEBOOKS)
def test_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", PATHS, ids=NOTEBOOKS)
def test_parameters_cell_is_the_demo_preset(path: Path) -> None:
    """Every notebook takes every pipeline parameter; run by hand it is the demo preset."""
    values = _parameters(nbformat.read(path, as_version=4))
    demo = {**get_preset("demo"), "preset": "demo"}
    assert set(values) == set(demo) | {"run_dir"}
    assert {k: values[k] for k in demo} == demo
    assert values["run_dir"] == "../runs/interactive"


@pytest.mark.parametrize("path", PATHS, ids=NOTEBOOKS)
def test_teaches_in_markdown_and_keeps_logic_in_ptx_utils(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert markdown[0].startswith(f"# {path.stem[:2]} · ")
    assert len(markdown) >= 5 and sum(len(m.split()) for m in markdown) >= 250
    assert markdown[-1].startswith("## What you"), "each notebook ends with a recap"
    for source in code:
        tree = ast.parse(source.replace("\n%", "\n#"))
        defined = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.Lambda)
        ]
        lambdas_ok = all(isinstance(n, ast.Lambda) for n in defined) and len(defined) <= 1
        assert not defined or lambdas_ok, f"logic belongs in ptx_utils, not in: {source[:80]}"
    assert any("from ptx_utils" in s for s in code)


def _write_params(run_dir: Path) -> dict[str, object]:
    params = {**get_preset("smoke"), "preset": "smoke", "run_dir": str(run_dir)}
    run_dir.mkdir(parents=True, exist_ok=True)
    return params


@pytest.mark.slow
def test_missing_input_names_the_notebook_to_run_first(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    params = _write_params(run_dir)
    with pytest.raises(PipelineError) as info:
        execute_notebook(NOTEBOOK_DIR / "03_transfer.ipynb", run_dir, params)
    message = str(info.value)
    assert "03_transfer.ipynb failed" in message and "RunInputError" in message
    assert "notebook 01_pretrain writes it" in message
    assert (run_dir / "03_transfer.ipynb").is_file()  # the partial notebook is kept
