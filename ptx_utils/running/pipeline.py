"""``ptx run``: execute the ordered notebooks with papermill into a new run directory.

Details: ``docs/pipeline-internals.md``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.run_dir import new_run_dir, write_params
from ptx_utils.running.presets import get_preset

NOTEBOOKS = ("01_pretrain", "02_search", "03_transfer", "04_domain_shift", "05_analysis")
NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
#: Parameters a resumed run may change: where things are, not what is computed.
RESUME_OVERRIDES = ("data_root", "device", "runs_root", "executor", "ray_address")
#: Where the kernel's own messages go, inside the run directory.
KERNEL_LOG = "kernel.log"


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names it and its error."""


def find_notebooks(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The pipeline's notebooks present in ``notebook_dir``, in order."""
    if not notebook_dir.is_dir():
        raise PipelineError(f"notebook folder {notebook_dir} not found; pass --notebooks DIR")
    found = [p for n in NOTEBOOKS if (p := notebook_dir / f"{n}.ipynb").is_file()]
    if not found:
        raise PipelineError(f"no pipeline notebooks ({', '.join(NOTEBOOKS)}) in {notebook_dir}")
    return found


def prepare_run(
    preset: str,
    overrides: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
) -> tuple[Path, dict[str, Any]]:
    """Resolve parameters and create the run directory; return (run_dir, params).

    ``run_dir`` must not exist yet (or be empty); without it a new
    ``runs/<preset>-<dataset>-<time>`` is created.
    """
    params = get_preset(preset)
    unknown = sorted(set(overrides or {}) - set(params))
    if unknown:
        raise PipelineError(
            f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(params))}"
        )
    for key, value in (overrides or {}).items():  # a dict override merges into a dict entry
        both_dicts = isinstance(value, dict) and isinstance(params[key], dict)
        params[key] = {**params[key], **value} if both_dicts else value
    params["preset"] = preset
    # The notebooks run with the run directory as working directory: a relative data root (the
    # parameter, or $PTX_DATA_ROOT) is made absolute here, and recorded in params.json.
    data_root = params.get("data_root") or os.environ.get("PTX_DATA_ROOT")
    if data_root:
        params["data_root"] = str(Path(data_root).expanduser().resolve())
    if run_dir is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = new_run_dir(runs_root, f"{preset}-{params['dataset']}-{stamp}")
    else:
        path = Path(run_dir)
        if path.exists() and any(path.iterdir()):
            raise PipelineError(
                f"run directory {path} already exists and is not empty; nothing was overwritten. "
                "Choose another --run-dir or leave it out for a new one."
            )
        path.mkdir(parents=True, exist_ok=True)
    params["run_dir"] = str(path.resolve())
    write_params(path, params, device=params.get("device"))
    return path, params


@contextmanager
def kernel_output_to(log: Path) -> Iterator[None]:
    """Send what the kernel process prints (its start-up warnings, "KeyboardInterrupt caught in
    kernel" at shutdown) to ``log`` instead of the terminal: file descriptors 1 and 2 point at the
    log while the kernel runs, and are restored afterwards."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "ab") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def execute_notebook(notebook: Path, run_dir: Path, params: Mapping[str, Any]) -> Path:
    """Run one notebook with papermill into ``run_dir``; raise :class:`PipelineError` on failure.

    The kernel runs in ``run_dir``, so a relative ``$PTX_CACHE_DIR`` is made absolute for it; what
    the kernel process prints goes to ``run_dir/kernel.log``.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output = run_dir / notebook.name
    cache = os.environ.get("PTX_CACHE_DIR")
    if cache and not Path(cache).is_absolute():
        os.environ["PTX_CACHE_DIR"] = str(Path(cache).resolve())
    try:
        with kernel_output_to(run_dir / KERNEL_LOG):
            papermill.execute_notebook(
                str(notebook),
                str(output),
                parameters=dict(params),
                cwd=str(run_dir),
                kernel_name="python3",
                progress_bar=False,
            )
    except PapermillExecutionError as exc:
        raise PipelineError(
            f"notebook {notebook.name} failed in cell {exc.exec_count}: {exc.ename}: "
            f"{exc.evalue}\nThe partly executed notebook is kept at {output}"
        ) from exc
    return output


def _execute(
    path: Path, params: Mapping[str, Any], notebooks: list[Path], timings: dict[str, Any]
) -> Path:
    """Run ``notebooks`` in order into ``path``, recording each finished one in ``timings.json``."""
    from tqdm.auto import tqdm

    for notebook in tqdm(notebooks, desc=f"ptx run {path.name}", unit="notebook"):
        start = time.perf_counter()
        execute_notebook(notebook, path, params)
        timings["seconds"][notebook.stem] = round(time.perf_counter() - start, 2)
        timings["provenance"] = provenance(seed=params.get("seed"))
        atomic_write_json(path / "timings.json", timings)
    return path


def run_pipeline(
    preset: str,
    overrides: Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    notebook_dir: Path = NOTEBOOK_DIR,
) -> Path:
    """Execute notebooks 01 -> 05 (those present) on ``preset`` + ``overrides``; return run dir."""
    notebooks = find_notebooks(Path(notebook_dir))
    path, params = prepare_run(preset, overrides, run_dir, runs_root)
    return _execute(path, params, notebooks, {"seconds": {}, "resumes": []})


def resume_pipeline(
    run_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    notebook_dir: Path = NOTEBOOK_DIR,
) -> Path:
    """Continue the run in ``run_dir`` from its first unfinished notebook; return the run dir.

    Parameters come from the run's ``params.json``; ``overrides`` may change only
    :data:`RESUME_OVERRIDES` (e.g. the data root on another machine). Raises
    :class:`PipelineError` when ``run_dir`` is not a run or has nothing left to do.
    """
    path = Path(run_dir)
    params_file = path / "params.json"
    if not params_file.is_file():
        raise PipelineError(
            f"{path} is not a ptx run directory (no params.json); start a run with "
            "`ptx run --preset ...` and resume that one"
        )
    refused = sorted(set(overrides or {}) - set(RESUME_OVERRIDES))
    if refused:
        raise PipelineError(
            f"a resumed run keeps its parameters; {', '.join(refused)} cannot change (only "
            f"{', '.join(RESUME_OVERRIDES)} can). Start a new run to change them."
        )
    params = json.loads(params_file.read_text())["params"]
    params.update(overrides or {})
    if params.get("data_root"):
        params["data_root"] = str(Path(params["data_root"]).expanduser().resolve())
    params["run_dir"] = str(path.resolve())  # the run may have moved to another machine
    timings_file = path / "timings.json"
    timings = (
        json.loads(timings_file.read_text())
        if timings_file.is_file()
        else {"seconds": {}, "resumes": []}
    )
    timings.setdefault("resumes", [])
    left = [nb for nb in find_notebooks(Path(notebook_dir)) if nb.stem not in timings["seconds"]]
    if not left:
        raise PipelineError(f"every notebook of {path} has finished; nothing to resume")
    kept = None
    partial = path / left[0].name
    if partial.exists():  # the interrupted attempt's notebook: keep it beside the new one
        n = 1
        while (kept := path / f"{left[0].stem}.attempt-{n}.ipynb").exists():
            n += 1
        partial.rename(kept)
    timings["resumes"].append(
        {
            "at": _dt.datetime.now().isoformat(timespec="seconds"),
            "from": left[0].stem,
            "kept": kept.name if kept else None,
            "overrides": dict(overrides or {}),
        }
    )
    atomic_write_json(timings_file, timings)
    return _execute(path, params, left, timings)
