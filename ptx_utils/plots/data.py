"""Figures of the data: image grids, the synthetic domain-shift grid, one episode."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.plots.common import short_label


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
