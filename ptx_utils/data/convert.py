"""Bring a split into another backbone's input format: channel count and image size.

A cross-domain target (e.g. Omniglot characters for a mini-ImageNet backbone) must look like what
the backbone was trained on as far as the tensor shape goes: gray images are repeated to three
channels, colour images are reduced to luminance (ITU-R BT.601 weights), and images are resized
with anti-aliased bilinear interpolation. The pixels are otherwise left as they are — that
difference is the domain shift being studied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.errors import DataError

#: Luminance weights (R, G, B) used to turn colour images gray.
LUMA = (0.299, 0.587, 0.114)


def convert_images(images: torch.Tensor, channels: int, image_size: int) -> torch.Tensor:
    """uint8 (N, C, H, H) -> uint8 (N, channels, image_size, image_size)."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    x = images
    if x.shape[1] != channels:
        if channels == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            weights = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
            x = (x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if x.shape[-1] != image_size:
        x = F.interpolate(
            x.float(),
            size=(image_size, image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x.contiguous()


def match_format(
    dataset: FewShotDataset, channels: int, image_size: int, chunk: int = 2048
) -> FewShotDataset:
    """``dataset`` with images (N, ``channels``, ``image_size``, ``image_size``) uint8.

    Returns ``dataset`` itself when it already has that format. Labels, class names, name and split
    are kept (so episodes drawn from the result are those drawn from ``dataset``); ``source``
    records the conversion.
    """
    if dataset.channels == channels and dataset.image_size == image_size:
        return dataset
    parts = [
        convert_images(dataset.images[i : i + chunk], channels, image_size)
        for i in tqdm(
            range(0, len(dataset), chunk),
            desc=f"convert {dataset.name}/{dataset.split}",
            leave=False,
        )
    ]
    images = (
        torch.cat(parts) if parts else dataset.images.new_empty(0, channels, image_size, image_size)
    )
    source = f"{dataset.source} -> {channels}ch {image_size}px"
    return FewShotDataset(
        images, dataset.labels, list(dataset.class_names), dataset.name, dataset.split, source
    )
