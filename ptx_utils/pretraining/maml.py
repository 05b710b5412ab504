"""MAML (Finn et al., ICML 2017): the inner loop over many tasks at once, and the meta-gradient.

A task's inner loop is one function of (parameters, support set): ``torch.func.vmap`` runs a
meta-batch of tasks in one call (:func:`meta_gradients`); :func:`meta_gradients_loop` runs them
one after another with ``torch.autograd`` (the reference they are tested against). Batch norm
normalises every forward by its own batch (CloserLook's MAML keeps no running statistics).
First-order by default (the inner gradients are constants); ``second_order=True``
differentiates through them. ``docs/pretraining.md#maml``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

Params = dict[str, torch.Tensor]


class MamlNet(nn.Module):
    """Backbone + head whose batch norms always use the batch's statistics (none are kept).

    Its parameter names (``backbone.*``, ``head.*``) are those of :func:`maml_params`; call it
    through ``functional_call`` with a parameter dict. Example:
        >>> from ptx_utils.models import create_backbone, create_head
        >>> bb = create_backbone("conv4", image_size=16)
        >>> net = MamlNet(bb, create_head("linear", bb.out_dim, 5))
        >>> params = maml_params(bb, net.head)
        >>> functional_call(net, params, (torch.randn(4, 3, 16, 16),)).shape
        torch.Size([4, 5])
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = copy.deepcopy(backbone), copy.deepcopy(head)
        for m in self.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).float())


def maml_params(backbone: nn.Module, head: nn.Module) -> Params:
    """The meta-parameters, named as in :class:`MamlNet` (the modules' own tensors)."""
    out = {f"backbone.{n}": p for n, p in backbone.named_parameters()}
    return out | {f"head.{n}": p for n, p in head.named_parameters()}


def adapt(
    net: MamlNet,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    second_order: bool = False,
) -> Params:
    """``steps`` full-batch SGD steps (no momentum) on the support set (x (M, C, H, W), y (M,))."""

    def loss(p: Params) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, p, (x,)), y)

    for _ in range(steps):
        g = grad(loss)(params)
        if not second_order:
            g = {k: v.detach() for k, v in g.items()}
        params = {k: params[k] - lr * g[k] for k in params}
    return params


class Tasks(NamedTuple):
    """A meta-batch of T tasks as tensors (normalised images, class-major labels).

    Attributes:
        xs: (T, M, C, H, W) support images; ys: (T, M) their labels.
        xq: (T, Q, C, H, W) query images; yq: (T, Q) their labels.
    """

    xs: torch.Tensor
    ys: torch.Tensor
    xq: torch.Tensor
    yq: torch.Tensor


@dataclass(frozen=True)
class InnerLoop:
    """``steps`` SGD steps at ``lr`` per task; ``second_order``: differentiate through them."""

    steps: int
    lr: float
    second_order: bool = False


def _task_loss(
    net: MamlNet, params: Params, task: Tasks, inner: InnerLoop
) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's query loss after adapting, and its query accuracy (aux)."""
    fast = adapt(net, params, task.xs, task.ys, inner.steps, inner.lr, inner.second_order)
    logits = functional_call(net, fast, (task.xq,))
    return F.cross_entropy(logits, task.yq), (logits.argmax(1) == task.yq).float().mean()


def meta_gradients(
    net: MamlNet, params: Params, tasks: Tasks, inner: InnerLoop
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """The meta-gradient of a meta-batch of T tasks, every task at once (``vmap``).

    Returns:
        the gradient of the tasks' mean query loss w.r.t. each of ``params``; the per-task
        query losses (T,) and accuracies (T,) after adapting.
    """
    detached = {k: v.detach() for k, v in params.items()}

    def one(p: Params, task: Tasks) -> tuple[Params, tuple[torch.Tensor, torch.Tensor]]:
        return grad_and_value(_task_loss, argnums=1, has_aux=True)(net, p, task, inner)

    grads, (losses, accs) = vmap(one, in_dims=(None, 0))(detached, tasks)
    return {k: g.mean(0) for k, g in grads.items()}, losses.detach(), accs


def meta_gradients_loop(
    net: MamlNet, params: Params, tasks: Tasks, inner: InnerLoop
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """:func:`meta_gradients` one task after another with ``torch.autograd`` (the reference)."""
    names = list(params)
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    losses, accs = [], []
    for xs, ys, xq, yq in zip(*tasks, strict=True):
        leaf = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        fast = leaf
        for _ in range(inner.steps):
            loss = F.cross_entropy(functional_call(net, fast, (xs,)), ys)
            g = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=inner.second_order)
            fast = {k: fast[k] - inner.lr * gk for k, gk in zip(names, g, strict=True)}
        logits = functional_call(net, fast, (xq,))
        loss = F.cross_entropy(logits, yq)
        for k, gk in zip(names, torch.autograd.grad(loss, [leaf[k] for k in names]), strict=True):
            total[k] += gk / len(tasks.xs)
        losses.append(loss.detach())
        accs.append((logits.argmax(1) == yq).float().mean())
    return total, torch.stack(losses), torch.stack(accs)


def adapted_logits(
    net: MamlNet,
    params: Params,
    tasks: Tasks,
    at_steps: Sequence[int],
    lr: float,
    vectorize: bool = True,
) -> torch.Tensor:
    """Query logits of T tasks after each of ``at_steps`` inner steps, from one run per task.

    Returns float32 (T, len(at_steps), Q, n_way). The inner loop runs to ``max(at_steps)``
    once and the queries are scored whenever a count of ``at_steps`` is passed, so the 100-step
    and the 5-step logits come from the same trajectory. ``vectorize``: the tasks under
    ``vmap`` (faster on a GPU), or one after another (on a CPU).
    """
    counts = sorted(set(int(s) for s in at_steps))
    if not counts or counts[0] < 0:
        raise ValueError(f"at_steps must be counts >= 0, got {list(at_steps)}")
    detached = {k: v.detach() for k, v in params.items()}

    def one(p: Params, task: Tasks) -> torch.Tensor:
        out, done = [], 0
        for n in counts:
            p = adapt(net, p, task.xs, task.ys, n - done, lr)
            done = n
            out.append(functional_call(net, p, (task.xq,)))
        return torch.stack(out)

    if vectorize:
        logits = vmap(one, in_dims=(None, 0))(detached, tasks)
    else:
        logits = torch.stack([one(detached, Tasks(*t)) for t in zip(*tasks, strict=True)])
    order = [counts.index(int(s)) for s in at_steps]
    return logits.detach()[:, order]


def adapt_loop(
    net: MamlNet, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> Params:
    """:func:`adapt` (first-order) with ``torch.autograd`` on one task: the reference."""
    fast = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(net, fast, (x,)), y)
        grads = torch.autograd.grad(loss, list(fast.values()))
        with torch.no_grad():
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads, strict=True)}
        fast = {k: v.requires_grad_(True) for k, v in fast.items()}
    return {k: v.detach() for k, v in fast.items()}


@torch.no_grad()
def estimate_running_stats(backbone: nn.Module, x: torch.Tensor) -> None:
    """Set every batch norm's running statistics to those of the batch ``x`` (in place).

    MAML trains without them; the kit's eval-mode strategies (nearest centroid, the
    fine-tuning protocol) read them, so a meta-trained checkpoint gets them from base images.
    """
    was_training = backbone.training
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, that batch's statistics
    backbone.train()
    backbone(x)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    backbone.train(was_training)
