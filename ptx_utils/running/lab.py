"""``ptx lab RUN_DIR``: explore a finished run in JupyterLab.

The kit's notebooks, without outputs, are copied into ``RUN_DIR/lab/`` with the run's parameters
injected (papermill's parameter cell, ``run_dir`` pointing at the run), so running them top to
bottom reloads the run's results and ends with live explorers; the executed notebooks in the run
directory stay untouched, and copies already there (perhaps edited) are kept.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import nbformat

from ptx_utils.core.io import atomic_write_text
from ptx_utils.running.pipeline import NOTEBOOK_DIR, PipelineError, find_notebooks

#: The folder of a run that holds the notebooks to explore it.
LAB_DIR = "lab"


def prepare_lab(run_dir: str | Path, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Write ``RUN_DIR/lab/<notebook>.ipynb`` for every notebook (parameters injected) unless
    one is already there; return their paths.

    Raises:
        PipelineError: ``run_dir`` is not a ptx run (no ``params.json``).
    """
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    path = Path(run_dir).resolve()
    params_file = path / "params.json"
    if not params_file.is_file():
        raise PipelineError(
            f"{path} is not a ptx run directory (no params.json); make one with "
            "`ptx run --preset smoke` (or demo, paper) and open that"
        )
    params = json.loads(params_file.read_text())["params"]
    params["run_dir"] = str(path)  # the run may have moved
    out = path / LAB_DIR
    out.mkdir(exist_ok=True)
    written = []
    for source in find_notebooks(notebook_dir):
        target = out / source.name
        if target.exists():
            print(f"kept {target} (already there; remove it for a fresh copy)")
        else:
            nb = parameterize_notebook(load_notebook_node(str(source)), params)
            atomic_write_text(target, nbformat.writes(nb))
        written.append(target)
    return written


def lab_command(run_dir: str | Path, extra: Sequence[str] = ()) -> list[str]:
    """The JupyterLab command that opens ``RUN_DIR/lab``."""
    jupyter = shutil.which("jupyter") or "jupyter"
    folder = Path(run_dir).resolve() / LAB_DIR
    return [jupyter, "lab", f"--ServerApp.root_dir={folder}", *extra]


def open_lab(run_dir: str | Path, prepare_only: bool = False, extra: Sequence[str] = ()) -> int:
    """:func:`prepare_lab`, then JupyterLab on the copies (or only print the command)."""
    notebooks = prepare_lab(run_dir)
    command = lab_command(run_dir, extra)
    print(f"{len(notebooks)} notebooks in {notebooks[0].parent}; run them top to bottom")
    print("JupyterLab: " + " ".join(command))
    if prepare_only:
        return 0
    return subprocess.call(command)
