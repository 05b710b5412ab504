"""The engine's model: backbone stages from a start stage plus the head, and the frozen prefix.

A :class:`Runner` runs the backbone's :meth:`~ptx_utils.models.Backbone.forward_stages` from
stage ``start`` on; the stages before it are frozen in every replica of a chunk and run once per
episode (:func:`episode_inputs`), in the chunk's precision.
"""

from __future__ import annotations

import torch
from torch import nn

from ptx_utils.core.device import to_layout
from ptx_utils.data.augment import normalize
from ptx_utils.models import Backbone


class Runner(nn.Module):
    """Backbone stages ``start:`` plus head; parameters named ``backbone.*`` and ``head.*``."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        split = backbone.forward_stages()
        self.stages, self.tail, self.split = split.stages, split.tail, split

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        for stage in self.stages[start:]:
            x = stage.run(self.backbone, x)
        return self.head(self.tail(self.backbone, x).float())  # the head always in float32

    def prefix(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        for stage in self.stages[:stop]:
            x = stage.run(self.backbone, x)
        return x


def _no_grad_prefix(runner: Runner, x: torch.Tensor, stop: int) -> torch.Tensor:
    """The output of the first ``stop`` stages (frozen, eval-mode BN), without grad."""
    with torch.no_grad():
        return runner.prefix(x, stop)


def episode_inputs(
    runner: Runner, images: torch.Tensor, start: int, precision: str
) -> torch.Tensor:
    """Normalised images (E, M, ...) of a chunk's episodes, through the frozen prefix if any."""
    e, m = images.shape[:2]
    x = normalize(images.flatten(0, 1))
    if start:
        x = frozen_prefix_output(runner, x, start, precision)
    return x.unflatten(0, (e, m))


def frozen_prefix_output(
    runner: Runner, x: torch.Tensor, stop: int, precision: str
) -> torch.Tensor:
    """The frozen prefix in ``precision`` (bf16: channels-last in, contiguous bf16 out)."""
    if precision == "bf16":
        x = x.to(torch.bfloat16)
    return _no_grad_prefix(runner, to_layout(x, precision), stop).contiguous()
