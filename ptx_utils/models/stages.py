"""Forward stages: a backbone's forward split at layer boundaries, as the batched engine runs it.

Each backbone declares its own stages (as timm models declare ``group_matcher``), so the engine
never branches on a backbone's class: ``tail(bb, stage_n(... stage_1(bb, x)))`` equals
``bb._forward(x)``. A frozen leading run of stages is computed once per episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ptx_utils.models.base import Backbone

#: ``run(backbone, x) -> y``: the backbone is an argument (the engine runs a private copy).
StageFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Stage:
    """A piece of the forward covering whole layers: ``run(backbone, x)`` and its layers."""

    run: StageFn
    layers: tuple[str, ...]


@dataclass(frozen=True)
class ForwardStages:
    """The stages, input side first, and the parameter-free ``tail`` after the last one."""

    stages: tuple[Stage, ...]
    tail: StageFn

    def frozen_prefix(self, lr_of_layer: dict[str, float]) -> int:
        """How many leading stages hold only frozen (rate 0) layers."""
        k = 0
        for stage in self.stages:
            if any(lr_of_layer[layer] != 0 for layer in stage.layers):
                break
            k += 1
        return k


def submodule(name: str) -> StageFn:
    """The stage that runs the sub-module ``name``."""
    return lambda bb, x: bb.get_submodule(name)(x)


def identity(bb: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x


def flatten(bb: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * H * W)."""
    return torch.flatten(x, 1)


def pool_flatten(bb: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's ``avgpool`` then flatten: (B, C, H, W) -> (B, C)."""
    return torch.flatten(bb.avgpool(x), 1)


def whole(bb: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The whole forward as one stage (any backbone)."""
    return bb._forward(x)


def single_stage(backbone: Backbone) -> ForwardStages:
    """Every layer in one stage: what a backbone without a finer split gets."""
    return ForwardStages((Stage(whole, tuple(backbone.layer_names())),), identity)


def tile(
    backbone: Backbone, spec: Sequence[tuple[StageFn, Sequence[str]]], tail: StageFn
) -> ForwardStages:
    """Stages from ``(run, module names)`` pairs, each holding the layers its modules own.

    Falls back to :func:`single_stage` unless the stages tile the layers in order (a layer
    table that does not line up with the blocks, e.g. ``granularity="conv"`` inside a block).
    """
    owner = {**backbone.param_layer_map(), **backbone.buffer_layer_map()}
    order = backbone.layer_names()
    stages = []
    for run, modules in spec:
        layers = {
            layer for name, layer in owner.items() if any(name.startswith(m + ".") for m in modules)
        }
        stages.append(Stage(run, tuple(sorted(layers, key=order.index))))
    flat = [layer for s in stages for layer in s.layers]
    return ForwardStages(tuple(stages), tail) if flat == order else single_stage(backbone)
