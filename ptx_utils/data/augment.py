"""Image preparation on the device: uint8 → normalised float, and batched random augmentation.

Augmentation runs on whatever device the batch is on, for the whole batch at once, with random
numbers drawn from an explicit CPU ``torch.Generator`` (so a run is reproducible and resumable,
and the same on CPU and GPU up to floating point): random resized crop, horizontal flip, and
colour jitter (brightness, contrast, saturation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.5,), (0.5,)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) in [0, 1] → standardised per channel (ImageNet statistics for RGB)."""
    mean, std = (RGB_MEAN, RGB_STD) if x.shape[1] == 3 else (GRAY_MEAN, GRAY_STD)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float32 (B, C, H, W), scaled to [0, 1] and standardised per channel."""
    return _standardize(images.float().div_(255.0))


@dataclass(frozen=True)
class Augmentation:
    """Which random transforms to apply and how strongly.

    Attributes:
        crop: random resized crop keeping ``min_scale`` to 1 of the side (then resized back).
        flip: horizontal flip with probability 0.5.
        jitter: colour jitter strength (0 = off); factors drawn from [1 - jitter, 1 + jitter].
    """

    crop: bool = True
    flip: bool = True
    jitter: float = 0.4
    min_scale: float = 0.6

    @property
    def enabled(self) -> bool:
        return self.crop or self.flip or self.jitter > 0


def augment(images: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Randomly transform a batch of uint8 images; return normalised float (B, C, H, W).

    ``generator`` is a CPU generator; all random numbers come from it, in a fixed order.
    """
    b, c = images.shape[:2]
    u = torch.rand((b, 7), generator=generator).to(images.device)
    x = images.float().div_(255.0)
    if aug.crop or aug.flip:
        scale = 1 - (1 - aug.min_scale) * u[:, 0] if aug.crop else torch.ones_like(u[:, 0])
        tx = (1 - scale) * (2 * u[:, 1] - 1) if aug.crop else torch.zeros_like(scale)
        ty = (1 - scale) * (2 * u[:, 2] - 1) if aug.crop else torch.zeros_like(scale)
        sx = torch.where(u[:, 3] < 0.5, -scale, scale) if aug.flip else scale
        theta = torch.zeros((b, 2, 3), device=images.device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, scale, ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if aug.jitter > 0:
        factor = 1 + aug.jitter * (2 * u[:, 4:7] - 1)  # brightness, contrast, saturation
        x = x * factor[:, 0].view(b, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * factor[:, 1].view(b, 1, 1, 1)
        if c == 3:
            gray = x.mean(dim=1, keepdim=True)
            x = gray + (x - gray) * factor[:, 2].view(b, 1, 1, 1)
        x = x.clamp_(0, 1)
    return _standardize(x)
