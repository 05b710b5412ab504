"""Where and how a computation runs: seed, device, chunk size, progress bars (one small object)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptx_utils.core.device import resolve_device


@dataclass(frozen=True)
class Runtime:
    """The runtime settings that travel together through the search, evaluation and widgets.

    Attributes:
        seed: seeds the replicas (head initialisation, batch order) and any draws.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        chunk_size: replicas per batched-engine chunk; None = sized from free memory.
        progress: show progress bars.

    Example:
        >>> Runtime(seed=3, progress=False).torch_device().type in {"cpu", "cuda"}
        True
    """

    seed: int = 0
    device: str = "auto"
    chunk_size: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "device", str(self.device))
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {self.chunk_size}")

    def torch_device(self) -> torch.device:
        """The resolved :class:`torch.device` (raises when CUDA is asked for but absent)."""
        return resolve_device(self.device)
