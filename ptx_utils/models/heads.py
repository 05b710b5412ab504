"""Classifier heads on top of backbone features (B, D): linear, cosine, prototype.

- :class:`LinearHead` — Baseline (CloserLook): an affine map, bias initialised to 0.
- :class:`CosineHead` — Baseline++ (CloserLook ``distLinear``): ``scale * cos(x, w_c)``.
- :class:`PrototypeHead` — parameter-free nearest centroid (ProtoNet): class means of the
  support features, logits = negative squared Euclidean distance (or cosine similarity).

All heads are plain functions of their parameters and inputs (no hooks), so they work with
:func:`torch.func.functional_call`, on any device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

#: ``create_head`` kinds.
HEAD_KINDS = ("linear", "cosine", "prototype")
#: ``PrototypeHead`` metrics.
METRICS = ("euclidean", "cosine")
#: Added to norms before dividing (CloserLook's 1e-5), so zero vectors give zero logits.
NORM_EPS = 1e-5


def _check_features(x: torch.Tensor, in_dim: int | None, what: str) -> None:
    if x.ndim != 2 or (in_dim is not None and x.shape[1] != in_dim):
        want = f"(B, {in_dim})" if in_dim is not None else "(B, D)"
        raise ValueError(
            f"{what} expects features {want}, got shape {tuple(x.shape)}; flatten the "
            "backbone output or build the head with in_dim=backbone.out_dim"
        )


def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (N, D) divided by (their L2 norm + 1e-5)."""
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + NORM_EPS)


class LinearHead(nn.Linear):
    """Baseline head: features (B, in_dim) -> logits (B, n_classes) = x W^T + b.

    Weight as :class:`torch.nn.Linear`; bias initialised to 0 (as CloserLook).
    """

    def __init__(self, in_dim: int, n_classes: int) -> None:
        _check_sizes(in_dim, n_classes)
        super().__init__(in_dim, n_classes)
        self.in_dim = in_dim
        self.n_classes = n_classes

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_features(x, self.in_features, "LinearHead")
        return super().forward(x)


class CosineHead(nn.Module):
    """Baseline++ head: features (B, in_dim) -> logits (B, n_classes) = scale * cos(x, w_c).

    Features and class weights are L2-normalised in :meth:`forward` (rows divided by norm +
    1e-5), so the logits lie in [-scale, scale] and do not change when a feature is scaled.
    CloserLook's ``distLinear`` by default wraps the weights in ``weight_norm`` with a learnable
    per-class gain; here the gain is fixed at 1 (a pure cosine classifier, no hooks).

    Args:
        in_dim: feature size D.
        n_classes: number of classes.
        scale: logit scale; default 2 when ``n_classes <= 200``, else 10 (CloserLook).

    Attributes:
        weight: (n_classes, in_dim) class weights, initialised as :class:`torch.nn.Linear`.
    """

    def __init__(self, in_dim: int, n_classes: int, scale: float | None = None) -> None:
        super().__init__()
        _check_sizes(in_dim, n_classes)
        if scale is None:
            scale = 2.0 if n_classes <= 200 else 10.0
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(n_classes, in_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, in_dim) -> logits (B, n_classes) in [-scale, scale]."""
        _check_features(x, self.in_dim, "CosineHead")
        return self.scale * (_l2_normalise(x) @ _l2_normalise(self.weight).T)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, n_classes={self.n_classes}, scale={self.scale}"


class PrototypeHead(nn.Module):
    """Nearest-centroid (ProtoNet) head, no parameters.

    ``logits = head(query, PrototypeHead.prototypes(support, labels, n_way))``.

    Args:
        metric: ``"euclidean"``: logits = -||q - p_c||^2; ``"cosine"``: logits = cos(q, p_c).
        scale: multiplies the logits (a softmax temperature; 1 = plain ProtoNet).
    """

    def __init__(self, metric: str = "euclidean", scale: float = 1.0) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.metric = metric
        self.scale = float(scale)

    @staticmethod
    def prototypes(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
        """Class means of the support features.

        Args:
            features: float (N, D) support features.
            labels: int (N,) values in [0, n_classes); every class needs at least one row.
            n_classes: number of classes C.

        Returns:
            float (C, D): row c is the mean of the features labelled c.
        """
        _check_features(features, None, "PrototypeHead.prototypes")
        if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"labels must be (N,) with N = {features.shape[0]} (one per feature row), got "
                f"shape {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        if not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
        labels = labels.to(device=features.device, dtype=torch.long)
        bad = labels.numel() == 0 or bool(labels.min() < 0) or bool(labels.max() >= n_classes)
        counts = torch.bincount(labels, minlength=n_classes) if not bad else labels
        if bad or bool((counts == 0).any()):
            raise ValueError(
                f"labels must cover every class 0..{n_classes - 1} and nothing else (each class "
                "needs at least one support example); check n_classes and the support labels"
            )
        sums = features.new_zeros(n_classes, features.shape[1]).index_add(0, labels, features)
        return sums / counts.unsqueeze(1).to(features.dtype)

    def forward(self, query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Query features (B, D) and prototypes (C, D) -> logits (B, C)."""
        _check_features(query, None, "PrototypeHead")
        if prototypes.ndim != 2 or prototypes.shape[1] != query.shape[1]:
            raise ValueError(
                f"prototypes must be (C, {query.shape[1]}) to match the query features, got "
                f"shape {tuple(prototypes.shape)}; build them with PrototypeHead.prototypes"
            )
        return self.scale * prototype_logits(query, prototypes, self.metric)

    def extra_repr(self) -> str:
        return f"metric={self.metric!r}, scale={self.scale}"


def prototype_logits(
    query: torch.Tensor, prototypes: torch.Tensor, metric: str = "euclidean"
) -> torch.Tensor:
    """Nearest-centroid logits, the one implementation the kit has (heads, features, ProtoNet).

    Args:
        query: (..., Q, D) query features; prototypes: (..., C, D) class centroids (same batch).
        metric: ``"euclidean"`` (negative squared distance) or ``"cosine"`` (cosine similarity).

    Returns:
        (..., Q, C) logits.
    """
    if metric == "euclidean":
        return -torch.cdist(query, prototypes).pow(2)
    if metric == "cosine":
        q = torch.nn.functional.normalize(query, dim=-1)
        c = torch.nn.functional.normalize(prototypes, dim=-1)
        return q @ c.transpose(-1, -2)
    raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")


def create_head(kind: str, in_dim: int, n_classes: int, **kwargs: Any) -> nn.Module:
    """Build a head by kind.

    Args:
        kind: ``"linear"``, ``"cosine"`` or ``"prototype"``.
        in_dim: feature size D (``backbone.out_dim``).
        n_classes: number of classes; unused by ``"prototype"`` (its classes are the
            prototypes passed to ``forward``).
        **kwargs: head options (``scale`` for cosine; ``metric``, ``scale`` for prototype).
    """
    if kind == "linear":
        return LinearHead(in_dim, n_classes, **kwargs)
    if kind == "cosine":
        return CosineHead(in_dim, n_classes, **kwargs)
    if kind == "prototype":
        return PrototypeHead(**kwargs)
    raise ValueError(f"unknown head kind {kind!r}; choose one of: {', '.join(HEAD_KINDS)}")


def _check_sizes(in_dim: int, n_classes: int) -> None:
    for what, value in (("in_dim", in_dim), ("n_classes", n_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
