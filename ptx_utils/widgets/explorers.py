"""Interactive explorers for the notebooks, each with a static matplotlib twin.

Three explorers, each with ``widget()`` (an ipywidgets box for a live JupyterLab session) and
``static_figure()`` (a matplotlib ``Figure`` of the same content, for papermill runs and papers):

- :class:`SchemeExplorer` — pick one learning rate per layer, fine-tune on the episodes, and see
  the accuracy beside the reference strategies (searched scheme, linear probe, full fine-tune...).
- :class:`DomainShiftExplorer` — slide along the domain-shift targets: sample images, the searched
  scheme and every strategy's accuracy at each target.
- :class:`SearchHistoryBrowser` — step through a search's generations: fitness of the candidates,
  the best so far and the top schemes, and how the population converges.

:func:`show` displays the widget when a live kernel can run it, always builds, displays and saves
the static figure, and does nothing visible outside IPython (plain scripts, pytest).

Widgets draw into an ``ipywidgets.Output`` by setting its ``outputs`` to PNG (and HTML table)
bundles rendered here, and close every figure they draw, so they behave the same with any
matplotlib backend, in a kernel or not. ``ipywidgets`` and ``IPython`` are imported only when a
widget is built or something is displayed, so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.evaluation.harness import evaluate_strategies
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.models import Backbone
from ptx_utils.finetuning.scheme import DEFAULT_HEAD_LR, DEFAULT_LR_ZOO, PARAM_KINDS, Scheme
from ptx_utils.search.loop import Candidate, SearchResult, ranked
from ptx_utils.core.stats import mean_ci95
from ptx_utils.plots.figures import (
    OKABE_ITO,
    SEARCH_COLORS,
    image_grid,
    rate_colormap,
    save_figure,
    short_label,
    strategy_palette,
)

if TYPE_CHECKING:
    import ipywidgets

__all__ = [
    "DomainShiftExplorer",
    "Explorer",
    "SchemeExplorer",
    "SearchHistoryBrowser",
    "scheme_label",
    "show",
]

#: Colour of reference strategies and of the highlighted (user's / extra) schemes.
REFERENCE_COLOR = OKABE_ITO[0]
HIGHLIGHT_COLOR = OKABE_ITO[5]
EARLIER_COLOR = OKABE_ITO[1]
FROZEN_COLOR = "#BBBBBB"
#: How many earlier tries the scheme explorer keeps on its chart besides the latest.
EARLIER_TRIES = 4
#: Most sample images a domain-shift panel shows.
MAX_SAMPLES = 16
#: Columns of :meth:`SearchHistoryBrowser.table`.
TABLE_COLUMNS = ("rank", "scheme", "fitness", "generation", "origin")
#: Columns of :meth:`SchemeExplorer.reference_table`.
REFERENCE_COLUMNS = ("strategy", "scheme", "mean", "ci95")


class Explorer(Protocol):
    """What :func:`show` needs: an interactive widget and a static figure of the same content."""

    def widget(self) -> Any:
        """An ipywidgets box."""
        ...

    def static_figure(self) -> Figure:
        """A matplotlib figure of the same content."""
        ...


# -- rendering helpers ----------------------------------------------------------------------------


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


def _rate(lr: float) -> str:
    return "frozen" if lr == 0 else f"{lr:g}"


def scheme_label(name: str, scheme: Scheme) -> str:
    """``"name (lr lr lr ...)"``, with ``, head h`` when the head rate is not the default and
    ``, bn only`` for BN-affine schemes, e.g. ``"last-1 (0 0 0 0.01)"``."""
    body = " ".join(f"{x:g}" for x in scheme.lrs)
    if scheme.head_lr != DEFAULT_HEAD_LR:
        body += f", head {scheme.head_lr:g}"
    if scheme.params == "bn":
        body += ", bn only"
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


# -- 1. the scheme explorer -----------------------------------------------------------------------


class SchemeExplorer:
    """Pick a learning rate per layer, fine-tune, and compare with reference strategies.

    Every scheme is fine-tuned on all of the explorer's episodes with
    :func:`~ptx_utils.evaluation.harness.evaluate_strategies` (same seed, so the same replica seeds as the
    evaluation harness); its score is the mean query accuracy and the 95 % CI half-width over the
    episodes, **a diverged episode scoring accuracy 0** (the conservative
    ``mean_failed_as_zero`` of :func:`~ptx_utils.evaluation.harness.summary_table`). Scores are cached per
    scheme (learning rates, head rate, params; not the name), so each scheme is fine-tuned once.

    Args:
        backbone: the pre-trained backbone (left unchanged).
        dataset: the split ``episodes`` were drawn from.
        episodes: the episodes to fine-tune on (a few: every click fine-tunes on all of them).
        cfg: the fine-tuning protocol.
        references: name -> scheme to compare with, in chart order; the first one sets the
            widget's initial rates (e.g. ``{"searched": best, "linear probe": ..., ...}``).
        zoo: the rates each layer's drop-down offers.
        seed: base seed of the replicas (as in ``evaluate_strategies``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        engine: ``"sequential"``, ``"batched"`` or None (the default engine).
        examples: name -> scheme the static figure adds to the references (a stand-in for
            what a user would try in the widget).
    """

    def __init__(
        self,
        backbone: Backbone,
        dataset: FewShotDataset,
        episodes: Episodes,
        cfg: FinetuneConfig,
        references: Mapping[str, Scheme],
        zoo: Sequence[float] = DEFAULT_LR_ZOO,
        seed: int = 0,
        device: str = "auto",
        engine: str | None = None,
        examples: Mapping[str, Scheme] | None = None,
    ) -> None:
        self.layer_names: tuple[str, ...] = tuple(backbone.layer_names())
        if len(episodes) == 0 or episodes.n_query < 1:
            raise ValueError(
                "SchemeExplorer needs at least one episode with query images; sample them with "
                "ptx_utils.data.episodes.sample_episodes(dataset, n_way, k_shot, n_query>=1, "
                "n_episodes>=1)"
            )
        if not references:
            raise ValueError(
                "SchemeExplorer needs at least one reference scheme to compare with, e.g. "
                "{'linear probe': linear_probe(n_layers)}"
            )
        for name, scheme in references.items():
            if not isinstance(scheme, Scheme):
                raise ValueError(
                    f"reference {name!r} must be a ptx_utils.finetuning.scheme.Scheme, got "
                    f"{type(scheme).__name__}; build it with Scheme(lrs) or a helper such as "
                    "linear_probe(n_layers)"
                )
            try:
                scheme.check(self.layer_names)
            except ValueError as exc:
                raise ValueError(f"reference {name!r} does not fit the backbone: {exc}") from None
        rates = tuple(float(x) for x in zoo)
        if not rates or len(set(rates)) != len(rates) or any(x < 0 or x != x for x in rates):
            raise ValueError(f"zoo must hold distinct learning rates >= 0, got {tuple(zoo)}")
        self.backbone = backbone
        self.dataset = dataset
        self.episodes = episodes
        self.cfg = cfg
        self.references: dict[str, Scheme] = dict(references)
        self.zoo: tuple[float, ...] = rates
        self.seed = int(seed)
        self.device = device
        self.engine = engine
        self.examples: dict[str, Scheme] = dict(examples or {})
        self._scores: dict[Scheme, tuple[float, float]] = {}
        self._tried: list[Scheme] = []
        self.dropdowns: list[ipywidgets.Dropdown] = []
        self.head: ipywidgets.FloatText | None = None
        self.params: ipywidgets.ToggleButtons | None = None
        self.button: ipywidgets.Button | None = None
        self.status: ipywidgets.HTML | None = None
        self.output: ipywidgets.Output | None = None

    # -- scores -----------------------------------------------------------------------------------

    def _evaluate_many(self, schemes: Sequence[Scheme]) -> None:
        """Fine-tune the schemes not scored yet, all in ONE ``evaluate_strategies`` call."""
        todo = list(dict.fromkeys(s for s in schemes if s not in self._scores))
        if not todo:
            return
        for scheme in todo:
            scheme.check(self.layer_names)
        names = ["x"] if len(todo) == 1 else [f"x{i}" for i in range(len(todo))]
        rows = evaluate_strategies(
            self.backbone,
            dict(zip(names, todo, strict=True)),
            self.dataset,
            self.episodes,
            self.cfg,
            seed=self.seed,
            engine=self.engine,
            device=self.device,
            progress=False,
        )
        for name, scheme in zip(names, todo, strict=True):
            accuracy = rows.loc[rows["strategy"] == name, "accuracy"].to_numpy(dtype=np.float64)
            self._scores[scheme] = mean_ci95(np.nan_to_num(accuracy, nan=0.0))

    def evaluate(self, scheme: Scheme) -> tuple[float, float]:
        """(mean query accuracy, 95 % CI half-width) of ``scheme`` over the episodes.

        Diverged episodes count as accuracy 0. Cached: a scheme is fine-tuned only once.
        """
        if not isinstance(scheme, Scheme):
            raise TypeError(f"evaluate needs a Scheme, got {type(scheme).__name__}")
        self._evaluate_many([scheme])
        return self._scores[scheme]

    def reference_table(self) -> pd.DataFrame:
        """Every reference's score: columns strategy, scheme, mean, ci95 (fractions in [0, 1])."""
        self._evaluate_many(list(self.references.values()))
        return pd.DataFrame(
            [
                {
                    "strategy": name,
                    "scheme": str(scheme),
                    "mean": self._scores[scheme][0],
                    "ci95": self._scores[scheme][1],
                }
                for name, scheme in self.references.items()
            ],
            columns=list(REFERENCE_COLUMNS),
        )

    # -- figures ----------------------------------------------------------------------------------

    def _figure(self, bars: list[tuple[str, Scheme, str]]) -> Figure:
        """Bars for reference + given (label, scheme, colour) entries; scores them as needed."""
        refs = [(name, s, REFERENCE_COLOR) for name, s in self.references.items()]
        entries = refs + bars
        self._evaluate_many([s for _, s, _ in entries])
        e = self.episodes
        return _accuracy_barh(
            [_Bar(scheme_label(n, s), *self._scores[s], c) for n, s, c in entries],
            chance=1.0 / e.n_way,
            title=f"fine-tuned on {len(e)} episode(s), {e.n_way}-way {e.k_shot}-shot",
            xlabel=f"query accuracy (mean ± 95% CI over {len(e)} episodes; diverged = 0)",
        )

    def static_figure(self, extra: Mapping[str, Scheme] | None = None) -> Figure:
        """The references' accuracy ± CI and the ``extra`` schemes' (highlighted; default: the
        ``examples``), one bar each, labelled ``"name (rates)"``. Extra schemes are checked
        against the backbone."""
        bars = []
        for name, scheme in (self.examples if extra is None else extra).items():
            if not isinstance(scheme, Scheme):
                raise ValueError(f"extra scheme {name!r} must be a Scheme, got {type(scheme)}")
            try:
                scheme.check(self.layer_names)
            except ValueError as exc:
                raise ValueError(
                    f"extra scheme {name!r} does not fit the backbone: {exc}"
                ) from None
            bars.append((name, scheme, HIGHLIGHT_COLOR))
        return self._figure(bars)

    # -- widget -----------------------------------------------------------------------------------

    def widget(self) -> ipywidgets.VBox:
        """Drop-downs (one per layer), head rate, params, a fine-tune button and the chart.

        The button fine-tunes :meth:`current_scheme` on every episode and redraws the chart with
        the latest try highlighted (and a few earlier tries). Builds :attr:`dropdowns`,
        :attr:`head`, :attr:`params`, :attr:`button`, :attr:`status` and :attr:`output`.
        """
        import ipywidgets as w

        first = next(iter(self.references.values()))
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
        params = str(self.params.value)
        if params not in PARAM_KINDS:
            raise ValueError(f"params must be one of {PARAM_KINDS}, got {params!r}")
        return Scheme(
            tuple(float(d.value) for d in self.dropdowns), head_lr, params, name="your scheme"
        )

    def _redraw(self) -> None:
        if self.output is None:
            return
        tries = self._tried[-(EARLIER_TRIES + 1) :]
        bars = [
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
            scheme = self.current_scheme()
            mean, ci95 = self.evaluate(scheme)
            if scheme in self._tried:
                self._tried.remove(scheme)
            self._tried.append(scheme)
            self._redraw()
            self.status.value = f"{scheme}: <b>{100 * mean:.1f} ± {100 * ci95:.1f}%</b>"
        except Exception as exc:
            self.status.value = "<b>failed</b> (see below)"
            self.output.outputs = (*self.output.outputs, _error_bundle(exc))
            raise
        finally:
            self.button.disabled = False


# -- 2. the domain-shift explorer -----------------------------------------------------------------


def _symlog_rates(ax: Any, lrs: Sequence[float], rates: Sequence[float], labels: bool) -> None:
    """Bars of one scheme's rate per layer on a symlog axis whose ticks are ``rates`` (0 shown
    as "frozen": a grey stub)."""
    nonzero = sorted({r for r in rates if r > 0})
    linthresh = nonzero[0] if nonzero else DEFAULT_HEAD_LR
    top = (nonzero[-1] if nonzero else linthresh) * 3
    x = np.arange(len(lrs))
    colors = [FROZEN_COLOR if lr == 0 else OKABE_ITO[2] for lr in lrs]
    ax.bar(x, lrs, color=colors, width=0.75)
    ax.set_yscale("symlog", linthresh=linthresh, linscale=1.0)
    ax.set_ylim(0, top)
    for xi, lr in zip(x, lrs, strict=True):
        if lr == 0:
            ax.text(xi, 0, "frozen", rotation=90, ha="center", va="bottom", fontsize=6.5)
    ticks = [0.0, *nonzero]
    ax.set_yticks(ticks, ["frozen", *(f"{r:g}" for r in nonzero)] if labels else [])
    ax.minorticks_off()
    ax.grid(axis="y", lw=0.4, alpha=0.5)


class DomainShiftExplorer:
    """How the searched scheme and the strategies' accuracy change with the domain shift.

    Args:
        targets: ordered target labels, e.g. ``["shift 0", "shift 0.5", "shift 1",
            "omniglot/test"]``.
        samples: target -> uint8 images (N, C, H, W), C = 1 or 3, a few of which are shown (at
            most :data:`MAX_SAMPLES`).
        summary: at least columns ``target``, ``strategy``, ``mean``, ``ci95`` (accuracies as
            fractions in [0, 1]), one row per target x strategy; an ``n_way`` column adds a
            chance line.
        schemes: target -> the scheme searched at that target.
        layer_names: the backbone's layers (one rate each in every scheme).

    Raises:
        ValueError: a target lacks samples, a scheme or summary rows, or an input is malformed.
    """

    def __init__(
        self,
        targets: Sequence[str],
        samples: Mapping[str, torch.Tensor],
        summary: pd.DataFrame,
        schemes: Mapping[str, Scheme],
        layer_names: Sequence[str],
    ) -> None:
        self.targets: tuple[str, ...] = tuple(targets)
        self.layer_names: tuple[str, ...] = tuple(layer_names)
        if not self.targets:
            raise ValueError("DomainShiftExplorer needs at least one target")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must be distinct, got {list(self.targets)}")
        missing_cols = [c for c in ("target", "strategy", "mean", "ci95") if c not in summary]
        if missing_cols:
            raise ValueError(
                f"summary lacks column(s) {', '.join(missing_cols)}; it needs target, strategy, "
                "mean, ci95 (e.g. summary_table(rows) with a 'target' column added)"
            )
        problems = []
        for what, mapping in (("samples", samples), ("a searched scheme", schemes)):
            lacking = [t for t in self.targets if t not in mapping]
            if lacking:
                problems.append(
                    f"no {what} for target(s) {', '.join(map(repr, lacking))} "
                    f"(given for: {', '.join(map(repr, mapping)) or 'none'})"
                )
        in_summary = set(summary["target"])
        lacking = [t for t in self.targets if t not in in_summary]
        if lacking:
            problems.append(f"no summary rows for target(s) {', '.join(map(repr, lacking))}")
        if problems:
            raise ValueError("DomainShiftExplorer: " + "; ".join(problems))
        for t in self.targets:
            images = samples[t]
            if (
                not isinstance(images, torch.Tensor)
                or images.dtype != torch.uint8
                or images.ndim != 4
                or images.shape[1] not in (1, 3)
                or images.shape[0] < 1
            ):
                shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
                raise ValueError(
                    f"samples[{t!r}] must be a non-empty uint8 tensor (N, C, H, W) with C = 1 or "
                    f"3, got {getattr(images, 'dtype', '?')} {shape}"
                )
            scheme = schemes[t]
            if not isinstance(scheme, Scheme):
                raise ValueError(f"schemes[{t!r}] must be a Scheme, got {type(scheme).__name__}")
            try:
                scheme.check(self.layer_names)
            except ValueError as exc:
                raise ValueError(f"schemes[{t!r}] does not fit the layers: {exc}") from None
        frame = summary.loc[summary["target"].isin(self.targets)].copy()
        dup = frame.duplicated(["target", "strategy"])
        if dup.any():
            first = frame.loc[dup, ["target", "strategy"]].iloc[0].to_dict()
            raise ValueError(
                f"summary has {int(dup.sum())} duplicate (target, strategy) row(s), e.g. {first}; "
                "give one row per target x strategy (one episode setting)"
            )
        values = frame[["mean", "ci95"]].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ValueError(
                "summary mean and ci95 must be fractions in [0, 1] (not percent); got values in "
                f"[{finite.min():g}, {finite.max():g}]"
            )
        self.samples: dict[str, torch.Tensor] = {t: samples[t][:MAX_SAMPLES] for t in self.targets}
        self.schemes: dict[str, Scheme] = {t: schemes[t] for t in self.targets}
        self.summary: pd.DataFrame = frame.reset_index(drop=True)
        self.strategies: tuple[str, ...] = tuple(dict.fromkeys(frame["strategy"]))
        self.colors: dict[str, str] = strategy_palette(self.strategies)
        low = np.nan_to_num(frame["mean"] - frame["ci95"].fillna(0), nan=1.0).min()
        high = np.nan_to_num(frame["mean"] + frame["ci95"].fillna(0), nan=0.0).max()
        self.ylim: tuple[float, float] = (
            max(0.0, math.floor(10 * float(low)) / 10 - 0.05),
            min(1.0, math.ceil(10 * float(high)) / 10 + 0.05),
        )
        self._rates: tuple[float, ...] = tuple(
            sorted({x for s in self.schemes.values() for x in s.lrs})
        )
        self.slider: ipywidgets.SelectionSlider | None = None
        self.output: ipywidgets.Output | None = None

    def _check_target(self, target: str) -> None:
        if target not in self.targets:
            raise ValueError(f"unknown target {target!r}; targets: {', '.join(self.targets)}")

    # -- panels -----------------------------------------------------------------------------------

    def _samples_panel(self, ax: Any, target: str) -> None:
        images = self.samples[target]
        ncol = max(1, math.ceil(math.sqrt(len(images))))
        ax.imshow(image_grid(images.cpu(), ncol), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])

    def _scheme_panel(self, ax: Any, target: str, labels: bool = True) -> None:
        _symlog_rates(ax, self.schemes[target].lrs, self._rates, labels=labels)
        ax.set_xticks(
            range(len(self.layer_names)),
            [short_label(n, 10) for n in self.layer_names],
            rotation=60,
            ha="right",
            fontsize=7,
        )

    def _accuracy_panel(self, ax: Any, target: str, labels: bool = True) -> None:
        rows = self.summary.loc[self.summary["target"] == target].set_index("strategy")
        x = np.arange(len(self.strategies))
        means = [float(rows["mean"].get(s, np.nan)) for s in self.strategies]
        cis = [float(rows["ci95"].get(s, np.nan)) for s in self.strategies]
        ax.bar(
            x,
            np.nan_to_num(means),
            yerr=np.nan_to_num(cis),
            color=[self.colors[s] for s in self.strategies],
            capsize=3,
            width=0.75,
            error_kw={"elinewidth": 1.0},
        )
        for xi, m, c in zip(x, means, cis, strict=True):
            ok = np.isfinite(m)
            y = (m + (c if np.isfinite(c) else 0.0)) if ok else self.ylim[0]
            text = f"{100 * m:.0f}" if ok else "n/a"
            ax.text(xi, y + 0.005, text, ha="center", va="bottom", fontsize=6.5)
        if "n_way" in rows.columns and rows["n_way"].nunique() == 1:
            ax.axhline(1.0 / float(rows["n_way"].iloc[0]), color="grey", ls="--", lw=1)
        ax.set_ylim(*self.ylim)
        ax.set_xticks(
            x, [short_label(s, 16) for s in self.strategies], rotation=60, ha="right", fontsize=7
        )
        if not labels:
            ax.set_yticklabels([])
        ax.grid(axis="y", lw=0.4, alpha=0.5)

    def target_figure(self, target: str) -> Figure:
        """One target: sample images, the searched scheme per layer, accuracy per strategy."""
        self._check_target(target)
        fig, (ax_img, ax_scheme, ax_acc) = plt.subplots(
            1, 3, figsize=(12.5, 3.9), gridspec_kw={"width_ratios": [1.0, 1.3, 1.3]}
        )
        self._samples_panel(ax_img, target)
        ax_img.set_title(f"{target}: samples", fontsize=9)
        self._scheme_panel(ax_scheme, target)
        ax_scheme.set_title(f"searched scheme: {self.schemes[target]}", fontsize=9)
        ax_scheme.set_ylabel("learning rate (symlog)")
        self._accuracy_panel(ax_acc, target)
        ax_acc.set_title("accuracy per strategy (mean ± 95% CI)", fontsize=9)
        ax_acc.set_ylabel("query accuracy")
        fig.tight_layout()
        return fig

    def static_figure(self) -> Figure:
        """Every target side by side (one column each): row 1 samples, row 2 the searched scheme
        per layer, row 3 accuracy per strategy (same y limits in every column)."""
        n = len(self.targets)
        fig, axes = plt.subplots(
            3,
            n,
            figsize=(3.3 * n + 0.9, 9.6),
            squeeze=False,
            gridspec_kw={"height_ratios": [1.0, 0.9, 1.0]},
        )
        for j, target in enumerate(self.targets):
            self._samples_panel(axes[0][j], target)
            axes[0][j].set_title(target, fontsize=10)
            self._scheme_panel(axes[1][j], target, labels=j == 0)
            axes[1][j].set_title(short_label(str(self.schemes[target]), 34), fontsize=7.5)
            self._accuracy_panel(axes[2][j], target, labels=j == 0)
        axes[0][0].set_ylabel("samples")
        axes[1][0].set_ylabel("searched lr (symlog)")
        axes[2][0].set_ylabel("query accuracy\n(mean ± 95% CI)")
        fig.suptitle("domain shift: data, searched scheme, accuracy", fontsize=11)
        fig.tight_layout()
        return fig

    # -- widget -----------------------------------------------------------------------------------

    def _draw(self, target: str) -> None:
        """Draw ``target``'s figure into :attr:`output` (call :meth:`widget` first)."""
        if self.output is None:
            raise RuntimeError("the widget is not built yet; call DomainShiftExplorer.widget()")
        try:
            self.output.outputs = (_figure_bundle(self.target_figure(target)),)
        except Exception as exc:
            self.output.outputs = (_error_bundle(exc),)
            raise

    def _on_change(self, change: Mapping[str, Any]) -> None:
        self._draw(change["new"])

    def widget(self) -> ipywidgets.VBox:
        """A slider over the targets (:attr:`slider`) and the target's figure (:attr:`output`)."""
        import ipywidgets as w

        self.slider = w.SelectionSlider(
            options=list(self.targets),
            value=self.targets[0],
            description="target",
            continuous_update=False,
            layout=w.Layout(width="520px"),
        )
        self.output = w.Output()
        self.slider.observe(self._on_change, names="value")
        self._draw(self.targets[0])
        return w.VBox([self.slider, self.output])


# -- 3. the search-history browser ----------------------------------------------------------------


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
