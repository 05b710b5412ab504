"""Accuracy against adaptation length: mean ± 95 % CI per strategy after each update count."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ptx_utils.plots.common import short_label, strategy_palette


def steps_figure(summary: Any, title: str | None = None) -> Figure:
    """One panel per (n_way, k_shot) of :func:`~ptx_utils.evaluation.steps.steps_summary`: a
    line per strategy over the update counts (symmetric-log axis, so 0 fits), a band for the
    95 % CI; strategies that do not train are flat lines."""
    settings = list(dict.fromkeys(zip(summary["n_way"], summary["k_shot"], strict=True)))
    names = list(dict.fromkeys(summary["strategy"]))
    palette = strategy_palette(names)
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.8), squeeze=False)
    for ax, (n_way, k_shot) in zip(axes[0], settings, strict=True):
        part = summary[(summary["n_way"] == n_way) & (summary["k_shot"] == k_shot)]
        for name in names:
            rows = part[part["strategy"] == name].sort_values("passes")
            x = rows["passes"].to_numpy(dtype=float)
            m = 100 * rows["mean"].to_numpy(dtype=float)
            c = 100 * rows["ci95"].to_numpy(dtype=float)
            ax.plot(x, m, marker="o", ms=3, lw=1.4, color=palette[name], label=short_label(name))
            ax.fill_between(x, m - c, m + c, color=palette[name], alpha=0.15, lw=0)
        ax.set_xscale("symlog", linthresh=1)
        ticks = sorted({int(p) for p in part["passes"]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set(xlabel="updates (passes over the support set; TSA: steps)",
               ylabel="test accuracy (%) ± 95% CI",
               title=f"{int(n_way)}-way {int(k_shot)}-shot")  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["steps_figure"]
