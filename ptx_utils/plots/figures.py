"""Figures: image grids, the domain-shift grid, training and search curves; saved as PDF and PNG.

Every figure function returns a matplotlib ``Figure`` (so a notebook shows it inline) and
:func:`save_figure` writes it as ``<stem>.pdf`` and ``<stem>.png``, atomically.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.core.io import atomic_open

if TYPE_CHECKING:
    from ptx_utils.search.loop import GenerationReport, SearchResult

#: The Okabe-Ito palette (colour-blind safe).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
#: One colour per search method.
SEARCH_COLORS = {"evolution": OKABE_ITO[0], "random": OKABE_ITO[1]}


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


def image_grid(images: torch.Tensor, ncol: int, pad: int = 1, fill: int = 255) -> np.ndarray:
    """Tile uint8 images (N, C, H, W) into one RGB array (rows * (H + pad), ncol * (W + pad), 3)."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    x = images.expand(-1, 3, -1, -1) if c == 1 else images
    rows = max(1, -(-n // ncol))
    grid = np.full((rows * (h + pad) - pad, ncol * (w + pad) - pad, 3), fill, dtype=np.uint8)
    for i, img in enumerate(x.permute(0, 2, 3, 1).numpy()):
        r, col = divmod(i, ncol)
        grid[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = img
    return grid


def class_grid(
    dataset: FewShotDataset, n_classes: int = 8, per_class: int = 8, title: str | None = None
) -> Figure:
    """The first ``per_class`` images of the first ``n_classes`` classes, one class per row."""
    n_classes = min(n_classes, dataset.num_classes)
    index = dataset.class_indices()
    chosen = [index[c][:per_class] for c in range(n_classes)]
    images = torch.cat([dataset.images[torch.from_numpy(ix)] for ix in chosen])
    fig, ax = plt.subplots(figsize=(per_class * 0.9, n_classes * 0.9 + 0.4))
    ax.imshow(image_grid(images, per_class), interpolation="nearest")
    ax.set_yticks(
        [(r + 0.5) * (dataset.image_size + 1) for r in range(n_classes)],
        [short_label(dataset.class_names[c]) for c in range(n_classes)],
        fontsize=7,
    )
    ax.set_xticks([])
    ax.set_title(title or f"{dataset.name}/{dataset.split}: {dataset.num_classes} classes")
    fig.tight_layout()
    return fig


def shift_grid(panels: Sequence[tuple[float, torch.Tensor]], title: str | None = None) -> Figure:
    """Side-by-side panels of the same images at several domain-shift levels.

    Args:
        panels: ``(shift, images)`` pairs; images uint8 (n_classes, per_class, C, H, W), the same
            classes and instances in every panel.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (shift, images) in zip(axes[0], panels, strict=True):
        per_class = images.shape[1]
        ax.imshow(
            image_grid(images.reshape(-1, *images.shape[2:]), per_class), interpolation="nearest"
        )
        ax.set_title(f"shift = {shift:g}")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].set_ylabel("one class per row")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def episode_figure(
    dataset: FewShotDataset, episodes: Episodes, index: int = 0, max_query: int = 5
) -> Figure:
    """One episode: the support set (left) and up to ``max_query`` queries per class (right)."""
    batch = episodes[index].tensors(dataset)
    n_way, k, q = episodes.n_way, episodes.k_shot, min(max_query, episodes.n_query)
    support = batch.support_images[0].reshape(n_way, k, *batch.support_images.shape[2:])
    query = batch.query_images[0].reshape(n_way, episodes.n_query, *batch.query_images.shape[2:])
    fig, (ax_s, ax_q) = plt.subplots(
        1,
        2,
        figsize=(1.0 * (k + q) + 1.5, 0.95 * n_way + 0.6),
        gridspec_kw={"width_ratios": [k, q]},
    )
    for ax, images, ncol, name in (
        (ax_s, support, k, f"support ({k}-shot)"),
        (ax_q, query[:, :q], q, f"query (first {q})"),
    ):
        ax.imshow(image_grid(images.reshape(-1, *images.shape[2:]), ncol), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    labels = [short_label(dataset.class_names[c]) for c in episodes.classes[index]]
    ax_s.set_yticks(
        [(r + 0.5) * (dataset.image_size + 1) for r in range(n_way)], labels, fontsize=7
    )
    fig.suptitle(
        f"{dataset.name}/{dataset.split}: episode {index}, {n_way}-way {k}-shot", fontsize=10
    )
    fig.tight_layout()
    return fig


def curves_figure(history: Sequence[Mapping[str, float]]) -> Figure:
    """Pre-training curves: training loss (left); training and validation accuracy (right).

    ``history`` rows need ``epoch``, ``train_loss``, ``train_acc``, ``val_acc`` and ``val_ci95``.
    """
    epoch = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epoch, [h["train_loss"] for h in history], marker=".", color="C0")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    val = np.array([h["val_acc"] for h in history])
    ci = np.array([h["val_ci95"] for h in history])
    ax_acc.plot(epoch, [h["train_acc"] for h in history], marker=".", color="C0", label="train")
    ax_acc.plot(epoch, val, marker=".", color="C1", label="val (nearest centroid)")
    ax_acc.fill_between(epoch, val - ci, val + ci, color="C1", alpha=0.25, linewidth=0)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy (val: mean ± 95% CI)")
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return fig


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
        fitness = [c.fitness for c in result.candidates]
        curve = result.best_so_far()
        ax.scatter(range(1, len(fitness) + 1), fitness, s=9, alpha=0.35, color=color, lw=0)
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
        title=title or "search: every candidate (dots) and best so far (line)",
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


class LiveSearchPlot:
    """A search callback that redraws :func:`search_figure` in a notebook after each generation.

    Pass it as ``callback=`` to :func:`ptx_utils.search.loop.search`; ``others`` (label -> finished
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
    from ptx_utils.search.loop import ranked

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

#: A fixed colour per strategy, so every figure of a run uses the same ones.
STRATEGY_COLORS = {
    "searched": OKABE_ITO[5],
    "linear probe": OKABE_ITO[0],
    "full fine-tune": OKABE_ITO[1],
    "last-1": OKABE_ITO[2],
    "BN-affine": OKABE_ITO[3],
}


def strategy_palette(names: Sequence[str]) -> dict[str, str]:
    """name -> colour: :data:`STRATEGY_COLORS` where known, the rest of Okabe-Ito after them."""
    spare = [c for c in OKABE_ITO if c not in STRATEGY_COLORS.values()]
    palette, i = {}, 0
    for name in dict.fromkeys(names):
        if name in STRATEGY_COLORS:
            palette[name] = STRATEGY_COLORS[name]
        else:
            palette[name] = spare[i % len(spare)]
            i += 1
    return palette


def _setting_title(n_way: Any, k_shot: Any) -> str:
    return f"{int(n_way)}-way {int(k_shot)}-shot"


def strategy_figure(summary: Any, title: str | None = None) -> Figure:
    """Mean accuracy ± 95 % CI per strategy, one panel per (n_way, k_shot) of a
    :func:`~ptx_utils.evaluation.harness.summary_table`; the searched scheme's mean is a dashed line."""
    settings = list(dict.fromkeys(zip(summary["n_way"], summary["k_shot"], strict=True)))
    names = list(dict.fromkeys(summary["strategy"]))
    palette = strategy_palette(names)
    fig, axes = plt.subplots(
        1, len(settings), figsize=(3.6 * len(settings), 0.5 + 0.45 * len(names)), squeeze=False
    )
    for ax, (n_way, k_shot) in zip(axes[0], settings, strict=True):
        part = summary[(summary["n_way"] == n_way) & (summary["k_shot"] == k_shot)]
        part = part.set_index("strategy").reindex(names)
        y = np.arange(len(names))
        ax.barh(
            y,
            100 * part["mean"],
            xerr=100 * part["ci95"],
            capsize=3,
            color=[palette[n] for n in names],
        )
        for yi, (m, c) in enumerate(zip(part["mean"], part["ci95"], strict=True)):
            if np.isfinite(m):
                ax.text(100 * (m + c) + 0.5, yi, f"{100 * m:.1f}", va="center", fontsize=7)
        if "searched" in part.index and np.isfinite(part.loc["searched", "mean"]):
            ax.axvline(100 * part.loc["searched", "mean"], color=palette["searched"], ls="--", lw=1)
        low = np.nanmin(100 * (part["mean"] - part["ci95"]))
        ax.set_xlim(max(0.0, low - 10), 100)
        ax.set_yticks(y, [short_label(n) for n in names])
        ax.invert_yaxis()
        ax.set(xlabel="test accuracy (%) ± 95% CI", title=_setting_title(n_way, k_shot))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def episode_distribution(rows: Any, title: str | None = None) -> Figure:
    """Per-episode accuracy of every strategy (box + points), one panel per (n_way, k_shot).

    ``rows``: the tidy frame of :func:`~ptx_utils.evaluation.harness.evaluate_strategies` (diverged
    episodes, NaN, are left out and counted in the tick label).
    """
    import seaborn as sns

    settings = list(dict.fromkeys(zip(rows["n_way"], rows["k_shot"], strict=True)))
    names = list(dict.fromkeys(rows["strategy"]))
    palette = strategy_palette(names)
    fig, axes = plt.subplots(
        1, len(settings), figsize=(0.6 + 1.1 * len(names) * len(settings), 3.4), squeeze=False
    )
    for ax, (n_way, k_shot) in zip(axes[0], settings, strict=True):
        part = rows[(rows["n_way"] == n_way) & (rows["k_shot"] == k_shot)]
        part = part.assign(percent=100 * part["accuracy"])
        common = {
            "data": part,
            "x": "strategy",
            "y": "percent",
            "hue": "strategy",
            "order": names,
            "palette": palette,
            "ax": ax,
            "legend": False,
        }
        with warnings.catch_warnings():
            # seaborn 0.13 passes matplotlib 3.11's deprecated ``vert`` to ``bxp``: not ours to fix.
            warnings.filterwarnings("ignore", message=".*vert: bool.*")
            sns.boxplot(**common, showfliers=False, width=0.6, boxprops={"alpha": 0.45})
        sns.stripplot(**common, size=2.2, alpha=0.5, jitter=0.25)
        means = part.groupby("strategy")["percent"].mean().reindex(names)
        ax.scatter(
            range(len(names)), means, marker="D", color="black", s=18, zorder=5, label="mean"
        )
        ax.axhline(100 / n_way, color="grey", ls=":", lw=1, label="chance")
        ax.set_xticks(
            range(len(names)), [short_label(n, 14) for n in names], rotation=30, ha="right"
        )
        ax.set(
            xlabel="",
            ylabel="accuracy per episode (%)",
            title=f"{_setting_title(n_way, k_shot)}, {part['episode'].nunique()} episodes",
        )
        ax.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def rate_colormap(n_rates: int) -> Any:
    """The colours of a scheme's learning rates, slowest first: frozen is the palest, the fastest
    rate the darkest (cividis, readable in colour-blind vision and in grey). Every figure that
    colours a layer by its rate uses it."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(plt.get_cmap("cividis_r")(np.linspace(0.05, 0.95, n_rates)))


def _lr_code(lr: float, zoo: Sequence[float]) -> float:
    return float(list(zoo).index(lr)) if lr in zoo else float("nan")


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
        grid[targets.index(r.target), layers.index(r.layer)] = _lr_code(r.lr, zoo)
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


def shift_figure(summary: Any, title: str | None = None) -> Figure:
    """Accuracy vs target per strategy (mean ± 95 % CI) and the number of layers the searched
    scheme fine-tunes; targets ordered by growing shift. ``summary``: the
    ``domain_shift_summary.csv`` frame."""
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
        ax.errorbar(
            x + off,
            100 * part["mean"],
            yerr=100 * part["ci95"],
            marker="o",
            ms=4,
            capsize=2,
            color=palette[name],
            label=name,
            lw=2.2 if name == "searched" else 1.2,
        )
    if "n_way" in summary.columns:
        ax.axhline(100 / summary["n_way"].iloc[0], color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(x, targets, rotation=20)
    ax.set(
        xlabel="target (growing shift →)",
        ylabel="test accuracy (%) ± 95% CI",
        title="accuracy per strategy",
    )
    ax.legend(fontsize=7)
    searched = summary[summary["strategy"] == "searched"].set_index("target").reindex(targets)
    ax_n.bar(x, searched["n_trainable"], color=palette.get("searched", OKABE_ITO[5]))
    ax_n.set_xticks(x, targets, rotation=20)
    n_layers = summary.attrs.get("n_layers")
    ax_n.set(xlabel="target", ylabel="layers fine-tuned", title="searched scheme")
    if n_layers:
        ax_n.set_ylim(0, n_layers)
    ax_n.yaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
