"""Search figures: every candidate and the best so far, a live plot, the best schemes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ptx_utils.plots.common import OKABE_ITO, SEARCH_COLORS, short_label
from ptx_utils.search import GenerationReport, SearchResult


def search_figure(
    results: SearchResult | Mapping[str, SearchResult], title: str | None = None
) -> Figure:
    """Search progress: every evaluated candidate's validation fitness (dots) and the best so
    far (line) against the number of candidates evaluated, one colour per search.

    ``results``: one search, or label -> search (e.g. ``{"evolution": ea, "random": rs}``).
    """
    if not isinstance(results, Mapping):
        results = {results.config.method: results}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    methods = [r.config.method for r in results.values()]
    by_method = len(set(methods)) == len(methods)
    for i, (label, result) in enumerate(results.items()):
        color = SEARCH_COLORS[result.config.method] if by_method else OKABE_ITO[i % len(OKABE_ITO)]
        fitness = np.array([c.fitness for c in result.candidates])
        raced = np.array([c.raced_out for c in result.candidates], dtype=bool)
        n = np.arange(1, len(fitness) + 1)
        curve = result.best_so_far()
        ax.scatter(n[~raced], fitness[~raced], s=9, alpha=0.35, color=color, lw=0)
        if raced.any():  # partial fitness of raced-out candidates: hollow
            ax.scatter(n[raced], fitness[raced], s=9, alpha=0.5, facecolors="none",
                       edgecolors=color, lw=0.6)  # fmt: skip
        best = f" (best {curve['best_fitness'].iloc[-1]:.3f})" if len(curve) else ""
        ax.step(
            curve["n_evaluated"],
            curve["best_fitness"],
            where="post",
            color=color,
            label=f"{label}{best}",
        )
    ax.set(
        xlabel="candidates evaluated",
        ylabel="validation accuracy",
        title=title or "search: every candidate (dots; hollow: raced out) and best so far",
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


class LiveSearchPlot:
    """A search callback that redraws :func:`search_figure` in a notebook after each generation.

    Pass it as ``callback=`` to :func:`ptx_utils.search.search`; ``others`` (label -> finished
    search) are drawn beside the running one. Outside IPython it does nothing (a plain script
    still gets the one-line summaries), and under papermill it leaves the last figure in the
    cell's output.
    """

    def __init__(self, others: Mapping[str, SearchResult] | None = None, label: str = "") -> None:
        self.others = dict(others or {})
        self.label = label
        self._handle: Any = None

    def __call__(self, report: GenerationReport) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        label = self.label or report.result.config.method
        fig = search_figure(
            {label: report.result, **self.others},
            title=f"generation {report.generation + 1}/{report.generations}: "
            f"best {report.best.fitness:.3f}",
        )
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)


def scheme_heatmap(result: SearchResult, top: int = 10, title: str | None = None) -> Figure:
    """The searched scheme as a layer x learning-rate map.

    Cell (rate, layer) shows the share of the ``top`` fittest evaluated schemes that give that
    layer that rate (how sure the search is); the best scheme's choices are outlined and marked.
    """
    from ptx_utils.search import ranked

    zoo = list(result.config.lr_zoo)
    layers = list(result.layer_names)
    best = [c.scheme for c in ranked(result.candidates)]
    chosen = best[:top]
    share = np.zeros((len(zoo), len(layers)))
    for scheme in chosen:
        for j, lr in enumerate(scheme.lrs):
            share[zoo.index(lr), j] += 1 / len(chosen)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(layers), 0.9 + 0.55 * len(zoo)))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    for j, lr in enumerate(best[0].lrs):
        i = zoo.index(lr)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.2, ec="#D55E00"))
    for i in range(len(zoo)):
        for j in range(len(layers)):
            dark = share[i, j] > 0.6
            ax.text(
                j,
                i,
                f"{share[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(len(layers)), [short_label(n, 12) for n in layers], rotation=45, ha="right")
    ax.set_yticks(range(len(zoo)), [f"{lr:g}" + (" (frozen)" if lr == 0 else "") for lr in zoo])
    ax.set(xlabel="layer (input → output)", ylabel="learning rate")
    ax.set_title(
        title or f"best scheme (outlined): {best[0]}\nshading: share of the top {len(chosen)}",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    return fig


# --- strategies, episodes and domain shift ------------------------------------------------------
