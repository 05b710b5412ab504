"""A new head initialised from the support prototypes, so fine-tuning starts at nearest centroid.

``"prototype-cosine"``: the cosine head's class weights = the support's class means (cosine
nearest centroid before any update); ``"prototype-linear"``: ``W_k = 2 c_k``, ``b_k = -‖c_k‖²``
(Proto-MAML, Triantafillou et al. 2020). Then the protocol's SGD. Both engines compute the
prototypes alike (initial backbone, eval mode, AdaBN's statistics, float32, the strategy's
transform). Rationale: ``docs/strategies.md``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ptx_utils.core.device import to_layout
from ptx_utils.data.augment import normalize
from ptx_utils.finetuning.bn_stats import load_statistics
from ptx_utils.finetuning.feature_transform import apply_transform
from ptx_utils.finetuning.protocol import ReplicaPlan
from ptx_utils.models.heads import PrototypeHead

#: Classifier -> the head it initialises (:data:`ptx_utils.finetuning.protocol.HEADS`).
PROTOTYPE_HEADS = {"prototype-cosine": "cosine", "prototype-linear": "linear"}


def prototype_weights(prototypes: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's initial (weight (n_way, D), bias (n_way,)) from the prototypes (n_way, D).

    Example:
        >>> w, b = prototype_weights(torch.tensor([[1.0, 2.0]]), "linear")
        >>> w.tolist(), b.tolist()
        ([[2.0, 4.0]], [-5.0])
    """
    if head == "cosine":  # the head normalises its weights: the prototypes' directions
        return prototypes.clone(), torch.zeros(len(prototypes), dtype=prototypes.dtype)
    if head == "linear":  # Proto-MAML: x·2c - ‖c‖² = -‖x - c‖² + ‖x‖²
        return 2 * prototypes, -(prototypes**2).sum(dim=1)
    raise ValueError(f"a prototype head is 'cosine' or 'linear', got {head!r}")


@torch.no_grad()
def support_prototypes(
    model: nn.Module,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    n_way: int,
    transform: tuple[str, dict] = ("none", {}),
    stats: dict[str, torch.Tensor] | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Prototypes (n_way, D) of one support set under the initial ``model``, float32.

    Args:
        model: the float32 backbone as the episode starts (left unchanged).
        support_images: uint8 (N, C, H, W); support_labels: (N,) in [0, n_way).
        transform: the strategy's ``(feature_transform, options)``.
        stats: AdaBN's statistics of the episode (:func:`~.bn_stats.episode_statistics`), or
            None for the model's own.
        precision: the memory layout (``"bf16"``: channels-last; arithmetic stays float32).
    """
    saved = None
    if stats is not None:
        saved = {k: v.clone() for k, v in model.state_dict().items() if k in stats}
        load_statistics(model, stats)
    mode = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = normalize(support_images.to(device))
        feats = apply_transform(model(to_layout(x, precision)).float(), *transform)
    finally:
        model.train(mode)
        if saved is not None:
            load_statistics(model, saved)
    return PrototypeHead.prototypes(feats, support_labels, n_way)


def with_prototypes(plan: ReplicaPlan, prototypes: torch.Tensor, head: str) -> ReplicaPlan:
    """``plan`` with its head initialisation replaced by the prototypes' (batches unchanged)."""
    weight, bias = prototype_weights(prototypes.float().cpu(), head)
    if weight.shape != plan.head_weight.shape:
        raise ValueError(
            f"prototypes give a head of shape {tuple(weight.shape)}, the plan expects "
            f"{tuple(plan.head_weight.shape)}"
        )
    return replace(plan, head_weight=weight, head_bias=bias)
