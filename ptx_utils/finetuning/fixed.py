"""The fixed strategies every comparison includes, built for a backbone's number of layers.

Linear probe (every layer frozen), full fine-tuning (one rate everywhere), last-k (only the last
k layers train) and BN-affine (only batch-norm scales and shifts train). Each returns a
:class:`~ptx_utils.finetuning.strategy.Strategy` whose name labels it in tables and figures.
"""

from __future__ import annotations

from ptx_utils.finetuning.scheme import DEFAULT_HEAD_LR, Scheme
from ptx_utils.finetuning.strategy import Strategy


def linear_probe(n_layers: int, head_lr: float = DEFAULT_HEAD_LR) -> Strategy:
    """Every backbone layer frozen; only the new head trains.

    Example:
        >>> str(linear_probe(4))
        '0 0 0 0 | head 0.01'
    """
    return Strategy(Scheme((0.0,) * n_layers, head_lr, name="linear probe"))


def full_finetune(n_layers: int, lr: float = 0.01, head_lr: float = DEFAULT_HEAD_LR) -> Strategy:
    """Every layer trains with the same rate."""
    return Strategy(Scheme((lr,) * n_layers, head_lr, name=f"full fine-tune {lr:g}"))


def last_k(n_layers: int, k: int, lr: float = 0.01, head_lr: float = DEFAULT_HEAD_LR) -> Strategy:
    """Only the last ``k`` layers train (the manual partial transfer of earlier work)."""
    if not 0 <= k <= n_layers:
        raise ValueError(f"k must lie in [0, {n_layers}], got {k}")
    lrs = (0.0,) * (n_layers - k) + (lr,) * k
    return Strategy(Scheme(lrs, head_lr, name=f"last-{k} {lr:g}"))


def bn_affine(n_layers: int, lr: float = 0.01, head_lr: float = DEFAULT_HEAD_LR) -> Strategy:
    """Only batch-norm weights and biases train, in every layer."""
    return Strategy(Scheme((lr,) * n_layers, head_lr, params="bn", name=f"BN-affine {lr:g}"))
