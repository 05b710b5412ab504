"""The search-history browser: step through a search's generations and see the candidates'
fitness, the best so far, the top schemes and how the population converges.

Live in JupyterLab with :meth:`SearchHistoryBrowser.widget`;
:meth:`SearchHistoryBrowser.static_figure` is its matplotlib twin (see ``docs/widgets.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ptx_utils.plots import OKABE_ITO, SEARCH_COLORS, rate_colormap, short_label
from ptx_utils.search import Candidate, SearchResult, ranked
from ptx_utils.widgets.render import _error_bundle, _figure_bundle, _frame_bundle, _rate

if TYPE_CHECKING:
    import ipywidgets

__all__ = ["TABLE_COLUMNS", "SearchHistoryBrowser"]

#: Columns of :meth:`SearchHistoryBrowser.table`.
TABLE_COLUMNS = ("rank", "scheme", "fitness", "generation", "origin")


class SearchHistoryBrowser:
    """Step through searches generation by generation.

    Args:
        results: label -> search, e.g. ``{"evolution": ea, "random": rs}``.
        top: how many of the best schemes the table and the heat maps show.

    Generations are counted from 1 here: "up to generation g" means the candidates of the first
    g generations (``Candidate.generation < g``, that field counting from 0).
    """

    def __init__(self, results: Mapping[str, SearchResult], top: int = 10) -> None:
        if not results:
            raise ValueError(
                "SearchHistoryBrowser needs at least one search (label -> SearchResult)"
            )
        for label, result in results.items():
            if not isinstance(result, SearchResult):
                raise ValueError(
                    f"search {label!r} must be a SearchResult, got {type(result).__name__}"
                )
            if not result.candidates:
                raise ValueError(
                    f"search {label!r} has no evaluated candidate; run it (or load a state with "
                    "at least one finished generation) first"
                )
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        self.results: dict[str, SearchResult] = dict(results)
        self.top = int(top)
        self.generations: dict[str, int] = {
            label: 1 + max(c.generation for c in r.candidates) for label, r in self.results.items()
        }
        self.rates: tuple[float, ...] = tuple(
            sorted(
                {float(x) for r in self.results.values() for x in r.config.lr_zoo}
                | {x for r in self.results.values() for c in r.candidates for x in c.scheme.lrs}
            )
        )
        self.dropdown: ipywidgets.Dropdown | None = None
        self.slider: ipywidgets.IntSlider | None = None
        self.output: ipywidgets.Output | None = None

    def _check(self, label: str, generation: int) -> None:
        if label not in self.results:
            raise ValueError(f"unknown search {label!r}; searches: {', '.join(self.results)}")
        g = self.generations[label]
        if not 1 <= generation <= g:
            raise ValueError(
                f"generation must lie in 1..{g} for search {label!r} (counted from 1), got "
                f"{generation}"
            )

    def _upto(self, label: str, generation: int) -> list[Candidate]:
        return [c for c in self.results[label].candidates if c.generation < generation]

    def _top(self, label: str, generation: int) -> list[Candidate]:
        return ranked(self._upto(label, generation))[: self.top]

    def table(self, label: str, generation: int) -> pd.DataFrame:
        """The ``top`` best schemes evaluated in the first ``generation`` generations of search
        ``label``, best first: columns rank, scheme, fitness, generation (the candidate's, from
        0 as in ``SearchResult.history``), origin."""
        self._check(label, generation)
        return pd.DataFrame(
            [
                {
                    "rank": i + 1,
                    "scheme": str(c.scheme),
                    "fitness": c.fitness,
                    "generation": c.generation,
                    "origin": c.origin,
                }
                for i, c in enumerate(self._top(label, generation))
            ],
            columns=list(TABLE_COLUMNS),
        )

    # -- figures ----------------------------------------------------------------------------------

    def _color(self, i: int, label: str) -> str:
        methods = [r.config.method for r in self.results.values()]
        if len(set(methods)) == len(methods):
            return SEARCH_COLORS.get(self.results[label].config.method, OKABE_ITO[i % 8])
        return OKABE_ITO[i % len(OKABE_ITO)]

    def progress_figure(self, generation: int, selected: str | None = None) -> Figure:
        """Every search up to ``generation``: each candidate's fitness (dots) and the best so far
        (step line) against candidates evaluated; ``selected`` drawn on top, the others fainter."""
        fig, ax = plt.subplots(figsize=(6.6, 3.5))
        for i, label in enumerate(self.results):
            candidates = self._upto(label, min(generation, self.generations[label]))
            fitness = np.array([c.fitness for c in candidates], dtype=np.float64)
            n = np.arange(1, len(fitness) + 1)
            strong = selected is None or label == selected
            color = self._color(i, label)
            z = 3 if strong else 2  # the selected search on top
            ax.scatter(
                n, fitness, s=11, alpha=0.45 if strong else 0.15, color=color, lw=0, zorder=z
            )
            best = np.maximum.accumulate(fitness)
            ax.step(
                n,
                best,
                where="post",
                color=color,
                lw=2.0 if strong else 1.0,
                alpha=1.0 if strong else 0.5,
                zorder=z,
                label=f"{label} (best {best[-1]:.3f})",
            )
        ax.set(
            xlabel="candidates evaluated",
            ylabel="validation accuracy",
            title=f"up to generation {generation}: candidates (dots), best so far (line)",
        )
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        return fig

    def _heatmap(self, ax: Any, label: str, generation: int, cmap: ListedColormap) -> Any:
        top = self._top(label, generation)
        layers = self.results[label].layer_names
        index = np.full((self.top, len(layers)), np.nan)
        for i, c in enumerate(top):
            index[i] = [self.rates.index(x) for x in c.scheme.lrs]
        image = ax.imshow(
            np.ma.masked_invalid(index),
            cmap=cmap,
            vmin=-0.5,
            vmax=len(self.rates) - 0.5,
            aspect="auto",
            interpolation="nearest",
        )
        size = 7 if len(layers) <= 8 else 5.5
        for i, c in enumerate(top):
            for j, lr in enumerate(c.scheme.lrs):
                dark = self.rates.index(lr) >= len(self.rates) / 2
                ax.text(
                    j,
                    i,
                    f"{lr:g}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if dark else "black",
                )
        ax.set_yticks(
            range(len(top)), [f"{i + 1}. {c.fitness:.3f}" for i, c in enumerate(top)], fontsize=7
        )
        ax.set_xticks(
            range(len(layers)), [short_label(n, 10) for n in layers], rotation=60, ha="right"
        )
        ax.tick_params(axis="x", labelsize=7)
        n = len(self._upto(label, generation))
        span = "generation 1" if generation == 1 else f"generations 1–{generation}"
        ax.set_title(f"{label}: {span}\n({n} evaluated)", fontsize=8)
        return image

    def static_figure(self, generations: Sequence[int] | None = None) -> Figure:
        """Heat maps of the ``top`` schemes' per-layer rates (rows ranked best first, labelled
        with rank and fitness; columns = layers; colour = the rate), one row of panels per search
        and one column per generation in ``generations`` (default: first, middle, last), so one
        sees the population converge. A search with fewer generations shows its last one."""
        last = max(self.generations.values())
        if generations is None:
            chosen = sorted({1, (last + 1) // 2, last})
        else:
            chosen = [int(g) for g in generations]
            bad = [g for g in chosen if not 1 <= g <= last]
            if not chosen or bad:
                raise ValueError(
                    f"generations must be a non-empty list of values in 1..{last} (counted from "
                    f"1), got {list(generations)}"
                )
        n_layers = max(len(r.layer_names) for r in self.results.values())
        rows, cols = len(self.results), len(chosen)
        fig, axes = plt.subplots(
            rows,
            cols,
            figsize=(cols * (0.5 * n_layers + 1.6) + 1.2, rows * (0.28 * self.top + 1.9)),
            squeeze=False,
            layout="constrained",
        )
        cmap = rate_colormap(len(self.rates))
        image = None
        for r, label in enumerate(self.results):
            for k, g in enumerate(chosen):
                image = self._heatmap(axes[r][k], label, min(g, self.generations[label]), cmap)
            axes[r][0].set_ylabel(f"{label}\nrank. fitness", fontsize=8)
        colorbar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
        colorbar.set_ticks(range(len(self.rates)), labels=[_rate(x) for x in self.rates])
        colorbar.set_label("learning rate")
        fig.suptitle(f"top {self.top} schemes as the search goes on (best first)", fontsize=10)
        return fig

    # -- widget -----------------------------------------------------------------------------------

    def _draw(self) -> None:
        """Redraw :attr:`output` for the selected search and generation."""
        if self.output is None or self.dropdown is None or self.slider is None:
            raise RuntimeError("the widget is not built yet; call SearchHistoryBrowser.widget()")
        label, generation = str(self.dropdown.value), int(self.slider.value)
        try:
            self.output.outputs = (
                _figure_bundle(self.progress_figure(generation, selected=label)),
                _frame_bundle(self.table(label, min(generation, self.generations[label]))),
            )
        except Exception as exc:
            self.output.outputs = (_error_bundle(exc),)
            raise

    def _on_label(self, change: Mapping[str, Any]) -> None:
        if self.slider is None:
            return
        g = self.generations[str(change["new"])]
        with self.slider.hold_trait_notifications():
            self.slider.value = min(int(self.slider.value), g)
            self.slider.max = g
        self._draw()

    def _on_generation(self, _change: Mapping[str, Any]) -> None:
        self._draw()

    def widget(self) -> ipywidgets.VBox:
        """A search drop-down (:attr:`dropdown`), a generation slider 1..G (:attr:`slider`) and
        :attr:`output`: the progress up to that generation and the top-``top`` table."""
        import ipywidgets as w

        first = next(iter(self.results))
        g = self.generations[first]
        self.dropdown = w.Dropdown(options=list(self.results), value=first, description="search")
        self.slider = w.IntSlider(
            value=g,
            min=1,
            max=max(g, 1),
            step=1,
            description="generation",
            continuous_update=False,
        )
        self.output = w.Output()
        self.dropdown.observe(self._on_label, names="value")
        self.slider.observe(self._on_generation, names="value")
        self._draw()
        return w.VBox([w.HBox([self.dropdown, self.slider]), self.output])
