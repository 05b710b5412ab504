"""Figure basics every plot shares: the palettes, labels, and saving as PDF + PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ptx_utils.core.io import atomic_open

#: The Okabe-Ito palette (colour-blind safe).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: One colour per search method.
SEARCH_COLORS = {"evolution": OKABE_ITO[0], "random": OKABE_ITO[1]}

#: A fixed colour per strategy, so every figure of a run uses the same ones.
STRATEGY_COLORS = {
    "searched": OKABE_ITO[5],
    "linear probe": OKABE_ITO[0],
    "full fine-tune": OKABE_ITO[1],
    "last-1": OKABE_ITO[2],
    "BN-affine": OKABE_ITO[3],
}


def short_label(name: str, width: int = 24) -> str:
    """``name`` shortened in the middle to at most ``width`` characters (for tick labels)."""
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return f"{name[:head]}…{name[-(width - 1 - head) :]}"


def save_figure(fig: Figure, stem: str | Path, dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``stem.pdf`` and ``stem.png`` (atomic writes); return both paths."""
    stem = Path(stem)
    paths = []
    for ext in ("pdf", "png"):
        path = stem.with_suffix(f".{ext}")
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format=ext, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


def strategy_palette(names: Sequence[str]) -> dict[str, str]:
    """name -> colour: :data:`STRATEGY_COLORS` where known, then the rest of Okabe-Ito, then
    matplotlib's ``tab20`` (the survey compares more strategies than Okabe-Ito has colours)."""
    from matplotlib.colors import to_hex

    tab20 = [to_hex(c) for c in plt.get_cmap("tab20").colors]  # type: ignore[attr-defined]
    spare = [c for c in OKABE_ITO if c not in STRATEGY_COLORS.values()] + tab20
    palette, i = {}, 0
    for name in dict.fromkeys(names):
        if name in STRATEGY_COLORS:
            palette[name] = STRATEGY_COLORS[name]
        else:
            palette[name] = spare[i % len(spare)]
            i += 1
    return palette


def rate_colormap(n_rates: int) -> Any:
    """The colours of a scheme's learning rates, slowest first: frozen is the palest, the fastest
    rate the darkest (cividis, readable in colour-blind vision and in grey). Every figure that
    colours a layer by its rate uses it."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(plt.get_cmap("cividis_r")(np.linspace(0.05, 0.95, n_rates)))


def lr_code(lr: float, zoo: Sequence[float]) -> float:
    """A rate's position in the zoo (the colour index), NaN when it is not in the zoo."""
    return float(list(zoo).index(lr)) if lr in zoo else float("nan")


def accuracy_errorbar(ax: Any, x: Any, part: Any, name: str, color: str, lw: float) -> None:
    """One strategy's accuracy line: ``part``'s ``mean`` ± ``ci95`` (fractions) in percent."""
    ax.errorbar(
        x,
        100 * part["mean"],
        yerr=100 * part["ci95"],
        marker="o",
        ms=4,
        capsize=2,
        color=color,
        label=name,
        lw=lw,
    )


def legend_below(fig: Figure, ax: Any, ncol: int = 3, fontsize: int = 7) -> None:
    """``ax``'s legend below every panel of ``fig``, clear of the data, in at most ``ncol``
    columns that fit the figure's width (it grows taller by the legend's rows), then a tight
    layout above it."""
    handles, labels = ax.get_legend_handles_labels()
    width, height = fig.get_size_inches()
    column = 0.5 + 0.06 * fontsize * max(map(len, labels), default=1) / 7  # inches, estimated
    ncol = max(1, min(ncol, len(labels), int(width // column)))
    extra = 0.16 * -(-len(labels) // ncol) + 0.08  # inches: rows of 7-point text and a margin
    fig.set_size_inches(width, height + extra)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=fontsize, frameon=False)
    fig.tight_layout(rect=(0, extra / (height + extra), 1, 1))
