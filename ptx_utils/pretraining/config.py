"""A pre-training run's settings (:class:`PretrainConfig`) and outputs (:class:`PretrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ptx_utils.core.checks import refuse_unknown
from ptx_utils.core.device import PRECISIONS

METHODS = ("baseline", "baseline++", "protonet", "maml")
VECTORIZE = ("auto", "vmap", "loop")
#: Settings of older checkpoints that ``precision`` replaced (ignored when read back).
RETIRED = ("amp", "channels_last")
#: Settings added since the first checkpoints, with the value those checkpoints ran with.
ADDED_DEFAULTS: dict[str, Any] = {
    "feature_norm": False,
    "inner_steps": 5,
    "inner_lr": 0.01,
    "second_order": False,
    "meta_batch": 4,
    "vectorize": "auto",
    "temperature": 1.0,
}


@dataclass
class PretrainConfig:
    """Everything that defines a pre-training run (saved in the checkpoint).

    Attributes:
        method: ``baseline``, ``baseline++``, ``protonet`` or ``maml``.
        backbone / granularity: passed to :func:`~ptx_utils.models.create_backbone`.
        epochs: number of epochs; ``epoch_images`` caps the images per epoch (None: the split).
        batch_size, lr, weight_decay: Adam on backbone and head.
        crop, flip, jitter: training augmentation (:class:`~ptx_utils.data.augment.Augmentation`).
        train_way, train_shot, train_query, episodes_per_epoch: ProtoNet's and MAML's
            training episodes.
        temperature: ProtoNet's training logits are −‖query − centroid‖² / temperature (1: Snell
            et al. and CloserLook; FEAT's code divides by one, and ConvNet scripts on
            mini-ImageNet built on it pass 64). The argmax, hence validation and
            nearest-centroid use, does not depend on it.
        inner_steps, inner_lr, second_order, meta_batch: MAML's inner loop (full-batch SGD on
            the support set) and the tasks per outer Adam step (CloserLook: 5 steps at 0.01,
            4 tasks, first-order); ``vectorize``: the tasks under ``vmap`` or in a loop
            (``auto``: ``vmap`` on CUDA, the loop on a CPU, where it is faster).
        val_way, val_shot, val_query, val_episodes, val_metric: the fixed validation episodes and
            the nearest-centroid metric that scores each epoch.
        seed: the one seed of the run (initialisation, batch order, augmentation, episodes).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        precision: ``auto``, ``fp32`` or ``bf16`` (bf16 autocast + channels-last;
            :func:`~ptx_utils.core.device.resolve_precision`).
        feature_norm: feature normalisation (FN, Yazdanpanah et al., CVPR 2022): every batch
            norm's affine frozen at γ = 1, β = 0 for the whole pre-training (not optimised;
            its running statistics still tracked).
    """

    method: str = "baseline++"
    backbone: str = "conv4"
    granularity: str = "block"
    epochs: int = 400
    epoch_images: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    crop: bool = True
    flip: bool = True
    jitter: float = 0.4
    train_way: int = 5
    train_shot: int = 5
    train_query: int = 16
    episodes_per_epoch: int = 100
    val_way: int = 5
    val_shot: int = 5
    val_query: int = 15
    val_episodes: int = 100
    val_metric: str = "euclidean"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    feature_norm: bool = False
    inner_steps: int = 5
    inner_lr: float = 0.01
    second_order: bool = False
    meta_batch: int = 4
    vectorize: str = "auto"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.vectorize not in VECTORIZE:
            raise ValueError(f"vectorize must be one of {VECTORIZE}, got {self.vectorize!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.temperature != 1.0 and self.method != "protonet":
            raise ValueError(
                f"temperature scales ProtoNet's training logits; method {self.method!r} has "
                "none: leave it at 1"
            )
        if self.method == "maml":
            self._check_maml()

    def _check_maml(self) -> None:
        if self.precision == "bf16":
            raise ValueError("MAML meta-trains in fp32: give precision 'fp32' or 'auto'")
        if self.feature_norm:
            raise ValueError("feature_norm is a pre-training option of baseline/baseline++")
        if self.val_way != self.train_way:
            raise ValueError(
                f"MAML's head has train_way={self.train_way} outputs: give val_way the same, "
                f"got {self.val_way}"
            )
        if self.inner_steps < 1 or self.meta_batch < 1 or not self.inner_lr > 0:
            raise ValueError(
                "MAML needs inner_steps >= 1, meta_batch >= 1 and inner_lr > 0, got "
                f"{self.inner_steps}, {self.meta_batch}, {self.inner_lr}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        """Build from a dict, refusing unknown keys with the list of known ones."""
        values = {**ADDED_DEFAULTS, **{k: v for k, v in values.items() if k not in RETIRED}}
        refuse_unknown(values, (f.name for f in fields(cls)), "pre-training parameter")
        return cls(**values)


@dataclass
class PretrainResult:
    """Where the run wrote its files, and its per-epoch history."""

    out_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = float("nan")

    @property
    def best_checkpoint(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.out_dir / "last.pt"
