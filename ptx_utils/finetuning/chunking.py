"""How many replicas the batched engine trains at once: fixed on CPU, from free memory on CUDA."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptx_utils.data.augment import normalize
from ptx_utils.models import Backbone

#: Replicas per chunk on CPU when ``chunk_size`` is None.
CPU_CHUNK_SIZE = 32
#: Fraction of free GPU memory the automatic chunk size plans to use.
GPU_MEMORY_FRACTION = 0.5


def auto_chunk_size(backbone: Backbone, image: torch.Tensor, images: int, n_rep: int) -> int:
    """Replicas per chunk: :data:`CPU_CHUNK_SIZE` on CPU; on CUDA, what fits in part of the
    free memory for ``images`` images a replica (``image``: one uint8 (1, C, H, W) input)."""
    device = next(backbone.parameters()).device
    if device.type != "cuda":
        return min(n_rep, CPU_CHUNK_SIZE)
    free, _ = torch.cuda.mem_get_info(device)
    param_bytes = sum(p.numel() * p.element_size() for p in backbone.parameters())
    per_replica = 4 * param_bytes + activation_bytes_per_image(backbone, image) * images
    return max(1, min(n_rep, int(GPU_MEMORY_FRACTION * free / max(per_replica, 1))))


def activation_bytes_per_image(backbone: Backbone, image: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one image (a rough activation footprint)."""
    total = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    device = next(backbone.parameters()).device
    leaves = [m for m in backbone.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            backbone._forward(normalize(image.to(device)))
    finally:
        for h in handles:
            h.remove()
    return total
