"""AdaBN: batch-norm running statistics re-estimated on an episode (Li et al., ICLR-W 2017).

``bn_stats="support"`` replaces every batch norm's running mean and variance by those of the
episode's support images before the strategy adapts; ``"support+query"`` uses the queries too
(transductive). One forward pass of those images, every batch norm in training mode with
``momentum=None`` after a reset: the batch's mean and unbiased variance, layer after layer. Both
engines take them from :func:`episode_statistics`, in float32. ``docs/strategies.md``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from ptx_utils.core.device import to_layout
from ptx_utils.data.augment import normalize
from ptx_utils.finetuning.protocol import is_bn

#: The buffers of a batch norm that AdaBN replaces.
BN_STAT_NAMES = ("running_mean", "running_var", "num_batches_tracked")


@torch.no_grad()
def episode_statistics(
    model: nn.Module, images: torch.Tensor, precision: str = "fp32"
) -> dict[str, torch.Tensor]:
    """The running statistics of every batch norm of ``model``, re-estimated on ``images``.

    Args:
        model: a float32 network with batch norms (left unchanged).
        images: uint8 (M, C, H, W) images (the support set, or support + query).
        precision: the memory layout to run in (``"bf16"``: channels-last; arithmetic stays
            float32).

    Returns:
        qualified buffer name (``"block1.bn.running_mean"``, ...) -> tensor, for every batch
        norm's :data:`BN_STAT_NAMES`.

    Example:
        >>> from ptx_utils.models import create_backbone
        >>> bb = create_backbone("conv4", image_size=16)
        >>> stats = episode_statistics(bb, torch.randint(0, 255, (5, 3, 16, 16), dtype=torch.uint8))
        >>> sorted(stats)[:2]
        ['block1.bn.num_batches_tracked', 'block1.bn.running_mean']
    """
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(
            "AdaBN re-estimates batch statistics from a batch of images (M, C, H, W) with "
            f"M >= 2, got shape {tuple(images.shape)}"
        )
    work = copy.deepcopy(model).float()
    work.eval()
    for m in work.modules():
        if is_bn(m):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, that batch's statistics
            m.train()
    device = next(work.parameters()).device
    x = normalize(images.to(device))
    work(to_layout(x, precision))
    return {
        f"{name}.{stat}": getattr(m, stat).detach().clone()
        for name, m in work.named_modules()
        if is_bn(m)
        for stat in BN_STAT_NAMES
        if getattr(m, stat, None) is not None
    }


@torch.no_grad()
def load_statistics(model: nn.Module, stats: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Copy ``stats`` (from :func:`episode_statistics`) into ``model``'s buffers, in place.

    ``prefix`` is prepended to each name (``"backbone."`` when ``model`` wraps the backbone).
    """
    buffers = dict(model.named_buffers())
    for name, value in stats.items():
        target = buffers.get(prefix + name)
        if target is None:
            raise KeyError(f"model has no buffer {prefix + name!r} to take AdaBN statistics")
        target.copy_(value)


def statistics_images(
    support_images: torch.Tensor, query_images: torch.Tensor, bn_stats: str
) -> torch.Tensor:
    """The images ``bn_stats`` re-estimates on: the support set, or support + query."""
    if bn_stats == "support":
        return support_images
    if bn_stats == "support+query":
        return torch.cat([support_images, query_images])
    raise ValueError(f"AdaBN needs bn_stats 'support' or 'support+query', got {bn_stats!r}")


def episodes_statistics(
    model: nn.Module,
    episodes: Iterable[int],
    support_images: torch.Tensor,
    query_images: torch.Tensor,
    bn_stats: str | None,
    precision: str = "fp32",
) -> dict[int, dict[str, torch.Tensor]]:
    """AdaBN's statistics of each of ``episodes`` (indices into the stacked tensors), or {}
    without AdaBN (``bn_stats`` None)."""
    if bn_stats is None:
        return {}
    return {
        e: episode_statistics(
            model, statistics_images(support_images[e], query_images[e], bn_stats), precision
        )
        for e in sorted(set(episodes))
    }
