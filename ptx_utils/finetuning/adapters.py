"""Task-specific adapters (TSA) and pre-classifier alignment (LT+NCC), both engines.

TSA (Li, Liu, Bilen, CVPR 2022), as ``VICO-UoE/URL``: α, a 1×1 convolution beside every 3×3
convolution (identity × 1e-4 at the start), and β, a D×D map of the features (identity), trained
by Adadelta (ρ 0.9, ε 1e-6) for 40 full-batch steps on the nearest-centroid loss (cosine × 10,
the support set against its own class means), lr α 0.5 and β 1 (URL's unseen-domain rates); the
backbone frozen in eval mode. LT+NCC (URL, ICCV 2021) is β alone. Float32 whatever the
precision. Settings and deviations: ``docs/strategies.md``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ptx_utils.data.augment import normalize
from ptx_utils.finetuning.closed_form import class_means
from ptx_utils.finetuning.strategy import Strategy
from ptx_utils.finetuning.vectorize import per_replica
from ptx_utils.models import Backbone

#: The attachments this module implements.
ATTACHMENT_KINDS = ("residual-adapter", "pre-classifier")
#: α's initial scale (identity × 1e-4) and the NCC logit scale, as URL's code.
ALPHA_INIT = 1e-4
NCC_SCALE = 10.0
#: Adadelta as ``torch.optim.Adadelta``'s defaults; TSA's number of steps.
ADADELTA_RHO = 0.9
ADADELTA_EPS = 1e-6
TSA_STEPS = 40
#: The name of α on each adapted convolution.
ALPHA = "tsa_alpha"


class _AdaptedConv2d(nn.Conv2d):
    """A 3×3 convolution with a residual 1×1 adapter: ``conv(x) + conv1x1(x, α; stride)``."""

    tsa_alpha: nn.Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + F.conv2d(x, self.tsa_alpha, stride=self.stride)


def attach_residual_adapters(backbone: Backbone, init: float = ALPHA_INIT) -> list[str]:
    """Give every 3×3 convolution of ``backbone``'s layers a residual adapter α, in place.

    Args:
        backbone: a backbone (a private copy: its convolutions change class).
        init: α starts as the identity (out × in) times ``init``.

    Returns:
        the qualified names of the α parameters (``"block1.conv.tsa_alpha"``, ...).

    Example:
        >>> from ptx_utils.models import create_backbone
        >>> bb = create_backbone("conv4", image_size=16)
        >>> attach_residual_adapters(bb)[:2]
        ['block1.conv.tsa_alpha', 'block2.conv.tsa_alpha']
    """
    convs = {
        id(m)
        for mods in backbone.layer_modules().values()
        for top in mods
        for m in top.modules()
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3) and m.groups == 1
    }
    names = []
    for name, m in backbone.named_modules():
        if id(m) in convs and not isinstance(m, _AdaptedConv2d):
            eye = torch.eye(
                m.out_channels, m.in_channels, device=m.weight.device, dtype=m.weight.dtype
            )
            m.__class__ = _AdaptedConv2d
            m.register_parameter(ALPHA, nn.Parameter(eye[:, :, None, None] * init))
            names.append(f"{name}.{ALPHA}")
    if not names:
        raise ValueError(
            f"backbone {type(backbone).__name__} has no 3x3 convolution to attach a residual "
            "adapter to; use the pre-classifier attachment alone (LT+NCC)"
        )
    return names


def ncc_logits(
    support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int
) -> torch.Tensor:
    """``10 · cos(query, class means of support)``: (N, D), (N,), (Q, D) -> (Q, n_way)."""
    protos = class_means(support.unsqueeze(0), labels.unsqueeze(0), n_way)[0]
    return NCC_SCALE * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).T


@dataclass(frozen=True)
class AdapterSpec:
    """What one attachment strategy trains: α's and β's rates (None: not attached), steps."""

    alpha_lr: float | None
    beta_lr: float | None
    steps: int
    init: float = ALPHA_INIT

    @classmethod
    def of(cls, strategy: Strategy) -> AdapterSpec:
        rates: dict[str, float] = {}
        init = ALPHA_INIT
        for a in strategy.attachments:
            rates[a.kind] = a.lr
            if a.kind == "residual-adapter":
                init = float(dict(a.options).get("init", ALPHA_INIT))
        steps = TSA_STEPS if strategy.steps is None else strategy.steps
        return cls(rates.get("residual-adapter"), rates.get("pre-classifier"), steps, init)

    @property
    def structure(self) -> tuple[bool, bool, float]:
        """What replicas batched together must share (which parameters exist, α's init)."""
        return (self.alpha_lr is not None, self.beta_lr is not None, self.init)


def adapt_sequential(
    model: Backbone,
    strategy: Strategy,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    record: Sequence[int] = (),
) -> tuple[torch.Tensor, bool]:
    """The reference: ``torch.optim.Adadelta`` on α and β of one episode.

    Args:
        model: a private, frozen, eval-mode float32 copy of the backbone (AdaBN statistics
            already loaded if the strategy asks for them); adapters are attached to it.
        support_images: uint8 (N, C, H, W); support_labels: int64 (N,); query_images: uint8.

        record: step counts after which to keep the query logits too.

    Returns:
        (query logits float32 (S, Q, n_way) after each ``record`` count then after the last
        step, NaN from a divergence on; diverged).
    """
    spec = AdapterSpec.of(strategy)
    device = next(model.parameters()).device
    groups: list[dict[str, Any]] = []
    if spec.alpha_lr is not None:
        attach_residual_adapters(model, spec.init)
        alphas = [p for n, p in model.named_parameters() if n.endswith(ALPHA)]
        for p in alphas:
            p.requires_grad_(True)
        groups.append({"params": alphas, "lr": spec.alpha_lr})
    dtype = next(model.parameters()).dtype
    beta = torch.eye(model.out_dim, device=device, dtype=dtype)
    beta.requires_grad_(spec.beta_lr is not None)
    if spec.beta_lr is not None:
        groups.append({"params": [beta], "lr": spec.beta_lr})
    model.eval()
    x_s = normalize(support_images.to(device))
    y = support_labels.to(device)
    optimizer = torch.optim.Adadelta(groups, rho=ADADELTA_RHO, eps=ADADELTA_EPS)
    frozen = None
    if spec.alpha_lr is None:  # LT+NCC: the features do not change
        with torch.no_grad():
            frozen = model(x_s)
    x_q = normalize(query_images.to(device))
    nan = torch.full((len(query_images), n_way), float("nan"), device=device)

    def query_logits() -> torch.Tensor:
        with torch.no_grad():
            out = ncc_logits(model(x_s) @ beta.T, y, model(x_q) @ beta.T, n_way)
        return out if bool(torch.isfinite(out).all()) else nan

    at = {p: j for j, p in enumerate(record)}
    recorded = [nan] * len(record)
    for step in range(spec.steps + 1):
        if step in at:
            recorded[at[step]] = query_logits()
        if step == spec.steps:
            break
        z = (model(x_s) if frozen is None else frozen) @ beta.T
        loss = F.cross_entropy(ncc_logits(z, y, z, n_way), y)
        if not torch.isfinite(loss):
            return torch.stack([*recorded, nan]), True
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    logits = query_logits()
    return torch.stack([*recorded, logits]), not bool(torch.isfinite(logits).all())


def adadelta_step(
    tp: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    state: dict[str, tuple[torch.Tensor, torch.Tensor]],
    lr_of: dict[str, torch.Tensor],
    alive: torch.Tensor,
) -> None:
    """``torch.optim.Adadelta`` for stacked replicas, in place of the dict entries.

    ``v = ρ v + (1 − ρ) g²``; ``δ = sqrt(u + ε) / sqrt(v + ε) · g``; ``u = ρ u + (1 − ρ) δ²``;
    ``p = p − lr δ``. A dead replica keeps its parameters and state.
    """
    for name, g in grads.items():
        shape = (-1,) + (1,) * (g.ndim - 1)
        v, u = state.get(name, (torch.zeros_like(g), torch.zeros_like(g)))
        v_new = v * ADADELTA_RHO + (1 - ADADELTA_RHO) * g * g
        delta = (u + ADADELTA_EPS).sqrt() / (v_new + ADADELTA_EPS).sqrt() * g
        u_new = u * ADADELTA_RHO + (1 - ADADELTA_RHO) * delta * delta
        keep = alive.view(shape)
        state[name] = (torch.where(keep, v_new, v), torch.where(keep, u_new, u))
        tp[name] = torch.where(keep, tp[name] - lr_of[name].view(shape) * delta, tp[name])


def adapt_batched(
    backbone: Backbone,
    strategies: Sequence[Strategy],
    episodes: Sequence[int],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    episode_stats: dict[int, dict[str, torch.Tensor]] | None = None,
    vectorize: str = "auto",
    record: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replicas of one structure (:attr:`AdapterSpec.structure`) trained together.

    Args:
        backbone: the float32 backbone (left unchanged).
        strategies, episodes: replica i is ``strategies[i]`` on episode ``episodes[i]``.
        support_images: uint8 (E, N, C, H, W), support_labels int64 (E, N), query_images uint8.
        episode_stats: AdaBN statistics per episode (backbone buffer names), or None.
        record: step counts after which to keep the query logits too (each <= the steps).

    Returns:
        (logits float32 (R, S, Q, n_way): after each ``record`` count, then after the last step,
        NaN rows where a replica had diverged; diverged bool (R,)).
    """
    specs = [AdapterSpec.of(s) for s in strategies]
    if len({s.structure for s in specs}) != 1 or len({s.steps for s in specs}) != 1:
        raise ValueError("adapt_batched needs replicas of one structure and step count")
    spec = specs[0]
    model = copy.deepcopy(backbone).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    alpha_names = attach_residual_adapters(model, spec.init) if spec.alpha_lr is not None else []
    device = next(model.parameters()).device
    n = len(strategies)
    params = dict(model.named_parameters())
    tp = {a: params[a].detach().expand(n, *params[a].shape).clone() for a in alpha_names}
    lr_of = {a: torch.tensor([s.alpha_lr for s in specs], device=device) for a in alpha_names}
    beta_lr = [s.beta_lr if s.beta_lr is not None else 0.0 for s in specs]
    dtype = next(model.parameters()).dtype
    tp["beta"] = torch.eye(model.out_dim, device=device, dtype=dtype).expand(n, -1, -1).clone()
    lr_of["beta"] = torch.tensor(beta_lr, device=device)
    train = [*alpha_names, *(["beta"] if spec.beta_lr is not None else [])]

    ep = torch.tensor(list(episodes), device=support_images.device)
    x_s = normalize(support_images[ep].flatten(0, 1)).unflatten(0, (n, -1)).to(device)
    x_q = normalize(query_images[ep].flatten(0, 1)).unflatten(0, (n, -1)).to(device)
    y = support_labels[ep].to(device)
    bufs: dict[str, torch.Tensor] = {}
    if episode_stats:
        for name in episode_stats[episodes[0]]:
            bufs[name] = torch.stack([episode_stats[e][name] for e in episodes]).to(device)

    def encode(tp: dict[str, torch.Tensor], bufs: dict[str, torch.Tensor], x: torch.Tensor):
        """One replica's backbone features (its α, its episode's statistics)."""
        return functional_call(model, {**{a: tp[a] for a in alpha_names}, **bufs}, (x,))

    precomputed = not alpha_names
    if precomputed:  # LT+NCC: the features once per replica, then only β trains
        with torch.no_grad():
            if bufs:
                x_s = vmap(lambda b, x: encode({}, b, x))(bufs, x_s)
                x_q = vmap(lambda b, x: encode({}, b, x))(bufs, x_q)
            else:
                x_s = model(x_s.flatten(0, 1)).unflatten(0, (n, -1))
                x_q = model(x_q.flatten(0, 1)).unflatten(0, (n, -1))
        bufs = {}

    def features(tp: dict[str, torch.Tensor], bufs: dict[str, torch.Tensor], x: torch.Tensor):
        """Features after β: (M, D)."""
        return (x if precomputed else encode(tp, bufs, x)) @ tp["beta"].T

    def loss_fn(
        trained: dict[str, torch.Tensor],
        rest: dict[str, torch.Tensor],
        bufs: dict[str, torch.Tensor],
        x: torch.Tensor,
        yy: torch.Tensor,
    ) -> torch.Tensor:
        z = features({**trained, **rest}, bufs, x)
        return F.cross_entropy(ncc_logits(z, yy, z, n_way), yy)

    single = grad_and_value(loss_fn)
    # On a CPU a chunk adapting α runs as a loop: TSA at 32×32, 5-shot, 20 replicas took 67 s
    # under vmap and 42 s looped (the vmapped convolutions' backward dominates). Channels-first:
    # Adadelta amplifies a channels-last layout's rounding (1.7e-3 from the reference, 40 steps).
    loop = vectorize == "loop" or (
        vectorize == "auto" and device.type == "cpu" and bool(alpha_names)
    )
    step_fn = per_replica(single) if loop else vmap(single)
    if record and max(record) > spec.steps:
        raise ValueError(
            f"record point {max(record)} is beyond the {spec.steps} steps of {strategies[0]}; "
            "give the strategy more steps or record fewer"
        )

    def predict(tp, bufs, xs, yy, xq):
        return ncc_logits(features(tp, bufs, xs), yy, features(tp, bufs, xq), n_way)

    run = per_replica(predict) if loop else vmap(predict)

    def query_logits() -> torch.Tensor:
        with torch.no_grad():
            out = run(tp, bufs, x_s, y, x_q).float()
        keep = alive & torch.isfinite(out).flatten(1).all(1)
        return torch.where(keep[:, None, None], out, torch.full_like(out, float("nan")))

    alive = torch.ones(n, dtype=torch.bool, device=device)
    state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    at = {p: j for j, p in enumerate(record)}
    recorded: list[torch.Tensor | None] = [None] * len(record)
    for step in range(spec.steps + 1):
        if step in at:
            recorded[at[step]] = query_logits()
        if step == spec.steps:
            break
        trained = {k: tp[k] for k in train}
        rest = {k: v for k, v in tp.items() if k not in trained}
        grads, loss = step_fn(trained, rest, bufs, x_s, y)
        alive = alive & torch.isfinite(loss)
        adadelta_step(tp, grads, state, lr_of, alive)
    logits = query_logits()
    diverged = ~torch.isfinite(logits).flatten(1).all(1)
    return torch.stack([*recorded, logits], 1), diverged
