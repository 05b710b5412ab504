"""What the explorers share: the :class:`Explorer` protocol, display bundles, bars, :func:`show`.

Widgets draw into an ``ipywidgets.Output`` by setting its ``outputs`` to the PNG (and HTML table)
bundles built here, closing every figure they draw, so they behave the same with any matplotlib
backend, in a kernel or not. ``ipywidgets`` and ``IPython`` are imported only when a widget is
built or something is displayed. See ``docs/widgets.md``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ptx_utils.finetuning import DEFAULT_HEAD_LR, Scheme, Strategy, as_strategy
from ptx_utils.plots import OKABE_ITO, save_figure, short_label

__all__ = [
    "EARLIER_COLOR",
    "FROZEN_COLOR",
    "HIGHLIGHT_COLOR",
    "REFERENCE_COLOR",
    "Explorer",
    "scheme_label",
    "show",
]

#: Colour of reference strategies and of the highlighted (user's / extra) schemes.
REFERENCE_COLOR = OKABE_ITO[0]
HIGHLIGHT_COLOR = OKABE_ITO[5]
EARLIER_COLOR = OKABE_ITO[1]
FROZEN_COLOR = "#BBBBBB"


class Explorer(Protocol):
    """What :func:`show` needs: an interactive widget and a static figure of the same content."""

    def widget(self) -> Any:
        """An ipywidgets box."""
        ...

    def static_figure(self) -> Figure:
        """A matplotlib figure of the same content."""
        ...


# -- display bundles ------------------------------------------------------------------------------


def _figure_bundle(fig: Figure, dpi: int = 100) -> dict[str, Any]:
    """``fig`` as a PNG display bundle for an ``Output`` widget; the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return {
        "output_type": "display_data",
        "data": {
            "image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "text/plain": "<Figure>",
        },
        "metadata": {},
    }


def _frame_bundle(frame: pd.DataFrame) -> dict[str, Any]:
    """A data frame as an HTML (and plain-text) display bundle, as ``display(frame)`` shows it."""
    return {
        "output_type": "display_data",
        "data": {
            "text/html": frame.to_html(index=False, float_format=lambda x: f"{x:.4f}"),
            "text/plain": frame.to_string(index=False),
        },
        "metadata": {},
    }


def _error_bundle(exc: BaseException) -> dict[str, Any]:
    return {"output_type": "stream", "name": "stderr", "text": f"{type(exc).__name__}: {exc}\n"}


def _ipython() -> Any:
    """The running IPython shell, or None (plain Python, pytest, IPython not installed)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


# -- labels and bars ------------------------------------------------------------------------------


def _rate(lr: float) -> str:
    return "frozen" if lr == 0 else f"{lr:g}"


def scheme_label(name: str, scheme: Scheme | Strategy) -> str:
    """``"name (lr lr lr ...)"``, with ``, head h`` when the head rate is not the default,
    ``, bn only`` for BN-affine schemes and a strategy's non-default fields (``, cosine``),
    e.g. ``"last-1 (0 0 0 0.01)"``."""
    strategy = as_strategy(scheme)
    body = " ".join(f"{x:g}" for x in strategy.lrs)
    if strategy.head_lr != DEFAULT_HEAD_LR:
        body += f", head {strategy.head_lr:g}"
    if strategy.scheme.params == "bn":
        body += ", bn only"
    # str(strategy) is the scheme's text followed by " | field" for each non-default field.
    for part in str(strategy)[len(str(strategy.scheme)) :].split(" | ")[1:]:
        body += f", {part}"
    return f"{name} ({body})" if name else body


@dataclass(frozen=True)
class _Bar:
    label: str
    mean: float
    ci95: float
    color: str


def _accuracy_barh(bars: Sequence[_Bar], chance: float | None, title: str, xlabel: str) -> Figure:
    """Horizontal bars of accuracy ± 95 % CI, the first bar on top."""
    n = len(bars)
    fig, ax = plt.subplots(figsize=(7.6, 0.42 * n + 1.4))
    y = np.arange(n)[::-1]
    means = np.array([b.mean for b in bars], dtype=np.float64)
    cis = np.array([b.ci95 for b in bars], dtype=np.float64)
    ax.barh(
        y,
        means,
        xerr=cis,
        color=[b.color for b in bars],
        height=0.7,
        capsize=3,
        error_kw={"elinewidth": 1.0, "ecolor": "black"},
    )
    for yi, m, c in zip(y, means, cis, strict=True):
        if np.isfinite(m):
            ax.text(
                min(m + c, 1.0) + 0.015,
                yi,
                f"{100 * m:.1f} ± {100 * c:.1f}%",
                va="center",
                fontsize=8,
            )
    ax.set_yticks(y, [short_label(b.label, 48) for b in bars], fontsize=8)
    if chance is not None:
        ax.axvline(chance, color="grey", ls="--", lw=1)
        ax.text(chance, n - 0.45, " chance", color="grey", fontsize=7, va="bottom")
    ax.set_xlim(0, 1.2)
    ax.set_ylim(-0.6, n - 0.1)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    colors = list(dict.fromkeys(b.color for b in bars))
    names = {REFERENCE_COLOR: "reference", HIGHLIGHT_COLOR: "yours", EARLIER_COLOR: "earlier tries"}
    handles = [Patch(color=c, label=names.get(c, "")) for c in colors if c in names]
    if len(handles) > 1:
        # Outside the axes: inside, it would hide the value labels of the last bars.
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


# -- show -----------------------------------------------------------------------------------------


def show(
    explorer: Explorer, figure_stem: str | Path | None = None, interactive: bool | None = None
) -> list[Path]:
    """Display an explorer's widget where it can run, and always its static figure.

    The widget is displayed when ``interactive`` is True and IPython runs, or ``interactive``
    is None (the default) and a live kernel runs (JupyterLab, papermill); never when False. The
    static figure is always built, displayed in IPython, saved as ``<figure_stem>.pdf`` and
    ``.png`` when ``figure_stem`` is given, and closed. Outside IPython nothing is displayed.

    Returns:
        The saved paths (empty without ``figure_stem``).
    """
    shell = _ipython()
    display: Any = None
    if shell is not None:
        from IPython.display import display
    live = shell is not None and getattr(shell, "kernel", None) is not None
    if display is not None and interactive is not False and (live or interactive):
        display(explorer.widget())
    fig = explorer.static_figure()
    try:
        if display is not None:
            display(fig)
        return [] if figure_stem is None else save_figure(fig, figure_stem)
    finally:
        plt.close(fig)
