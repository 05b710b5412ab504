"""Conv4 and Conv6 as in CloserLook (Chen et al. 2019, ``backbone.py`` ``ConvNet``).

Each block is conv3x3 (padding 1, with bias) - BatchNorm - ReLU with 64 channels; the first four
blocks end with a 2x2 max-pool (floor), later ones keep the resolution. The last feature map is
flattened, so ``out_dim`` depends on the input size: 84x84 -> 64 * 5 * 5 = 1600 for both Conv4
and Conv6, 28x28 -> 64 for both. Layers are ``block1`` ... ``blockN``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ptx_utils.models.base import Backbone
from ptx_utils.models.registry import register_backbone
from ptx_utils.models.stages import ForwardStages, flatten, submodule, tile

#: Channels of every conv block (CloserLook).
CONV_WIDTH = 64
#: Blocks that end with a 2x2 max-pool (CloserLook pools in the first four only).
POOLED_BLOCKS = 4


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    """conv3x3(pad 1) - BN - ReLU [- maxpool 2x2]: (B, in, H, W) -> (B, out, H', W')."""
    parts: list[tuple[str, nn.Module]] = [
        ("conv", nn.Conv2d(in_channels, out_channels, 3, padding=1)),
        ("bn", nn.BatchNorm2d(out_channels)),
        ("relu", nn.ReLU(inplace=True)),
    ]
    if pool:
        parts.append(("pool", nn.MaxPool2d(2)))
    return nn.Sequential(OrderedDict(parts))


class ConvNet(Backbone):
    """CloserLook ConvNet of ``depth`` blocks: (B, C, S, S) -> (B, 64 * s * s), s = S // 16.

    Args:
        depth: number of conv blocks (4 or 6 in the registry).
        in_channels: input channels.
        image_size: input side S (>= 16, so four 2x2 pools leave at least 1x1).
        name: registry name reported by :meth:`config`.
    """

    size_dependent = True
    min_image_size = 2**POOLED_BLOCKS

    def __init__(
        self, depth: int, in_channels: int = 3, image_size: int = 84, name: str | None = None
    ) -> None:
        super().__init__(name or f"conv{depth}", in_channels, image_size)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        for i in range(depth):
            block = conv_block(
                in_channels if i == 0 else CONV_WIDTH, CONV_WIDTH, pool=i < POOLED_BLOCKS
            )
            self.add_module(f"block{i + 1}", block)
        _init_weights(self)
        self.out_dim = self._infer_out_dim()
        self._set_layers({f"block{i + 1}": [f"block{i + 1}"] for i in range(depth)})

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.depth):
            x = getattr(self, f"block{i + 1}")(x)
        return torch.flatten(x, 1)

    def forward_stages(self) -> ForwardStages:
        """One stage per block, then flatten (one stage if a subclass re-defines the forward)."""
        if type(self)._forward is not ConvNet._forward:
            return super().forward_stages()
        names = [f"block{i + 1}" for i in range(self.depth)]
        return tile(self, [(submodule(n), (n,)) for n in names], flatten)


def _init_weights(module: nn.Module) -> None:
    """CloserLook ``init_layer``: conv ~ N(0, 2 / (k * k * out)), BN weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_backbone("conv4")
def conv4(in_channels: int = 3, image_size: int = 84) -> ConvNet:
    """Conv4: four pooled blocks; 84x84 -> 1600 features, 28x28 -> 64."""
    return ConvNet(4, in_channels, image_size, name="conv4")


@register_backbone("conv6")
def conv6(in_channels: int = 3, image_size: int = 84) -> ConvNet:
    """Conv6: four pooled blocks then two unpooled; 84x84 -> 1600 features, 28x28 -> 64."""
    return ConvNet(6, in_channels, image_size, name="conv6")
