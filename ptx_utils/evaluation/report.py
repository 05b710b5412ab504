"""Writing an evaluation: tidy CSVs, a LaTeX summary table and provenance, every file atomically."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ptx_utils.core.io import atomic_write_text, json_text, write_or_match
from ptx_utils.core.latex import booktabs_table, mean_ci_cell
from ptx_utils.core.provenance import provenance
from ptx_utils.evaluation.harness import Evaluation
from ptx_utils.evaluation.tables import paired_table, summary_table

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _setting_label(record: Mapping[str, Any], setting: list[str]) -> str:
    parts = {
        "n_way": lambda v: f"{int(v)}-way",
        "k_shot": lambda v: f"{int(v)}-shot",
        "n_query": lambda v: f"{int(v)} queries",
    }
    return " ".join(parts[c](record[c]) for c in setting) or "Accuracy"


def summary_latex(summary: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs table of a :func:`summary_table`: strategies as rows, settings as columns.

    Cells are ``xx.xx $\\pm$ y.yy`` in percent (mean and 95 % CI half-width over non-diverged
    episodes); a strategy that diverged on some episodes gets ``(k/n div.)`` appended; a missing
    setting or a strategy that always diverged shows ``--``. Needs ``\\usepackage{booktabs}``.
    """
    setting = [c for c in ("n_way", "k_shot") if c in summary.columns]
    if "n_query" in summary.columns and summary["n_query"].nunique() > 1:
        setting.append("n_query")
    labels = [_setting_label(r, setting) for r in summary.to_dict("records")]
    columns = list(dict.fromkeys(labels))
    cells: dict[tuple[str, str], str] = {}
    for label, r in zip(labels, summary.to_dict("records"), strict=True):
        cell = (
            "--"
            if r["n"] == 0 or not np.isfinite(r["mean"])
            else mean_ci_cell(r["mean"], r["ci95"])
        )
        if r["n_diverged"]:
            cell += f" ({int(r['n_diverged'])}/{int(r['n_episodes'])} div.)"
        cells[(r["strategy"], label)] = cell
    rows = [
        [name, *(cells.get((name, c), "--") for c in columns)]
        for name in dict.fromkeys(summary["strategy"])
    ]
    return booktabs_table(["Strategy", *columns], rows, caption)


def mean_ci_latex(
    frame: pd.DataFrame,
    index: str | Sequence[str],
    columns: str | Sequence[str],
    caption: str | None = None,
    mean: str = "mean",
    ci: str = "ci95",
    bold_best: bool = True,
) -> str:
    """A booktabs table of ``mean ± ci`` in percent: rows = ``index``, columns = ``columns``
    (values of those frame columns, in order of appearance); the best mean of each column bold."""
    index = [index] if isinstance(index, str) else list(index)
    columns = [columns] if isinstance(columns, str) else list(columns)

    def key(record: dict, names: list[str]) -> str:
        return " ".join(str(record[n]) for n in names)

    records = frame.to_dict("records")
    row_keys = list(dict.fromkeys(key(r, index) for r in records))
    col_keys = list(dict.fromkeys(key(r, columns) for r in records))
    cells = {(key(r, index), key(r, columns)): r for r in records}
    best = {}
    for c in col_keys:
        finite = [cells[(r, c)][mean] for r in row_keys if (r, c) in cells]
        finite = [v for v in finite if np.isfinite(v)]
        best[c] = max(finite) if finite else None
    rows = []
    for r in row_keys:
        row = [r]
        for c in col_keys:
            rec = cells.get((r, c))
            text = "--" if rec is None else mean_ci_cell(rec[mean], rec[ci])
            if bold_best and rec is not None and rec[mean] == best[c] and text != "--":
                text = f"\\textbf{{{text}}}"
            row.append(text)
        rows.append(row)
    return booktabs_table([" / ".join(index), *col_keys], rows, caption)


def write_results(
    run_dir: str | Path,
    evaluation: Evaluation,
    name: str = "test",
    reference: str | None = None,
    overwrite: bool = False,
    **extra: Any,
) -> dict[str, Path]:
    """Write one evaluation under ``run_dir/results/``, every file atomically.

    Files: ``<name>_episodes.csv`` (the tidy rows), ``<name>_summary.csv``
    (:func:`summary_table`), ``<name>_summary.tex`` (:func:`summary_latex`),
    ``<name>_paired.csv`` (:func:`paired_table`, only with ``reference``) and
    ``<name>_provenance.json`` (provenance plus the evaluation's ``meta``, the reference and
    ``extra``). Files already written with identical settings are kept (one line says so); any
    other existing target means nothing is written (:class:`FileExistsError`, naming what
    differs) unless ``overwrite=True``.

    Returns:
        kind (``episodes``, ``summary``, ``summary_tex``, ``paired``, ``provenance``) -> path.
    """
    if not _NAME.match(name):
        raise ValueError(
            f"result name {name!r} must be a plain file-name stem (letters, digits, . _ -)"
        )
    rows = evaluation.rows
    summary = summary_table(rows)
    paired = paired_table(rows, reference) if reference is not None else None
    results = Path(run_dir) / "results"
    targets = {
        "episodes": results / f"{name}_episodes.csv",
        "summary": results / f"{name}_summary.csv",
        "summary_tex": results / f"{name}_summary.tex",
    }
    if paired is not None:
        targets["paired"] = results / f"{name}_paired.csv"
    targets["provenance"] = results / f"{name}_provenance.json"
    texts = {
        targets["episodes"]: rows.to_csv(index=False),
        targets["summary"]: summary.to_csv(index=False),
        targets["summary_tex"]: summary_latex(summary),
    }
    if paired is not None:
        texts[targets["paired"]] = paired.to_csv(index=False)
    meta: dict[str, Any] = {
        **evaluation.meta,
        "name": name,
        "reference": reference,
        "files": {k: p.name for k, p in targets.items()},
        "n_rows": len(rows),
        **extra,
    }
    seed, device = meta.pop("seed", None), meta.pop("device", None)
    payload = provenance(seed=seed, device=device, evaluation_device=device, **meta)
    texts[targets["provenance"]] = json_text(payload)
    if overwrite:
        for path, text in texts.items():
            atomic_write_text(path, text)
    else:
        write_or_match(
            texts, f"results {name!r}",
            "choose another name, a new run directory, or pass overwrite=True",
        )  # fmt: skip
    return targets
