"""Batch norm under ``vmap``: per-replica batch statistics and running statistics.

In ``bn_mode="train"`` the engine's private copy of the backbone gets batch-norm modules whose
forward returns the new running statistics (collected by name) instead of writing them in place,
which ``vmap`` / ``grad`` cannot do. A per-replica flag chooses batch or running statistics.
Under bf16 autocast every batch norm is one of these: statistics stay float32, activations bf16.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class _ReplicaBatchNorm:
    """Mixin for the engine's batch-norm modules (``bn_mode="train"``).

    ``_ptx_flag`` (set per call) is False (eval: running statistics), True (batch statistics)
    or a per-replica 0-d bool tensor (either, per replica). In batch mode the new running
    statistics are not written in place (impossible under ``vmap`` / ``grad``) but stored in
    ``_ptx_collect`` under the buffers' qualified names, to be returned by the step function.
    """

    _ptx_flag: Any = False
    _ptx_collect: dict[str, torch.Tensor] | None = None
    _ptx_key: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: Any = self
        flag = bn._ptx_flag

        mixed = x.dtype != bn.running_mean.dtype  # bf16 activations, float32 statistics
        shape = (1, -1) + (1,) * (x.ndim - 2)

        def affine(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
            """Normalise bf16 ``x`` with coefficients computed in float32."""
            scale = bn.weight * torch.rsqrt(var + bn.eps)
            shift = bn.bias - mean * scale
            return x * scale.to(x.dtype).view(shape) + shift.to(x.dtype).view(shape)

        def eval_out() -> torch.Tensor:
            if mixed:
                return affine(bn.running_mean, bn.running_var)
            return F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )

        if flag is False:
            return eval_out()
        dims = [0, *range(2, x.ndim)]
        if mixed:
            biased, batch_mean = torch.var_mean(x.float(), dims, correction=0)
            out = affine(batch_mean, biased)
            count = x.numel() // x.shape[1]
            mean, var = batch_mean.detach(), biased.detach() * (count / max(count - 1, 1))
        else:
            out = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
            xd = x.detach()
            mean = xd.mean(dims)
            var = xd.var(dims, correction=1)
        tracked = bn.num_batches_tracked + 1
        factor: Any = bn.momentum if bn.momentum is not None else 1.0 / tracked.double()
        new_mean = bn.running_mean * (1 - factor) + mean * factor
        new_var = bn.running_var * (1 - factor) + var * factor
        new_mean, new_var = new_mean.to(bn.running_mean.dtype), new_var.to(bn.running_var.dtype)
        if flag is not True:
            out = torch.where(flag, out, eval_out())
            new_mean = torch.where(flag, new_mean, bn.running_mean)
            new_var = torch.where(flag, new_var, bn.running_var)
            tracked = torch.where(flag, tracked, bn.num_batches_tracked)
        if bn._ptx_collect is not None:
            bn._ptx_collect[bn._ptx_key + "running_mean"] = new_mean
            bn._ptx_collect[bn._ptx_key + "running_var"] = new_var
            bn._ptx_collect[bn._ptx_key + "num_batches_tracked"] = tracked
        return out


_BN_CLASSES: dict[type, type] = {}


def make_replica_bn(module: nn.Module, key: str) -> None:
    """Turn ``module`` (a batch norm) into a replica batch norm keyed by its qualified name."""
    cls = type(module)
    if cls not in _BN_CLASSES:
        _BN_CLASSES[cls] = type(f"Replica{cls.__name__}", (_ReplicaBatchNorm, cls), {})
    module.__class__ = _BN_CLASSES[cls]
    module._ptx_key = key  # type: ignore[assignment]


def set_bn_state(
    runner: nn.Module,
    bn_layer: dict[str, str],
    flags: dict[str, Any],
    collect: dict[str, torch.Tensor] | None,
) -> None:
    """Set every replica batch norm's flag (``flags[name]``, default False) and collector."""
    for name in bn_layer:
        m: Any = runner.get_submodule(name)
        m._ptx_flag = flags.get(name, False)
        m._ptx_collect = collect
