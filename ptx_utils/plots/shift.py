"""Domain-shift figures: the searched scheme per target, accuracy vs shift."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ptx_utils.plots.common import (
    OKABE_ITO,
    accuracy_errorbar,
    legend_below,
    lr_code,
    rate_colormap,
    short_label,
    strategy_palette,
)


def shift_scheme_map(schemes: Any, zoo: Sequence[float] | None = None) -> Figure:
    """The searched scheme at every target: rows = targets (growing shift, top to bottom),
    columns = layers, colour = learning rate (frozen lightest); the right column counts the
    fine-tuned layers. ``schemes``: the ``domain_shift_schemes.csv`` frame."""
    from matplotlib.colors import BoundaryNorm

    targets = list(dict.fromkeys(schemes.sort_values("order")["target"]))
    layers = list(dict.fromkeys(schemes.sort_values("layer_index")["layer"]))
    zoo = sorted(set(schemes["lr"])) if zoo is None else list(zoo)
    grid = np.full((len(targets), len(layers)), np.nan)
    for r in schemes.itertuples():
        grid[targets.index(r.target), layers.index(r.layer)] = lr_code(r.lr, zoo)
    cmap = rate_colormap(len(zoo))
    norm = BoundaryNorm(np.arange(len(zoo) + 1) - 0.5, len(zoo))
    fig, ax = plt.subplots(figsize=(1.6 + 0.8 * len(layers), 0.8 + 0.45 * len(targets)))
    image = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto")
    for i in range(len(targets)):
        for j in range(len(layers)):
            if np.isfinite(grid[i, j]):
                lr = zoo[int(grid[i, j])]
                ax.text(
                    j,
                    i,
                    "frozen" if lr == 0 else f"{lr:g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if grid[i, j] >= len(zoo) / 2 else "black",
                )
        n = int(np.sum(np.isfinite(grid[i]) & (grid[i] > 0))) if 0 in zoo else 0
        ax.text(len(layers) - 0.35, i, f"{n} tuned", va="center", fontsize=8)
    ax.set_xticks(range(len(layers)), [short_label(n, 12) for n in layers])
    ax.set_yticks(range(len(targets)), targets)
    ax.set(xlabel="layer (input → output)", title="searched scheme per target")
    ax.set_xlim(-0.5, len(layers) + 0.6)
    cbar = fig.colorbar(image, ax=ax, ticks=range(len(zoo)), fraction=0.05, pad=0.02)
    cbar.ax.set_yticklabels(["frozen" if lr == 0 else f"{lr:g}" for lr in zoo])
    fig.tight_layout()
    return fig


def shift_figure(summary: Any, title: str | None = None, n_layers: int | None = None) -> Figure:
    """Accuracy vs target per strategy (mean ± 95 % CI) and the number of layers the searched
    scheme fine-tunes; targets ordered by growing shift. ``summary``: the
    ``domain_shift_summary.csv`` frame; ``n_layers`` (the backbone's) bounds the count axis."""
    summary = summary.sort_values(["order"], kind="stable")
    targets = list(dict.fromkeys(summary["target"]))
    names = list(dict.fromkeys(summary["strategy"]))
    palette = strategy_palette(names)
    x = np.arange(len(targets))
    fig, (ax, ax_n) = plt.subplots(
        1, 2, figsize=(4.0 + 1.1 * len(targets), 3.4), gridspec_kw={"width_ratios": [2.2, 1]}
    )
    offsets = np.linspace(-0.12, 0.12, len(names)) if len(names) > 1 else [0.0]
    for off, name in zip(offsets, names, strict=True):
        part = summary[summary["strategy"] == name].set_index("target").reindex(targets)
        lw = 2.2 if name == "searched" else 1.2
        accuracy_errorbar(ax, x + off, part, name, palette[name], lw)
    if "n_way" in summary.columns:
        ax.axhline(100 / summary["n_way"].iloc[0], color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(x, targets, rotation=20)
    ax.set(
        xlabel="target (growing shift →)",
        ylabel="test accuracy (%) ± 95% CI",
        title="accuracy per strategy",
    )
    searched = summary[summary["strategy"] == "searched"].set_index("target").reindex(targets)
    ax_n.bar(x, searched["n_trainable"], color=palette.get("searched", OKABE_ITO[5]))
    ax_n.set_xticks(x, targets, rotation=20)
    ax_n.set(xlabel="target", ylabel="layers fine-tuned", title="searched scheme")
    if n_layers:
        ax_n.set_ylim(0, n_layers)
    ax_n.yaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=10)
    legend_below(fig, ax)
    return fig
