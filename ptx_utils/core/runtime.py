"""Where and how a computation runs: seed, device, chunk size, progress bars (one small object)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptx_utils.core.device import precision_record, resolve_device, resolve_precision

#: Where replicas run: here, or on a Ray cluster (:mod:`ptx_utils.finetuning.ray_executor`).
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Executor:
    """Where replicas run: ``kind`` ``"local"`` or ``"ray"`` (``address``: None = a local Ray
    runtime, ``"auto"``, ``"host:6379"``, ``"ray://host:10001"``; ``workers``: None = one per
    GPU, else one per CPU of the cluster)."""

    kind: str = "local"
    address: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.kind!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 or None, got {self.workers}")


#: Replicas run in this process.
LOCAL = Executor()


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
        executor: ``"local"`` or ``"ray"`` (the search's and the evaluation's replicas on a
            Ray cluster; same numbers), with ``ray_address`` and ``ray_workers``
            (:class:`Executor`).

    Example:
        >>> Runtime(seed=3, progress=False).torch_device().type in {"cpu", "cuda"}
        True
    """

    seed: int = 0
    device: str = "auto"
    chunk_size: int | None = None
    progress: bool = True
    precision: str = "auto"
    executor: str = "local"
    ray_address: str | None = None
    ray_workers: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", int(self.seed))
        self.where()  # refuses a bad executor early
        object.__setattr__(self, "device", str(self.device))
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {self.chunk_size}")
        resolve_precision(self.precision, "cpu")  # refuses unknown values early

    def where(self) -> Executor:
        """The :class:`Executor` these settings describe."""
        return Executor(self.executor, self.ray_address, self.ray_workers)

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
