"""Notebook 05: gather every run under ``runs/`` into paper tables and figures.

:func:`gather` reads each run directory's ``params.json`` and whatever results its notebooks
wrote (``results/search_summary.csv``, ``transfer_summary.csv``, ``transfer_vs_searched.csv``,
``domain_shift_summary.csv``, ``domain_shift_schemes.csv``) into tidy frames with a ``run``
column; a run that is missing a file is listed with what it lacks, never silently dropped.
:func:`write_tables` writes them as CSV and LaTeX (booktabs, mean ± 95 % CI in percent), the
figure functions draw them with seaborn in the Okabe-Ito palette.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ptx_utils.evaluation.harness import latex_escape
from ptx_utils.core.io import atomic_write_text
from ptx_utils.plots.figures import OKABE_ITO, strategy_palette

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


def _cell(mean: float, ci: float) -> str:
    if not np.isfinite(mean):
        return "--"
    return f"{100 * mean:.2f} $\\pm$ {100 * ci:.2f}"


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
        values = [cells[(r, c)][mean] for r in row_keys if (r, c) in cells]
        finite = [v for v in values if np.isfinite(v)]
        best[c] = max(finite) if finite else None
    lines = []
    if caption is not None:
        lines += ["\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(caption)}}}"]
    lines += [
        "\\begin{tabular}{l" + "c" * len(col_keys) + "}",
        "\\toprule",
        " & ".join([latex_escape(" / ".join(index)), *map(latex_escape, col_keys)]) + " \\\\",
        "\\midrule",
    ]
    for r in row_keys:
        row = [latex_escape(r)]
        for c in col_keys:
            rec = cells.get((r, c))
            text = "--" if rec is None else _cell(rec[mean], rec[ci])
            if bold_best and rec is not None and rec[mean] == best[c] and text != "--":
                text = f"\\textbf{{{text}}}"
            row.append(text)
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if caption is not None:
        lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


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


# --- figures --------------------------------------------------------------------------------------


def _style() -> Any:
    """seaborn's white-grid style, as a context manager."""
    import seaborn as sns

    return sns.axes_style("whitegrid")


def transfer_overview(collection: RunCollection) -> Figure:
    """Mean test accuracy ± 95 % CI per strategy, one panel per (run, setting)."""
    table = transfer_table(collection)
    if table.empty:
        raise ValueError("no transfer results in any run: run notebook 03_transfer first")
    panels = list(dict.fromkeys(zip(table["run"], table["setting"], strict=True)))
    names = list(dict.fromkeys(table["strategy"]))
    palette = strategy_palette(names)
    with _style():
        fig, axes = plt.subplots(
            1,
            len(panels),
            figsize=(0.8 + 2.6 * len(panels), 0.9 + 0.4 * len(names)),
            squeeze=False,
            sharey=True,
        )
        for ax, (run, setting) in zip(axes[0], panels, strict=True):
            part = table[(table["run"] == run) & (table["setting"] == setting)]
            part = part.set_index("strategy").reindex(names)
            y = np.arange(len(names))
            ax.errorbar(
                100 * part["mean"],
                y,
                xerr=100 * part["ci95"],
                fmt="none",
                ecolor="black",
                capsize=3,
                lw=1,
            )
            ax.scatter(100 * part["mean"], y, c=[palette[n] for n in names], s=40, zorder=3)
            ax.set_yticks(y, names)
            ax.set_title(f"{run}\n{setting}", fontsize=8)
            ax.set_xlabel("test accuracy (%)")
        axes[0][0].invert_yaxis()
        fig.tight_layout()
    return fig


def shift_overview(collection: RunCollection) -> Figure:
    """Per run: accuracy vs target per strategy (top) and layers the searched scheme
    fine-tunes (bottom)."""
    shift = collection["shift"]
    if shift.empty:
        raise ValueError("no domain-shift results in any run: run notebook 04_domain_shift first")
    runs = list(dict.fromkeys(shift["run"]))
    names = list(dict.fromkeys(shift["strategy"]))
    palette = strategy_palette(names)
    with _style():
        fig, axes = plt.subplots(
            2,
            len(runs),
            figsize=(0.8 + 3.8 * len(runs), 5.4),
            squeeze=False,
            gridspec_kw={"height_ratios": [2, 1]},
        )
        for j, run in enumerate(runs):
            part = shift[shift["run"] == run].sort_values("order", kind="stable")
            targets = list(dict.fromkeys(part["target"]))
            x = np.arange(len(targets))
            ax = axes[0][j]
            for name in names:
                line = part[part["strategy"] == name].set_index("target").reindex(targets)
                ax.errorbar(
                    x,
                    100 * line["mean"],
                    yerr=100 * line["ci95"],
                    marker="o",
                    ms=4,
                    capsize=2,
                    color=palette[name],
                    label=name,
                    lw=2.2 if name == "searched" else 1.1,
                )
            ax.set_xticks(x, targets, rotation=15, fontsize=7)
            ax.set(title=run, ylabel="test accuracy (%)")
            searched = part[part["strategy"] == "searched"].set_index("target").reindex(targets)
            axes[1][j].bar(x, searched["n_trainable"], color=palette.get("searched", OKABE_ITO[5]))
            axes[1][j].set_xticks(x, targets, rotation=15, fontsize=7)
            axes[1][j].set(
                ylabel="layers fine-tuned\n(searched)", xlabel="target (growing shift →)"
            )
            axes[1][j].yaxis.get_major_locator().set_params(integer=True)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
    return fig


def search_overview(collection: RunCollection) -> Figure:
    """Best validation fitness per search method and protocol, per run."""
    import seaborn as sns

    searches = collection["search"]
    if searches.empty:
        raise ValueError("no search results in any run: run notebook 02_search first")
    frame = searches.assign(
        protocol=[
            f"{r} {w}w{k}s"
            for r, w, k in zip(searches["run"], searches["n_way"], searches["k_shot"], strict=True)
        ],
        percent=100 * searches["best_fitness"],
    )
    methods = list(dict.fromkeys(frame["method"]))
    palette = {m: OKABE_ITO[i] for i, m in enumerate(methods)}
    with _style():
        fig, ax = plt.subplots(figsize=(1.5 + 1.2 * frame["protocol"].nunique(), 3.2))
        sns.barplot(data=frame, x="protocol", y="percent", hue="method", palette=palette, ax=ax)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.1f", fontsize=7)
        low = frame["percent"].min()
        ax.set_ylim(max(0, low - 10), 100)
        ax.set(
            xlabel="",
            ylabel="best validation accuracy (%)",
            title="search: best fitness at equal budget",
        )
        ax.tick_params(axis="x", labelsize=7, rotation=15)
        fig.tight_layout()
    return fig
