"""Where SpotTune routes against domain shift, beside the searched scheme's rates per block."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def routing_figure(
    summaries: Mapping[str, pd.DataFrame],
    searched: Mapping[str, Sequence[float]],
    title: str | None = None,
) -> Figure:
    """A panel per SpotTune strategy: the fraction of queries routed to the tuned copy per block
    (mean ± sd over episodes), a line per target; a last panel: the searched scheme's rate per
    block for the same targets (symmetric-log axis, 0 = frozen).

    Args:
        summaries: target label -> :func:`~ptx_utils.evaluation.routing.routing_summary`.
        searched: target label -> the searched scheme's per-layer rates (one per block).
    """
    targets = list(summaries)
    names = list(dict.fromkeys(n for s in summaries.values() for n in s["strategy"]))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(targets), 2)))
    n = len(names) + 1
    cols = min(4, n)
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    axes = grid.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, name in zip(axes, names, strict=False):
        for color, target in zip(colors, targets, strict=False):
            part = summaries[target]
            part = part[part["strategy"] == name].sort_values("block")
            x = part["block"].to_numpy() + 1
            m, sd = part["mean"].to_numpy(), part["std"].fillna(0).to_numpy()
            ax.plot(x, m, marker="o", ms=4, color=color, label=target)
            ax.fill_between(
                x, np.clip(m - sd, 0, 1), np.clip(m + sd, 0, 1), color=color, alpha=0.12, lw=0
            )
        ax.set(ylim=(-0.03, 1.03), xlabel="block", ylabel="queries routed to the tuned copy",
               title=name)  # fmt: skip
        ax.set_xticks(range(1, int(x.max()) + 1))
        ax.grid(alpha=0.3)
    ax = axes[n - 1]
    for color, target in zip(colors, targets, strict=False):
        rates = np.asarray(searched.get(target, ()), dtype=float)
        if rates.size:
            ax.plot(
                np.arange(1, rates.size + 1), rates, marker="s", ms=4, color=color, label=target
            )
    top = max([max(rates, default=0.0) for rates in searched.values()], default=0.0)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(-2e-4, max(2.0 * top, 1e-2))  # rates are never negative; 0 sits at the bottom
    ax.set(xlabel="block", ylabel="learning rate (0 = frozen)", title="searched scheme")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
