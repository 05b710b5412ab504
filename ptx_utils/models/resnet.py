"""ResNets: ResNet-10/18 as in CloserLook (Chen et al. 2019) and the few-shot ResNet-12.

Details: ``docs/backbones.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ptx_utils.models.base import Backbone
from ptx_utils.models.registry import register_backbone
from ptx_utils.models.stages import ForwardStages, StageFn, pool_flatten, submodule, tile

#: What a layer is, for ``granularity=``.
GRANULARITIES = ("block", "conv")
#: Stage widths of ResNet-10/18 (torchvision / CloserLook).
RESNET_WIDTHS = (64, 128, 256, 512)
#: Block widths of the few-shot ResNet-12.
RESNET12_WIDTHS = (64, 160, 320, 640)
#: Negative slope of ResNet-12's LeakyReLU.
RESNET12_SLOPE = 0.1


def check_granularity(granularity: str) -> str:
    """``granularity`` if it is one of :data:`GRANULARITIES`, else a ValueError listing them."""
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"unknown granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}"
        )
    return granularity


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """conv (no bias, 'same' padding) + BN, named ``0`` and ``1`` like torchvision's downsample."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """torchvision ``BasicBlock``: (B, in, H, W) -> (B, out, ceil(H / stride), ceil(W / stride)).

    conv3x3(stride) - BN - ReLU - conv3x3 - BN, plus the input (through a 1x1 conv + BN
    ``downsample`` when stride or width changes), then ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = (
            _conv_bn(in_channels, out_channels, 1, stride)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def conv_layers(self, prefix: str) -> dict[str, list[str]]:
        """Conv-granularity layers of this block, forward order, modules under ``prefix``."""
        layers = {
            f"{prefix}_conv1": [f"{prefix}.conv1", f"{prefix}.bn1"],
            f"{prefix}_conv2": [f"{prefix}.conv2", f"{prefix}.bn2"],
        }
        if self.downsample is not None:
            layers[f"{prefix}_shortcut"] = [f"{prefix}.downsample"]
        return layers


class ResNet(Backbone):
    """torchvision-style ResNet with BasicBlocks: (B, C, S, S) -> (B, 512).

    The global average pool makes ``out_dim`` independent of S; any S >= 1 runs.

    Args:
        name: registry name reported by :meth:`config`.
        blocks: residual blocks per stage, e.g. (1, 1, 1, 1) for ResNet-10.
        in_channels: input channels.
        image_size: nominal input side (recorded; inputs of other sizes also work).
        granularity: ``"block"`` or ``"conv"`` (see the module docstring).
    """

    def __init__(
        self,
        name: str,
        blocks: Sequence[int],
        in_channels: int = 3,
        image_size: int = 84,
        granularity: str = "block",
    ) -> None:
        super().__init__(name, in_channels, image_size)
        self.granularity = check_granularity(granularity)
        if len(blocks) != len(RESNET_WIDTHS) or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 counts >= 1, one per stage; got {list(blocks)}")
        self.blocks = tuple(int(b) for b in blocks)
        self.conv1 = nn.Conv2d(in_channels, RESNET_WIDTHS[0], 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(RESNET_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        width = RESNET_WIDTHS[0]
        for stage, (n_blocks, out_width) in enumerate(zip(self.blocks, RESNET_WIDTHS, strict=True)):
            stage_blocks = []
            for j in range(n_blocks):
                stride = 2 if stage > 0 and j == 0 else 1
                stage_blocks.append(BasicBlock(width, out_width, stride))
                width = out_width
            self.add_module(f"layer{stage + 1}", nn.Sequential(*stage_blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = RESNET_WIDTHS[-1]
        _init_weights(self, "relu")

        layers: dict[str, list[str]] = {"stem": ["conv1", "bn1", "relu", "maxpool"]}
        for stage in range(len(self.blocks)):
            for j, block in enumerate(self.get_submodule(f"layer{stage + 1}")):
                prefix = f"layer{stage + 1}.{j}"
                if granularity == "block":
                    layers[prefix] = [prefix]
                else:
                    layers.update(block.conv_layers(prefix))
        self._set_layers(layers)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(len(self.blocks)):
            x = getattr(self, f"layer{stage + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward_stages(self) -> ForwardStages:
        """The stem, then one stage per residual block, then pool + flatten."""
        if type(self)._forward is not ResNet._forward:
            return super().forward_stages()
        spec: list[tuple[StageFn, tuple[str, ...]]] = [(_stem, ("conv1", "bn1", "relu", "maxpool"))]
        for stage, n_blocks in enumerate(self.blocks):
            names = [f"layer{stage + 1}.{j}" for j in range(n_blocks)]
            spec += [(submodule(n), (n,)) for n in names]
        return tile(self, spec, pool_flatten)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "granularity": self.granularity}


class ResNet12Block(nn.Module):
    """Few-shot ResNet-12 block: (B, in, H, W) -> (B, out, H // 2, W // 2).

    (conv3x3 - BN - LeakyReLU) x 2, conv3x3 - BN, plus a 1x1 conv + BN shortcut, LeakyReLU,
    2x2 max-pool.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.LeakyReLU(RESNET12_SLOPE)
        self.downsample = _conv_bn(in_channels, out_channels, 1)
        self.maxpool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.maxpool(self.relu(out + self.downsample(x)))

    def conv_layers(self, prefix: str) -> dict[str, list[str]]:
        """Conv-granularity layers of this block, forward order, modules under ``prefix``."""
        layers = {f"{prefix}_conv{i}": [f"{prefix}.conv{i}", f"{prefix}.bn{i}"] for i in (1, 2, 3)}
        layers[f"{prefix}_shortcut"] = [f"{prefix}.downsample"]
        return layers


class ResNet12(Backbone):
    """Few-shot ResNet-12: (B, C, S, S) -> (B, 640), S >= 16 (four 2x2 pools).

    Args:
        in_channels: input channels.
        image_size: nominal input side (recorded; other sizes >= 16 also work).
        granularity: ``"block"`` (layers ``block1`` ... ``block4``) or ``"conv"`` (16 layers).
        name: registry name reported by :meth:`config`.
    """

    min_image_size = 16

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 84,
        granularity: str = "block",
        name: str = "resnet12",
    ) -> None:
        super().__init__(name, in_channels, image_size)
        self.granularity = check_granularity(granularity)
        width = in_channels
        for i, out_width in enumerate(RESNET12_WIDTHS):
            self.add_module(f"block{i + 1}", ResNet12Block(width, out_width))
            width = out_width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = RESNET12_WIDTHS[-1]
        _init_weights(self, "leaky_relu", RESNET12_SLOPE)

        layers: dict[str, list[str]] = {}
        for i in range(len(RESNET12_WIDTHS)):
            prefix = f"block{i + 1}"
            if granularity == "block":
                layers[prefix] = [prefix]
            else:
                layers.update(self.get_submodule(prefix).conv_layers(prefix))
        self._set_layers(layers)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(RESNET12_WIDTHS)):
            x = getattr(self, f"block{i + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward_stages(self) -> ForwardStages:
        """One stage per residual block, then pool + flatten."""
        if type(self)._forward is not ResNet12._forward:
            return super().forward_stages()
        names = [f"block{i + 1}" for i in range(len(RESNET12_WIDTHS))]
        return tile(self, [(submodule(n), (n,)) for n in names], pool_flatten)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "granularity": self.granularity}


def _stem(bb: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ResNet stem: conv 7x7/2 - BN - ReLU - maxpool 3x3/2."""
    return bb.maxpool(bb.relu(bb.bn1(bb.conv1(x))))


def _init_weights(module: nn.Module, nonlinearity: str, slope: float = 0.0) -> None:
    """Conv: Kaiming normal, fan-out (as torchvision, CloserLook and FEAT); BN: weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=slope, mode="fan_out", nonlinearity=nonlinearity)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_backbone("resnet10")
def resnet10(in_channels: int = 3, image_size: int = 84, granularity: str = "block") -> ResNet:
    """ResNet-10 (CloserLook): one BasicBlock per stage; 5 block layers, 12 conv layers."""
    return ResNet("resnet10", (1, 1, 1, 1), in_channels, image_size, granularity)


@register_backbone("resnet18")
def resnet18(in_channels: int = 3, image_size: int = 84, granularity: str = "block") -> ResNet:
    """ResNet-18 (CloserLook / torchvision): two per stage; 9 block layers, 20 conv layers."""
    return ResNet("resnet18", (2, 2, 2, 2), in_channels, image_size, granularity)


@register_backbone("resnet12")
def resnet12(in_channels: int = 3, image_size: int = 84, granularity: str = "block") -> ResNet12:
    """Few-shot ResNet-12 (MetaOptNet / FEAT): 4 block layers, 16 conv layers; 640 features."""
    return ResNet12(in_channels, image_size, granularity, name="resnet12")
