"""Notebook 05's figures: every run's strategies, domain shift and searches side by side."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ptx_utils.plots.common import OKABE_ITO, accuracy_errorbar, legend_below, strategy_palette
from ptx_utils.steps.analysis import RunCollection, transfer_table


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
            figsize=(max(7.5, 0.8 + 3.8 * len(runs)), 5.4),
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
                lw = 2.2 if name == "searched" else 1.1
                accuracy_errorbar(ax, x, line, name, palette[name], lw)
            ax.set_xticks(x, targets, rotation=15, fontsize=7)
            ax.set(title=run, ylabel="test accuracy (%)")
            searched = part[part["strategy"] == "searched"].set_index("target").reindex(targets)
            axes[1][j].bar(x, searched["n_trainable"], color=palette.get("searched", OKABE_ITO[5]))
            axes[1][j].set_xticks(x, targets, rotation=15, fontsize=7)
            axes[1][j].set(
                ylabel="layers fine-tuned\n(searched)", xlabel="target (growing shift →)"
            )
            axes[1][j].yaxis.get_major_locator().set_params(integer=True)
        legend_below(fig, axes[0][0], ncol=max(3, 2 * len(runs)))
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
