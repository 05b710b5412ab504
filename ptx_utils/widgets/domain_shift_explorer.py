"""The domain-shift explorer: slide along the domain-shift targets and see sample images, the
scheme searched at each target, every strategy's accuracy there and where SpotTune routes.

Live in JupyterLab with :meth:`DomainShiftExplorer.widget`;
:meth:`DomainShiftExplorer.static_figure` is its matplotlib twin (see ``docs/widgets.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from ptx_utils.finetuning import DEFAULT_HEAD_LR, Scheme, Strategy, check_strategies
from ptx_utils.plots import OKABE_ITO, image_grid, short_label, strategy_palette
from ptx_utils.widgets.render import FROZEN_COLOR, _error_bundle, _figure_bundle

if TYPE_CHECKING:
    import ipywidgets

__all__ = ["MAX_SAMPLES", "DomainShiftExplorer"]

#: Most sample images a domain-shift panel shows.
MAX_SAMPLES = 16


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


def _check_routing(routing: pd.DataFrame | None) -> pd.DataFrame | None:
    if routing is None:
        return None
    lacking = [c for c in ("target", "strategy", "block", "mean") if c not in routing]
    if lacking:
        raise ValueError(
            f"routing lacks column(s) {', '.join(lacking)}; give DomainShiftResult.routing "
            "(target, strategy, block, mean, std) or None"
        )
    return routing.reset_index(drop=True)


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
        schemes: target -> the strategy (or bare scheme) searched at that target.
        layer_names: the backbone's layers (one rate each in every scheme).
        routing: optional, columns ``target``, ``strategy``, ``block``, ``mean`` (and ``std``):
            the fraction of queries SpotTune routed to the tuned copy per block
            (``DomainShiftResult.routing``); a panel per target when given.

    Raises:
        ValueError: a target lacks samples, a scheme or summary rows, or an input is malformed.
        TypeError: a searched scheme is neither a Strategy nor a Scheme.
    """

    def __init__(
        self,
        targets: Sequence[str],
        samples: Mapping[str, torch.Tensor],
        summary: pd.DataFrame,
        schemes: Mapping[str, Strategy | Scheme],
        layer_names: Sequence[str],
        routing: pd.DataFrame | None = None,
    ) -> None:
        self.targets: tuple[str, ...] = tuple(targets)
        self.routing: pd.DataFrame | None = _check_routing(routing)
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
        searched = check_strategies(
            strategies={t: schemes[t] for t in self.targets},
            layer_names=self.layer_names,
            what="scheme for target",
        )
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
        self.schemes: dict[str, Strategy] = searched
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

    def _routing_panel(self, ax: Any, target: str, labels: bool = True) -> None:
        """SpotTune's tuned fraction per block at ``target``: bars per strategy, sd as error."""
        assert self.routing is not None
        rows = self.routing[self.routing["target"] == target]
        names = list(dict.fromkeys(rows["strategy"]))
        blocks = sorted(set(self.routing["block"]))
        width = 0.8 / max(len(names), 1)
        for k, name in enumerate(names):
            part = rows[rows["strategy"] == name].set_index("block").reindex(blocks)
            x = np.arange(len(blocks)) + (k - (len(names) - 1) / 2) * width
            sd = part["std"].fillna(0).to_numpy() if "std" in part else None
            color = OKABE_ITO[(k + 3) % len(OKABE_ITO)]
            ax.bar(x, part["mean"].fillna(0), width=width, yerr=sd, capsize=2, color=color,
                   label=short_label(name, 24))  # fmt: skip
        ax.set_xticks(range(len(blocks)), [f"block {b + 1}" for b in blocks], fontsize=7)
        ax.set_ylim(0, 1.05)
        if not labels:
            ax.set_yticklabels([])
        if names:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no SpotTune here", ha="center", va="center", transform=ax.transAxes)
        ax.grid(axis="y", lw=0.4, alpha=0.5)

    def target_figure(self, target: str) -> Figure:
        """One target: sample images, the searched scheme per layer, accuracy per strategy and,
        with ``routing``, SpotTune's tuned fraction per block."""
        self._check_target(target)
        n = 3 if self.routing is None else 4
        fig, axes = plt.subplots(
            1, n, figsize=(12.5 + 3.6 * (n - 3), 3.9),
            gridspec_kw={"width_ratios": [1.0, 1.3, 1.3, 1.1][:n]},
        )  # fmt: skip
        ax_img, ax_scheme, ax_acc = axes[:3]
        if self.routing is not None:
            self._routing_panel(axes[3], target)
            axes[3].set_title("SpotTune: queries routed to the tuned copy", fontsize=9)
            axes[3].set_ylabel("fraction (mean ± sd over episodes)")
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
        rows = 3 if self.routing is None else 4
        fig, axes = plt.subplots(
            rows,
            n,
            figsize=(3.3 * n + 0.9, 9.6 + 2.8 * (rows - 3)),
            squeeze=False,
            gridspec_kw={"height_ratios": [1.0, 0.9, 1.0, 0.9][:rows]},
        )
        for j, target in enumerate(self.targets):
            self._samples_panel(axes[0][j], target)
            axes[0][j].set_title(target, fontsize=10)
            self._scheme_panel(axes[1][j], target, labels=j == 0)
            axes[1][j].set_title(short_label(str(self.schemes[target]), 34), fontsize=7.5)
            self._accuracy_panel(axes[2][j], target, labels=j == 0)
            if self.routing is not None:
                self._routing_panel(axes[3][j], target, labels=j == 0)
        if self.routing is not None:
            axes[3][0].set_ylabel("SpotTune: routed to\nthe tuned copy")
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
