"""Parameter-free transforms of the features before the classifier (a strategy's option).

``"channel-importance"`` — Luo, Xu and Xu (ICML 2022): ``φ_k(x) = 1 / ln(1/x + 1)^k``, k = 1.3,
on the frozen features of support and query, before any L2 normalisation, computed exactly as
the authors' ``simple_transform`` (1e-5 inside the reciprocal, both signs: φ(0) = 0, odd). φ is
increasing; concave on (0, x*] and convex beyond (x* ≈ 0.344 at k = 1.3; concave everywhere at
k = 1). ``docs/strategies.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: The transforms :func:`apply_transform` knows (``"none"`` leaves the features unchanged).
TRANSFORMS = ("none", "channel-importance")
#: The paper's (and its code's) exponent.
CIT_K = 1.3
#: Added to the feature before its reciprocal, as the authors' code.
CIT_EPS = 1e-5


def channel_importance(x: torch.Tensor, k: float = CIT_K) -> torch.Tensor:
    """φ_k elementwise, as the authors' code: ``ψ(max(x, 0)) − ψ(max(−x, 0))``.

    Args:
        x: features of any shape (float).
        k: the exponent (> 0).

    Returns:
        a tensor of ``x``'s shape and dtype; 0 where ``x`` is 0.

    Example:
        >>> round(float(channel_importance(torch.tensor(1.0))), 4)  # 1 / ln(2)^1.3 - ψ(0)
        1.5687
    """
    if not k > 0:
        raise ValueError(f"channel importance exponent k must be > 0, got {k!r}")

    def psi(v: torch.Tensor) -> torch.Tensor:
        return 1.0 / torch.log(1.0 / (v + CIT_EPS) + 1.0).pow(k)

    return psi(x.clamp_min(0)) - psi((-x).clamp_min(0))


def check_transform(name: str, options: Mapping[str, Any]) -> None:
    """Refuse an unknown transform or option with a message naming what is accepted."""
    if name not in TRANSFORMS:
        raise ValueError(f"feature_transform must be one of {TRANSFORMS}, got {name!r}")
    allowed = {"none": set(), "channel-importance": {"k"}}[name]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"feature_transform {name!r} takes options {sorted(allowed) or 'none'}, got {unknown}"
        )
    if name == "channel-importance" and not float(options.get("k", CIT_K)) > 0:
        raise ValueError(f"channel importance exponent k must be > 0, got {options['k']!r}")


def apply_transform(x: torch.Tensor, name: str, options: Mapping[str, Any]) -> torch.Tensor:
    """``x`` (..., D) through the transform ``name`` with ``options`` (``"none"``: ``x`` itself).

    Example:
        >>> apply_transform(torch.zeros(2, 3), "channel-importance", {"k": 1.3}).abs().max()
        tensor(0.)
    """
    if name == "none":
        return x
    if name == "channel-importance":
        return channel_importance(x, float(options.get("k", CIT_K)))
    raise ValueError(f"feature_transform must be one of {TRANSFORMS}, got {name!r}")
