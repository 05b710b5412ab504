"""The fine-tuning protocol every engine follows: :class:`FinetuneConfig` and the replica plan.

Chen et al. 2019 / Shen et al. 2021: a new head per episode (linear or cosine), SGD momentum 0.9,
dampening 0.9, weight decay 1e-3, batch 4, 100 passes over the support set; backbone layers take
the scheme's rates (0 = frozen). Everything random in a replica comes from :func:`replica_plan`,
so both engines see the same head initialisation and batch order. Decisions: ``docs/protocol.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.models import Backbone

BN_MODES = ("eval", "train")
HEADS = ("linear", "cosine")


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning protocol (defaults: the paper's)."""

    head: str = "linear"
    passes: int = 100
    batch_size: int = 4
    momentum: float = 0.9
    dampening: float = 0.9
    weight_decay: float = 1e-3
    bn_mode: str = "eval"
    augment: bool = False

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        if self.passes < 0 or self.batch_size < 1:
            raise ValueError(f"need passes >= 0 and batch_size >= 1, got {self}")


@dataclass(frozen=True)
class ReplicaPlan:
    """What is random in one replica, drawn once and shared by both engines.

    Attributes:
        head_weight: (n_way, in_dim) initial head weights, uniform in ±1/sqrt(in_dim).
        head_bias: (n_way,) initial head bias (zeros; unused by the cosine head).
        batches: (n_steps, batch) support indices, pass by pass; a pass covers every support
            image once in a random order; the last batch of a pass may be shorter, in which
            case its rows are padded with -1.
        generator: the replica's generator after those draws (augmentation draws continue it).
    """

    head_weight: torch.Tensor
    head_bias: torch.Tensor
    batches: torch.Tensor
    generator: torch.Generator


def steps_per_pass(n_support: int, batch_size: int) -> int:
    return math.ceil(n_support / batch_size)


def replica_plan(
    seed: int, n_support: int, n_way: int, in_dim: int, cfg: FinetuneConfig
) -> ReplicaPlan:
    """Draw a replica's head initialisation and mini-batch order from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(in_dim)
    weight = (torch.rand((n_way, in_dim), generator=gen) * 2 - 1) * bound
    per_pass = steps_per_pass(n_support, cfg.batch_size)
    batches = torch.full((cfg.passes * per_pass, cfg.batch_size), -1, dtype=torch.int64)
    for p in range(cfg.passes):
        order = torch.randperm(n_support, generator=gen)
        for s in range(per_pass):
            chunk = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            batches[p * per_pass + s, : len(chunk)] = chunk
    return ReplicaPlan(weight, torch.zeros(n_way), batches, gen)


def is_bn(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a batch-norm layer (any dimension)."""
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def trainable_groups(backbone: Backbone, scheme: Scheme) -> list[dict[str, object]]:
    """SGD parameter groups of the backbone under ``scheme`` (layers with rate 0 are left out).

    With ``scheme.params == "bn"`` only batch-norm weights and biases of each layer train.
    """
    scheme.check(backbone.layer_names())
    groups = []
    modules = backbone.layer_modules()
    for name, lr in zip(backbone.layer_names(), scheme.lrs, strict=True):
        if lr == 0:
            continue
        mods = [m for top in modules[name] for m in top.modules()]
        if scheme.params == "bn":
            mods = [m for m in mods if is_bn(m)]
        params = list(dict.fromkeys(p for m in mods for p in m.parameters(recurse=False)))
        if params:
            groups.append({"params": params, "lr": lr})
    return groups


def set_bn_mode(backbone: Backbone, scheme: Scheme, bn_mode: str) -> None:
    """Eval mode everywhere; with ``bn_mode="train"``, BN of layers with a non-zero rate trains."""
    backbone.eval()
    if bn_mode == "train":
        modules = backbone.layer_modules()
        for name, lr in zip(backbone.layer_names(), scheme.lrs, strict=True):
            if lr > 0:
                for top in modules[name]:
                    for m in top.modules():
                        if is_bn(m):
                            m.train()


def check_record(record: Sequence[int] | None) -> tuple[int, ...]:
    """``record`` as a sorted tuple of distinct counts >= 0 (empty for None); refuses others."""
    if record is None:
        return ()
    points = tuple(record)
    if not points or any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in points):
        raise ValueError(f"record must be a non-empty list of update counts >= 0, got {record!r}")
    if list(points) != sorted(set(points)):
        raise ValueError(f"record must be increasing without repeats, got {list(points)}")
    return points


def check_record_within(record: tuple[int, ...], total: int, unit: str) -> tuple[int, ...]:
    """Refuse record points beyond the ``total`` updates a strategy makes."""
    if record and record[-1] > total:
        raise ValueError(
            f"record point {record[-1]} is beyond the {total} {unit} the strategy makes; raise "
            f"the {unit} to at least {record[-1]} or record fewer"
        )
    return record
