"""The scheme explorer: pick a learning rate per layer, fine-tune on a few episodes, and compare
the accuracy with reference strategies (searched scheme, linear probe, full fine-tune...).

Live in JupyterLab with :meth:`SchemeExplorer.widget`; :meth:`SchemeExplorer.static_figure` is
its matplotlib twin (see ``docs/widgets.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ptx_utils.core.runtime import Runtime
from ptx_utils.core.stats import mean_ci95
from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.evaluation import evaluate_strategies
from ptx_utils.finetuning import (
    DEFAULT_LR_ZOO,
    FinetuneConfig,
    Scheme,
    Strategy,
    as_strategy,
    check_lr_zoo,
    check_strategies,
)
from ptx_utils.models import Backbone
from ptx_utils.plots import short_label
from ptx_utils.widgets.render import (
    EARLIER_COLOR,
    HIGHLIGHT_COLOR,
    REFERENCE_COLOR,
    _accuracy_barh,
    _Bar,
    _error_bundle,
    _figure_bundle,
    _rate,
    scheme_label,
)

if TYPE_CHECKING:
    import ipywidgets

__all__ = ["EARLIER_TRIES", "REFERENCE_COLUMNS", "SchemeExplorer"]

#: How many earlier tries the scheme explorer keeps on its chart besides the latest.
EARLIER_TRIES = 4
#: Columns of :meth:`SchemeExplorer.reference_table`.
REFERENCE_COLUMNS = ("strategy", "scheme", "mean", "ci95")


class SchemeExplorer:
    """Pick a learning rate per layer, fine-tune, and compare with reference strategies.

    Every strategy is fine-tuned on all of the explorer's episodes with
    :func:`~ptx_utils.evaluation.evaluate_strategies` (same seed, so the same replica seeds as the
    evaluation harness); its score is the mean query accuracy and the 95 % CI half-width over the
    episodes, **a diverged episode scoring accuracy 0** (the conservative
    ``mean_failed_as_zero`` of :func:`~ptx_utils.evaluation.summary_table`). Scores are
    cached per strategy (everything but the name), so each is fine-tuned once.

    Args:
        backbone: the pre-trained backbone (left unchanged).
        dataset: the split ``episodes`` were drawn from.
        episodes: the episodes to fine-tune on (a few: every click fine-tunes on all of them).
        cfg: the fine-tuning protocol.
        references: name -> strategy (or bare scheme) to compare with, in chart order; the first
            one sets the widget's initial rates (e.g. ``{"searched": best, "linear probe": ...}``).
        zoo: the rates each layer's drop-down offers.
        runtime: seed, device and chunk size of the fine-tuning (None: ``Runtime()``); the
            explorer never shows progress bars (its status line says when it is fine-tuning).
        engine: ``"sequential"``, ``"batched"`` or None (the default engine).
        examples: name -> strategy (or scheme) the static figure adds to the references (a
            stand-in for what a user would try in the widget).
    """

    def __init__(
        self,
        backbone: Backbone,
        dataset: FewShotDataset,
        episodes: Episodes,
        cfg: FinetuneConfig,
        references: Mapping[str, Strategy | Scheme],
        zoo: Sequence[float] = DEFAULT_LR_ZOO,
        runtime: Runtime | None = None,
        engine: str | None = None,
        examples: Mapping[str, Strategy | Scheme] | None = None,
    ) -> None:
        self.layer_names: tuple[str, ...] = tuple(backbone.layer_names())
        if len(episodes) == 0 or episodes.n_query < 1:
            raise ValueError(
                "SchemeExplorer needs at least one episode with query images; sample them with "
                "ptx_utils.data.episodes.sample_episodes(dataset, n_way, k_shot, n_query>=1, "
                "n_episodes>=1)"
            )
        self.references: dict[str, Strategy] = check_strategies(
            strategies=references, layer_names=self.layer_names, what="reference"
        )
        self.zoo: tuple[float, ...] = check_lr_zoo(zoo=zoo, what="zoo")
        self.backbone = backbone
        self.dataset = dataset
        self.episodes = episodes
        self.cfg = cfg
        self.runtime: Runtime = Runtime() if runtime is None else runtime
        self.engine = engine
        self.examples: dict[str, Strategy | Scheme] = dict(examples or {})
        self._scores: dict[Strategy, tuple[float, float]] = {}
        self._tried: list[Strategy | Scheme] = []
        self.dropdowns: list[ipywidgets.Dropdown] = []
        self.head: ipywidgets.FloatText | None = None
        self.params: ipywidgets.ToggleButtons | None = None
        self.bn_stats: ipywidgets.Dropdown | None = None
        self.cit: ipywidgets.Checkbox | None = None
        self.button: ipywidgets.Button | None = None
        self.status: ipywidgets.HTML | None = None
        self.output: ipywidgets.Output | None = None

    # -- scores -----------------------------------------------------------------------------------

    def _evaluate_many(self, strategies: Sequence[Strategy | Scheme]) -> None:
        """Fine-tune the strategies not scored yet, all in ONE ``evaluate_strategies`` call (the
        callers have checked them against the backbone)."""
        todo = list(dict.fromkeys(as_strategy(s) for s in strategies))
        todo = [s for s in todo if s not in self._scores]
        if not todo:
            return
        names = ["x"] if len(todo) == 1 else [f"x{i}" for i in range(len(todo))]
        rows = evaluate_strategies(
            backbone=self.backbone,
            strategies=dict(zip(names, todo, strict=True)),
            dataset=self.dataset,
            episodes=self.episodes,
            cfg=self.cfg,
            runtime=dataclasses.replace(self.runtime, progress=False),
            engine=self.engine,
        ).rows
        for name, strategy in zip(names, todo, strict=True):
            accuracy = rows.loc[rows["strategy"] == name, "accuracy"].to_numpy(dtype=np.float64)
            self._scores[strategy] = mean_ci95(np.nan_to_num(accuracy, nan=0.0))

    def evaluate(self, strategy: Strategy | Scheme) -> tuple[float, float]:
        """(mean query accuracy, 95 % CI half-width) of ``strategy`` over the episodes.

        Diverged episodes count as accuracy 0. Cached: a strategy is fine-tuned only once.
        """
        checked = as_strategy(strategy).check(self.layer_names)
        self._evaluate_many([checked])
        return self._scores[checked]

    def reference_table(self) -> pd.DataFrame:
        """Every reference's score: columns strategy, scheme (the strategy's text), mean, ci95
        (fractions in [0, 1])."""
        self._evaluate_many(list(self.references.values()))
        return pd.DataFrame(
            [
                {
                    "strategy": name,
                    "scheme": str(strategy),
                    "mean": self._scores[strategy][0],
                    "ci95": self._scores[strategy][1],
                }
                for name, strategy in self.references.items()
            ],
            columns=list(REFERENCE_COLUMNS),
        )

    # -- figures ----------------------------------------------------------------------------------

    def _figure(self, bars: list[tuple[str, Strategy | Scheme, str]]) -> Figure:
        """Bars for reference + given (label, strategy, colour) entries; scores them as needed."""
        refs = [(name, s, REFERENCE_COLOR) for name, s in self.references.items()]
        entries = [(n, as_strategy(s), c) for n, s, c in refs + bars]
        self._evaluate_many([s for _, s, _ in entries])
        e = self.episodes
        return _accuracy_barh(
            [_Bar(scheme_label(n, s), *self._scores[s], c) for n, s, c in entries],
            chance=1.0 / e.n_way,
            title=f"fine-tuned on n = {len(e)} episode(s), {e.n_way}-way {e.k_shot}-shot"
            + (" — few episodes: wide intervals" if len(e) < 10 else ""),
            xlabel=f"query accuracy (mean ± 95% CI over {len(e)} episodes; diverged = 0)",
        )

    def static_figure(self, extra: Mapping[str, Strategy | Scheme] | None = None) -> Figure:
        """The references' accuracy ± CI and the ``extra`` strategies' (highlighted; default: the
        ``examples``), one bar each, labelled ``"name (rates)"``. Extra strategies are checked
        against the backbone."""
        chosen = self.examples if extra is None else extra
        checked = (
            check_strategies(strategies=chosen, layer_names=self.layer_names, what="extra scheme")
            if chosen
            else {}
        )
        return self._figure([(name, s, HIGHLIGHT_COLOR) for name, s in checked.items()])

    # -- widget -----------------------------------------------------------------------------------

    def widget(self) -> ipywidgets.VBox:
        """Drop-downs (one per layer), head rate, params, a fine-tune button and the chart.

        The button fine-tunes :meth:`current_scheme` on every episode and redraws the chart with
        the latest try highlighted (and a few earlier tries). Builds :attr:`dropdowns`,
        :attr:`head`, :attr:`params`, :attr:`button`, :attr:`status` and :attr:`output`.
        """
        import ipywidgets as w

        first = next(iter(self.references.values())).scheme
        self.dropdowns = []
        for name, lr in zip(self.layer_names, first.lrs, strict=True):
            options = list(self.zoo) if lr in self.zoo else sorted({*self.zoo, lr})
            self.dropdowns.append(
                w.Dropdown(
                    options=[(_rate(x), x) for x in options],
                    value=lr,
                    description=short_label(name, 14),
                    style={"description_width": "initial"},
                    layout=w.Layout(width="auto"),
                )
            )
        self.head = w.FloatText(
            value=first.head_lr, step=0.001, description="head lr", layout=w.Layout(width="180px")
        )
        self.params = w.ToggleButtons(
            options=[("all parameters", "all"), ("BN affine only", "bn")],
            value=first.params,
            style={"button_width": "auto"},
        )
        self.bn_stats = w.Dropdown(
            options=[
                ("stored BN statistics", "protocol"),
                ("AdaBN: support set", "support"),
                ("AdaBN: support + query (transductive)", "support+query"),
            ],
            value="protocol",
            description="BN",
            layout=w.Layout(width="auto"),
        )
        self.cit = w.Checkbox(
            value=False,
            description="channel importance transform (every rate 0)",
            indent=False,
            layout=w.Layout(width="auto"),
        )
        n = len(self.episodes)
        self.button = w.Button(
            description=f"fine-tune on {n} episode{'s' if n != 1 else ''}",
            button_style="primary",
            icon="play",
            layout=w.Layout(width="auto"),
        )
        self.status = w.HTML()
        self.output = w.Output()
        self.button.on_click(self._on_click)
        self._redraw()
        return w.VBox(
            [
                w.HTML("<b>learning rate per layer</b> (input side first; 0 = frozen)"),
                w.GridBox(
                    self.dropdowns,
                    layout=w.Layout(grid_template_columns="repeat(4, max-content)"),
                ),
                w.HBox([self.head, self.params]),
                w.HBox([self.bn_stats, self.cit]),
                w.HBox([self.button, self.status]),
                self.output,
            ]
        )

    def current_scheme(self) -> Scheme:
        """The scheme the widget's controls describe (call :meth:`widget` first)."""
        if not self.dropdowns or self.head is None or self.params is None:
            raise RuntimeError("the widget is not built yet; call SchemeExplorer.widget() first")
        head_lr = float(self.head.value)
        if not head_lr >= 0:
            raise ValueError(f"the head learning rate must be >= 0, got {head_lr}")
        return Scheme(
            lrs=tuple(float(d.value) for d in self.dropdowns),
            head_lr=head_lr,
            params=str(self.params.value),
            name="your scheme",
        )

    def current_strategy(self, scheme: Scheme | None = None) -> Strategy:
        """:meth:`current_scheme` (or ``scheme``) with the BN-statistics (AdaBN) and channel
        transform toggles; a bare scheme's strategy when both are off.

        Raises:
            ValueError: the channel transform with a trained layer (it reads frozen features).
        """
        if self.bn_stats is None or self.cit is None:
            raise RuntimeError("the widget is not built yet; call SchemeExplorer.widget() first")
        scheme = self.current_scheme() if scheme is None else scheme
        return Strategy(
            scheme,
            bn_stats=str(self.bn_stats.value),
            feature_transform="channel-importance" if self.cit.value else "none",
            name="your scheme",
        )

    def _redraw(self) -> None:
        if self.output is None:
            return
        tries = self._tried[-(EARLIER_TRIES + 1) :]
        bars: list[tuple[str, Strategy | Scheme, str]] = [
            (f"try {len(self._tried) - len(tries) + i + 1}", s, EARLIER_COLOR)
            for i, s in enumerate(tries[:-1])
        ]
        if tries:
            bars.append(("your scheme", tries[-1], HIGHLIGHT_COLOR))
        self.output.outputs = (_figure_bundle(self._figure(bars)),)

    def _on_click(self, _button: Any = None) -> None:
        """Fine-tune :meth:`current_scheme` (unless cached) and redraw the chart."""
        if self.button is None or self.output is None or self.status is None:
            raise RuntimeError("the widget is not built yet; call SchemeExplorer.widget() first")
        self.button.disabled = True
        self.status.value = "<i>fine-tuning…</i>"
        try:
            plain = self.current_scheme()
            try:
                scheme = self.current_strategy(plain)
            except ValueError as exc:  # the channel transform with trained layers
                self.status.value = f"<b>not a valid strategy</b>: {exc}"
                return
            cached = as_strategy(scheme).check(self.layer_names) in self._scores
            mean, ci95 = self.evaluate(scheme)
            if scheme in self._tried:
                self._tried.remove(scheme)
            self._tried.append(scheme)
            self._redraw()
            note = " (unchanged: the cached result, not fine-tuned again)" if cached else ""
            self.status.value = f"{scheme}: <b>{100 * mean:.1f} ± {100 * ci95:.1f}%</b>{note}"
        except Exception as exc:
            self.status.value = "<b>failed</b> (see below)"
            self.output.outputs = (*self.output.outputs, _error_bundle(exc))
            raise
        finally:
            self.button.disabled = False
