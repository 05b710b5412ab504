"""Figures: image grids, the domain-shift grid, training and search curves; saved as PDF and PNG.

Every figure function returns a matplotlib ``Figure`` (so a notebook shows it inline) and
:func:`save_figure` writes it as ``<stem>.pdf`` and ``<stem>.png``, atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from ptx_utils.data.base import FewShotDataset
from ptx_utils.episodes import Episodes
from ptx_utils.runs import atomic_open

if TYPE_CHECKING:
    from ptx_utils.search import GenerationReport, SearchResult

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
