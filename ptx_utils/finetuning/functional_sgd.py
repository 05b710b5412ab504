"""``torch.optim.SGD`` written out functionally for stacked replicas, masked per replica.

``g = grad + wd * p``; first step ``buf = g``, later ``buf = momentum * buf + (1 - dampening) * g``;
``p = p - lr * buf``. A replica whose rate is 0 or that diverged keeps parameter and buffer as they
were (``torch.where``), so a NaN never reaches another replica.
"""

from __future__ import annotations

import torch

from ptx_utils.finetuning.protocol import FinetuneConfig


def sgd_step(
    tp: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    momentum_buf: dict[str, torch.Tensor],
    lr_of: dict[str, torch.Tensor],
    alive: torch.Tensor,
    step: int,
    cfg: FinetuneConfig,
) -> None:
    """One ``torch.optim.SGD`` step of every stacked tensor, in place of the dict entries.

    Replica ``r`` of tensor ``name`` moves only where it is alive and ``lr_of[name][r] > 0``;
    elsewhere parameter and momentum buffer stay exactly as they were (``torch.where``, so a
    NaN gradient of a diverged replica never reaches the others).
    """
    all_alive = bool(alive.all())
    for name, p in tp.items():
        lr = lr_of[name]
        masked = not (all_alive and bool((lr > 0).all()))
        on = view_as_replicas(alive & (lr > 0), p) if masked else None
        g = grads[name]
        if cfg.weight_decay != 0:
            g = g.add_(p, alpha=cfg.weight_decay)
        if cfg.momentum != 0:
            if step == 0:
                buf = g
                if on is not None:
                    momentum_buf[name] = torch.where(on, buf, torch.zeros_like(buf))
                else:
                    momentum_buf[name] = buf
            else:
                old = momentum_buf[name]
                buf = old.mul(cfg.momentum).add_(g, alpha=1 - cfg.dampening)
                momentum_buf[name] = buf if on is None else torch.where(on, buf, old)
            g = buf
        new = p.addcmul(view_as_replicas(lr, p), g, value=-1)
        tp[name] = new if on is None else torch.where(on, new, p)


def view_as_replicas(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 1, ..., 1) broadcasting against ``like`` (n, ...)."""
    return v.view(-1, *([1] * (like.ndim - 1)))
