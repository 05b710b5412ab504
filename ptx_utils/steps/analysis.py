"""Notebook 05: gather every run under ``runs/`` into paper tables and figures.

:func:`gather` reads each run directory's ``params.json`` and whatever results its notebooks
wrote (``results/search_summary.csv``, ``transfer_summary.csv``, ``transfer_vs_searched.csv``,
``domain_shift_summary.csv``, ``domain_shift_schemes.csv``) into tidy frames with a ``run``
column; a run that is missing a file is listed with what it lacks, never silently dropped.
:func:`write_tables` writes them as CSV and LaTeX (booktabs, mean ± 95 % CI in percent);
:mod:`ptx_utils.plots.analysis` draws them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ptx_utils.core.io import atomic_write_text
from ptx_utils.evaluation import mean_ci_latex

#: result files a finished run has, by the notebook that writes them.
RESULT_FILES = {
    "search": ("results/search_summary.csv", "02_search"),
    "transfer": ("results/transfer_summary.csv", "03_transfer"),
    "paired": ("results/transfer_vs_searched.csv", "03_transfer"),
    "shift": ("results/domain_shift_summary.csv", "04_domain_shift"),
    "shift_schemes": ("results/domain_shift_schemes.csv", "04_domain_shift"),
}
RUN_COLUMNS = ("run", "dataset", "backbone", "preset", "seed", "n_way", "commit", "date", "missing")


@dataclass
class RunCollection:
    """Every run found under a root, and their results.

    Attributes:
        runs: one row per run, columns :data:`RUN_COLUMNS` (``missing`` lists absent results).
        frames: kind (keys of :data:`RESULT_FILES`) -> the runs' results, stacked, with ``run``,
            ``dataset`` and ``backbone`` columns first.
    """

    root: Path
    runs: pd.DataFrame
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    def __getitem__(self, kind: str) -> pd.DataFrame:
        return self.frames[kind]


def find_runs(root: str | Path) -> list[Path]:
    """Run directories (holding ``params.json``) directly under ``root``, by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"runs root {root} does not exist; run the pipeline first (`ptx run --preset demo`) "
            "or pass runs_root"
        )
    return sorted(p.parent for p in root.glob("*/params.json"))


def gather(root: str | Path, only: Sequence[str] | None = None) -> RunCollection:
    """Read every run under ``root`` (or only the run names in ``only``)."""
    runs, frames = [], {kind: [] for kind in RESULT_FILES}
    for path in find_runs(root):
        if only is not None and path.name not in only:
            continue
        try:
            meta = json.loads((path / "params.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path / 'params.json'} is not readable JSON: {exc}") from exc
        params, prov = meta.get("params", {}), meta.get("provenance", {})
        info = {
            "run": path.name,
            "dataset": params.get("dataset"),
            "backbone": params.get("backbone"),
        }
        missing = []
        for kind, (relative, notebook) in RESULT_FILES.items():
            file = path / relative
            if not file.is_file():
                missing.append(f"{relative} ({notebook})")
                continue
            frame = pd.read_csv(file)
            for i, (key, value) in enumerate(info.items()):
                frame.insert(i, key, value)
            frames[kind].append(frame)
        runs.append(
            {
                **info,
                "preset": params.get("preset"),
                "seed": params.get("seed"),
                "n_way": params.get("n_way"),
                "commit": prov.get("git_commit"),
                "date": prov.get("date"),
                "missing": "; ".join(missing),
            }
        )
    if only is not None:
        absent = sorted(set(only) - {r["run"] for r in runs})
        if absent:
            raise FileNotFoundError(f"no run named {', '.join(absent)} under {root}")
    stacked = {
        kind: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        for kind, parts in frames.items()
    }
    return RunCollection(Path(root), pd.DataFrame(runs, columns=list(RUN_COLUMNS)), stacked)


# --- tables ---------------------------------------------------------------------------------------


def transfer_table(collection: RunCollection) -> pd.DataFrame:
    """Strategies × (run, setting): mean, ci95, n, plus the paired difference to the searched
    scheme (``diff_vs_searched``, ``diff_ci95``; positive = the searched scheme is better)."""
    transfer = collection["transfer"]
    if transfer.empty:
        return transfer
    table = transfer.assign(
        setting=[
            f"{w}-way {k}-shot" for w, k in zip(transfer["n_way"], transfer["k_shot"], strict=True)
        ]
    )
    paired = collection["paired"]
    if not paired.empty:
        diff = paired.rename(
            columns={
                "reference": "other",
                "mean_diff": "diff_vs_searched",
                "ci95": "diff_ci95",
                "p_value": "diff_p",
            }
        )
        table = table.merge(
            diff[["run", "n_way", "k_shot", "other", "diff_vs_searched", "diff_ci95", "diff_p"]],
            left_on=["run", "n_way", "k_shot", "strategy"],
            right_on=["run", "n_way", "k_shot", "other"],
            how="left",
        ).drop(columns="other")
    keep = [
        "run",
        "dataset",
        "backbone",
        "setting",
        "n_way",
        "k_shot",
        "strategy",
        "scheme",
        "mean",
        "ci95",
        "n",
        "n_diverged",
        "diff_vs_searched",
        "diff_ci95",
        "diff_p",
    ]
    return table[[c for c in keep if c in table.columns]]


def write_tables(collection: RunCollection, out_dir: str | Path) -> dict[str, Path]:
    """Write ``runs.csv``, ``transfer_table.{csv,tex}``, ``search_table.csv``,
    ``domain_shift_table.{csv,tex}`` (those with data) into ``out_dir``, atomically."""
    out = Path(out_dir)
    written = {"runs": atomic_write_text(out / "runs.csv", collection.runs.to_csv(index=False))}

    def table(key: str, frame: pd.DataFrame, column: str, caption: str) -> None:
        """``<key>_table.csv``, and ``.tex``: strategies x (run + ``column``) as mean ± CI."""
        written[key] = atomic_write_text(out / f"{key}_table.csv", frame.to_csv(index=False))
        labelled = frame.assign(column=frame["run"] + " " + frame[column])
        written[f"{key}_tex"] = atomic_write_text(
            out / f"{key}_table.tex", mean_ci_latex(labelled, "strategy", "column", caption=caption)
        )

    transfer = transfer_table(collection)
    if not transfer.empty:
        table("transfer", transfer, "setting", "Test accuracy (%) with 95% confidence intervals")
    if not collection["search"].empty:
        written["search"] = atomic_write_text(
            out / "search_table.csv", collection["search"].to_csv(index=False)
        )
    if not collection["shift"].empty:
        table(
            "domain_shift",
            collection["shift"],
            "target",
            "Test accuracy (%) per target of growing domain shift",
        )
    return written
