"""Where and how a computation runs: seed, device, chunk size, progress bars (one small object)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptx_utils.core.device import precision_record, resolve_device, resolve_precision


@dataclass(frozen=True)
class Runtime:
    """The runtime settings that travel together through the search, evaluation and widgets.

    Attributes:
        seed: seeds the replicas (head initialisation, batch order) and any draws.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        chunk_size: replicas per batched-engine chunk; None = sized from free memory.
        progress: show progress bars.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``
            (:func:`~ptx_utils.core.device.resolve_precision`).

    Example:
        >>> Runtime(seed=3, progress=False).torch_device().type in {"cpu", "cuda"}
        True
    """

    seed: int = 0
    device: str = "auto"
    chunk_size: int | None = None
    progress: bool = True
    precision: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "device", str(self.device))
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {self.chunk_size}")
        resolve_precision(self.precision, "cpu")  # refuses unknown values early

    def torch_device(self) -> torch.device:
        """The resolved :class:`torch.device` (raises when CUDA is asked for but absent)."""
        return resolve_device(self.device)

    def torch_precision(self) -> str:
        """The precision used on this runtime's device: ``"fp32"`` or ``"bf16"``."""
        return resolve_precision(self.precision, self.torch_device())

    def record(self) -> dict[str, object]:
        """What results record about it: seed, device, chunk size and precision."""
        return {
            "seed": self.seed,
            "device": self.device,
            "chunk_size": self.chunk_size,
            **precision_record(self.precision, self.torch_device()),
        }
