"""Strategy figures: accuracy per strategy (mean ± 95 % CI) and per-episode distributions."""

from __future__ import annotations

import warnings
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ptx_utils.plots.common import short_label, strategy_palette


def _setting_title(n_way: Any, k_shot: Any) -> str:
    return f"{int(n_way)}-way {int(k_shot)}-shot"


def strategy_figure(summary: Any, title: str | None = None) -> Figure:
    """Mean accuracy ± 95 % CI per strategy, one panel per (n_way, k_shot) of a
    :func:`~ptx_utils.evaluation.summary_table`; the searched scheme's mean is a dashed line."""
    settings = list(dict.fromkeys(zip(summary["n_way"], summary["k_shot"], strict=True)))
    names = list(dict.fromkeys(summary["strategy"]))
    palette = strategy_palette(names)
    fig, axes = plt.subplots(
        1, len(settings), figsize=(3.6 * len(settings), 0.5 + 0.45 * len(names)), squeeze=False
    )
    for ax, (n_way, k_shot) in zip(axes[0], settings, strict=True):
        part = summary[(summary["n_way"] == n_way) & (summary["k_shot"] == k_shot)]
        part = part.set_index("strategy").reindex(names)
        y = np.arange(len(names))
        ax.barh(
            y,
            100 * part["mean"],
            xerr=100 * part["ci95"],
            capsize=3,
            color=[palette[n] for n in names],
        )
        for yi, (m, c) in enumerate(zip(part["mean"], part["ci95"], strict=True)):
            if np.isfinite(m):
                ax.text(100 * (m + c) + 0.5, yi, f"{100 * m:.1f}", va="center", fontsize=7)
        if "searched" in part.index and np.isfinite(part.loc["searched", "mean"]):
            ax.axvline(100 * part.loc["searched", "mean"], color=palette["searched"], ls="--", lw=1)
        low = np.nanmin(100 * (part["mean"] - part["ci95"]))
        ax.set_xlim(max(0.0, low - 10), 100)
        ax.set_yticks(y, [short_label(n) for n in names])
        ax.invert_yaxis()
        ax.set(xlabel="test accuracy (%) ± 95% CI", title=_setting_title(n_way, k_shot))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def episode_distribution(rows: Any, title: str | None = None) -> Figure:
    """Per-episode accuracy of every strategy (box + points), one panel per (n_way, k_shot).

    ``rows``: the tidy frame of :func:`~ptx_utils.evaluation.evaluate_strategies` (diverged
    episodes, NaN, are left out and counted in the tick label).
    """
    import seaborn as sns

    settings = list(dict.fromkeys(zip(rows["n_way"], rows["k_shot"], strict=True)))
    names = list(dict.fromkeys(rows["strategy"]))
    palette = strategy_palette(names)
    fig, axes = plt.subplots(
        1, len(settings), figsize=(0.6 + 1.1 * len(names) * len(settings), 3.4), squeeze=False
    )
    for ax, (n_way, k_shot) in zip(axes[0], settings, strict=True):
        part = rows[(rows["n_way"] == n_way) & (rows["k_shot"] == k_shot)]
        part = part.assign(percent=100 * part["accuracy"])
        common = {
            "data": part,
            "x": "strategy",
            "y": "percent",
            "hue": "strategy",
            "order": names,
            "palette": palette,
            "ax": ax,
            "legend": False,
        }
        with warnings.catch_warnings():
            # seaborn 0.13 passes matplotlib 3.11's deprecated ``vert`` to ``bxp``: not ours to fix.
            warnings.filterwarnings("ignore", message=".*vert: bool.*")
            sns.boxplot(**common, showfliers=False, width=0.6, boxprops={"alpha": 0.45})
        sns.stripplot(**common, size=2.2, alpha=0.5, jitter=0.25)
        means = part.groupby("strategy")["percent"].mean().reindex(names)
        ax.scatter(
            range(len(names)), means, marker="D", color="black", s=18, zorder=5, label="mean"
        )
        ax.axhline(100 / n_way, color="grey", ls=":", lw=1, label="chance")
        ax.set_xticks(
            range(len(names)), [short_label(n, 14) for n in names], rotation=30, ha="right"
        )
        ax.set(
            xlabel="",
            ylabel="accuracy per episode (%)",
            title=f"{_setting_title(n_way, k_shot)}, {part['episode'].nunique()} episodes",
        )
        ax.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
