"""Fine-tuning a pre-trained backbone plus a new head on an episode's support set, under a scheme.

This module holds the protocol and the **sequential reference**: one scheme, one episode, plain
PyTorch (``torch.optim.SGD``), as simple as it can be. The batched engine must produce the same
query logits; both draw everything random from :func:`replica_plan`, so a (scheme, episode, seed)
replica sees the same head initialisation and the same mini-batch order in either engine.

Protocol (Chen et al. 2019, Shen et al. 2021), every value a field of :class:`FinetuneConfig`:
a new head per episode (linear or cosine), SGD with momentum 0.9, dampening 0.9, weight decay 1e-3,
batch 4, 100 passes over the support set; backbone layers take the scheme's rates (0 = frozen),
the head ``scheme.head_lr``.

Decisions (documented in the README):

- **BN mode** ``"eval"`` (default): batch norm uses its pre-trained running statistics and never
  updates them; with 4 images a batch, batch statistics are mostly noise. Its affine weights still
  train when the scheme trains the layer. ``"train"``: layers with a non-zero rate normalise with
  batch statistics and update their running statistics; frozen layers stay in eval mode.
- **Augmentation** during fine-tuning: off by default (``augment=False``); on, each mini-batch is
  augmented like pre-training, with the replica's generator.
- **Divergence**: when the loss becomes NaN or infinite the replica stops, is marked diverged and
  its query logits are NaN (scored as failed, never silently as chance).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptx_utils.data.augment import Augmentation, augment, normalize
from ptx_utils.models import Backbone, create_head
from ptx_utils.finetuning.scheme import Scheme

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


def _is_bn(module: torch.nn.Module) -> bool:
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
            mods = [m for m in mods if _is_bn(m)]
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
                        if _is_bn(m):
                            m.train()


@dataclass(frozen=True)
class FinetuneResult:
    """Query logits (Q, n_way) (NaN when diverged) and whether the replica diverged."""

    logits: torch.Tensor
    diverged: bool


def finetune_sequential(
    backbone: Backbone,
    scheme: Scheme,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    cfg: FinetuneConfig = FinetuneConfig(),
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune a copy of ``backbone`` and a new head on one support set; score the queries.

    Args:
        backbone: the pre-trained backbone (left unchanged).
        scheme: per-layer learning rates.
        support_images: uint8 (N, C, H, W); support_labels: int64 (N,) in [0, n_way).
        query_images: uint8 (Q, C, H, W).
        seed: the replica's seed (head initialisation, batch order, augmentation).

    Returns:
        :class:`FinetuneResult` with float32 logits (Q, n_way).
    """
    device = next(backbone.parameters()).device
    model = copy.deepcopy(backbone)
    for p in model.parameters():
        p.requires_grad_(False)
    groups = trainable_groups(model, scheme)
    for g in groups:
        for p in g["params"]:  # type: ignore[union-attr]
            p.requires_grad_(True)
    plan = replica_plan(seed, len(support_images), n_way, model.out_dim, cfg)
    head = create_head(cfg.head, model.out_dim, n_way).to(device)
    with torch.no_grad():
        head.weight.copy_(plan.head_weight)
        if getattr(head, "bias", None) is not None:
            head.bias.copy_(plan.head_bias)
    optimizer = torch.optim.SGD(
        [*groups, {"params": list(head.parameters()), "lr": scheme.head_lr}],
        lr=scheme.head_lr,
        momentum=cfg.momentum,
        dampening=cfg.dampening,
        weight_decay=cfg.weight_decay,
    )
    set_bn_mode(model, scheme, cfg.bn_mode)
    aug = Augmentation()
    x_all = support_images.to(device)
    y_all = support_labels.to(device)
    for row in plan.batches:
        idx = row[row >= 0].to(device)
        x = augment(x_all[idx], aug, plan.generator) if cfg.augment else normalize(x_all[idx])
        loss = F.cross_entropy(head(model(x)), y_all[idx])
        if not torch.isfinite(loss):
            nan = torch.full((len(query_images), n_way), float("nan"), device=device)
            return FinetuneResult(nan, diverged=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = head(model(normalize(query_images.to(device)))).float()
    if not bool(torch.isfinite(logits).all()):
        return FinetuneResult(torch.full_like(logits, float("nan")), diverged=True)
    return FinetuneResult(logits, diverged=False)
