"""The engine's model: backbone stages from a start stage plus the head, and the frozen prefix.

A :class:`Runner` runs the backbone's :meth:`~ptx_utils.models.Backbone.forward_stages` from
stage ``start`` on; the stages before it are frozen in every replica of a chunk and run once per
episode (:func:`episode_inputs`), in the chunk's precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ptx_utils.core.device import to_layout
from ptx_utils.data.augment import normalize
from ptx_utils.finetuning.bn_stats import load_statistics
from ptx_utils.finetuning.feature_transform import apply_transform
from ptx_utils.models import Backbone


class Runner(nn.Module):
    """Backbone stages ``start:``, the feature transform, the head.

    Parameters are named ``backbone.*`` and ``head.*``; ``transform`` is a strategy's
    ``(feature_transform, options)`` (:mod:`~ptx_utils.finetuning.feature_transform`).
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        transform: tuple[str, dict[str, Any]] = ("none", {}),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.transform = transform
        split = backbone.forward_stages()
        self.stages, self.tail, self.split = split.stages, split.tail, split

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        for stage in self.stages[start:]:
            x = stage.run(self.backbone, x)
        feats = self.tail(self.backbone, x).float()  # the transform and head always in float32
        return self.head(apply_transform(feats, *self.transform))

    def prefix(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        for stage in self.stages[:stop]:
            x = stage.run(self.backbone, x)
        return x


def _no_grad_prefix(runner: Runner, x: torch.Tensor, stop: int) -> torch.Tensor:
    """The output of the first ``stop`` stages (frozen, eval-mode BN), without grad."""
    with torch.no_grad():
        return runner.prefix(x, stop)


def episode_inputs(
    runner: Runner,
    images: torch.Tensor,
    start: int,
    precision: str,
    stats: Sequence[dict[str, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Normalised images (E, M, ...) of a chunk's episodes, through the frozen prefix if any.

    ``stats`` (one dict per episode, AdaBN's :func:`~.bn_stats.episode_statistics`): each
    episode's prefix runs with its own batch-norm statistics (the runner's are put back after).
    """
    x = normalize(images.flatten(0, 1)).unflatten(0, images.shape[:2])
    return grouped_prefix_output(runner, x, start, precision, stats) if start else x


def grouped_prefix_output(
    runner: Runner,
    x: torch.Tensor,
    stop: int,
    precision: str,
    stats: Sequence[dict[str, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """:func:`frozen_prefix_output` of normalised inputs (G, M, ...), group g with ``stats[g]``.

    Without ``stats`` all groups run at once with the runner's own statistics; with them, group
    by group, the runner's statistics put back after.
    """
    g, m = x.shape[:2]
    if stats is None:
        return frozen_prefix_output(runner, x.flatten(0, 1), stop, precision).unflatten(0, (g, m))
    saved = {k: v.clone() for k, v in runner.backbone.named_buffers()}
    try:
        out = []
        for group, group_stats in zip(x, stats, strict=True):
            load_statistics(runner.backbone, group_stats)
            out.append(frozen_prefix_output(runner, group, stop, precision))
    finally:
        load_statistics(runner.backbone, saved)
    return torch.stack(out)


def frozen_prefix_output(
    runner: Runner, x: torch.Tensor, stop: int, precision: str
) -> torch.Tensor:
    """The frozen prefix in ``precision`` (bf16: channels-last in, contiguous bf16 out)."""
    if precision == "bf16":
        x = x.to(torch.bfloat16)
    return _no_grad_prefix(runner, to_layout(x, precision), stop).contiguous()
