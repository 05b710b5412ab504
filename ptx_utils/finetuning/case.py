"""CaSE blocks (Patacchiola et al., NeurIPS 2022): contextual squeeze-and-excitation on a frozen
backbone, for UpperCaSE.

A CaSE block scales each channel of a feature map by γ = 2·sigmoid(MLP(context)), the context
being the feature map of the support set pooled over images and space (standardised). In context
mode a forward computes γ from its input and stores it; in inference mode it multiplies by the
stored γ. The MLP's last layer starts at zero, so γ = 1 and a fresh block is the identity. As
the released code: hidden units max(16, C // 64), SiLU, out_mul 2. ``docs/strategies.md#case``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ptx_utils.models import Backbone

MODES = ("context", "inference")


class CaSE(nn.Module):
    """One CaSE block on C channels: (B, C, H, W) -> (B, C, H, W).

    Example:
        >>> block = CaSE(64)
        >>> x = torch.randn(5, 64, 7, 7)
        >>> torch.equal(block(x), x)  # zero-initialised last layer: γ = 1
        True
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 64,
        min_units: int = 16,
        standardize: bool = True,
        out_mul: float = 2.0,
    ) -> None:
        super().__init__()
        hidden = max(min_units, channels // reduction)
        self.l1 = nn.Linear(channels, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, channels)
        nn.init.zeros_(self.l3.weight)
        nn.init.zeros_(self.l3.bias)
        self.standardize, self.out_mul = standardize, out_mul
        self.mode = "context"
        self.gamma: torch.Tensor = torch.ones(channels)

    def gamma_of(self, context: torch.Tensor) -> torch.Tensor:
        """γ (C,) of a context feature map (M, C, H, W): pooled, standardised, the MLP."""
        pooled = context.float().mean(dim=(0, 2, 3))
        if self.standardize:
            pooled = (pooled - pooled.mean()) / torch.sqrt(pooled.var(unbiased=False) + 1e-5)
        hidden = nn.functional.silu(self.l2(nn.functional.silu(self.l1(pooled))))
        return torch.sigmoid(self.l3(hidden)) * self.out_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "context":
            self.gamma = self.gamma_of(x)
        gamma = self.gamma.to(device=x.device, dtype=x.dtype)
        return x * gamma.view(1, -1, 1, 1)


class CaSENetwork(nn.Module):
    """A frozen backbone with a CaSE block after each of its layers (Conv4/6: after every block,
    where a positive per-channel scale commutes with the block's ReLU and max-pool; ResNets:
    after every residual stage): (B, C, H, W) -> (B, out_dim).

    Example:
        >>> from ptx_utils.models import create_backbone
        >>> net = CaSENetwork(create_backbone("conv4", image_size=16))
        >>> x = torch.randn(6, 3, 16, 16)
        >>> with net.context():
        ...     _ = net(x[:5])  # the support set sets every γ
        >>> net(x).shape
        torch.Size([6, 64])
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        split = backbone.forward_stages()
        self.stages, self.tail = split.stages, split.tail
        channels = []
        x = torch.zeros(2, backbone.in_channels, backbone.image_size, backbone.image_size)
        with torch.no_grad():
            for stage in self.stages:
                x = stage.run(backbone, x)
                channels.append(x.shape[1])
        self.blocks = nn.ModuleList(CaSE(c) for c in channels)
        self.set_mode("inference")

    def set_mode(self, mode: str) -> None:
        """``"context"`` (each forward sets γ from its input) or ``"inference"`` (stored γ)."""
        if mode not in MODES:
            raise ValueError(f"CaSE mode must be one of {MODES}, got {mode!r}")
        for block in self.blocks:
            block.mode = mode

    @contextmanager
    def context(self) -> Iterator[None]:
        """Context mode inside the ``with`` block, inference mode after it."""
        self.set_mode("context")
        try:
            yield
        finally:
            self.set_mode("inference")

    def train(self, mode: bool = True) -> CaSENetwork:
        """The CaSE blocks follow ``mode``; the backbone stays in eval mode (frozen statistics)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage, block in zip(self.stages, self.blocks, strict=True):
            x = block(stage.run(self.backbone, x))
        return self.tail(self.backbone, x)
