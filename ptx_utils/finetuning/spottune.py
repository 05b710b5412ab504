"""SpotTune (Guo et al., CVPR 2019) on a few-shot episode: per-image routing between each frozen
block and a fine-tuned copy of it; the model, the gates and the sequential reference.

Every forward stage exists twice: the pre-trained block, frozen, and a copy that trains. A policy
gives two logits per block and image, a hard straight-through Gumbel-softmax at temperature 5 (the
released code) decides d, the block's output is ``frozen(x)·(1 − d) + tuned(x)·d``. Policy
``global_k=None``: a linear map of the frozen first block's pooled output; ``global_k=k``: one
logit pair per block for every image, pulled to k tuned blocks. ``docs/strategies.md``.
"""

from __future__ import annotations

import copy
import functools
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ptx_utils.data.augment import Augmentation, augment, normalize
from ptx_utils.finetuning.protocol import (
    FinetuneConfig,
    ReplicaPlan,
    check_record_within,
    replica_plan,
)
from ptx_utils.finetuning.strategy import Strategy
from ptx_utils.models import Backbone, create_head
from ptx_utils.models.checkpoint import read_reference, state_digest

#: The released code's Gumbel-softmax temperature, and its noise guard.
TAU = 5.0
GUMBEL_EPS = 1e-20
#: Defaults of the attachment's options (``docs/strategies.md`` says why).
POLICY_LR = 0.1
PENALTY = 1.0
INFERENCE = ("sample", "argmax")
_OPTIONS = {"global_k", "policy_lr", "tau", "penalty", "inference", "force"}


@dataclass(frozen=True)
class SpotTuneSpec:
    """One SpotTune strategy's settings, from its ``"spottune"`` attachment.

    Attributes:
        lr: the tuned copies' rate; policy_lr: the policy's (or gates') rate.
        global_k: None (a policy per image) or k (input-independent gates, k-penalty).
        tau: Gumbel-softmax temperature; penalty: weight of the global variant's penalty.
        inference: ``"sample"`` (decisions drawn at test, as the paper) or ``"argmax"``.
        force: None, or 0 / 1 — every decision fixed (a check: linear probe / all trainable).
        policy: a meta-trained policy's ``"path#sha256"`` (the strategy's ``loads``), or None.
    """

    lr: float
    policy_lr: float = POLICY_LR
    global_k: int | None = None
    tau: float = TAU
    penalty: float = PENALTY
    inference: str = "sample"
    force: int | None = None
    policy: str | None = None

    @classmethod
    def of(cls, strategy: Strategy) -> SpotTuneSpec:
        """The spec of ``strategy``'s spottune attachment; refuses unknown or bad options."""
        (att,) = [a for a in strategy.attachments if a.kind == "spottune"]
        options = dict(att.options)
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown spottune option(s) {', '.join(unknown)}; known: {sorted(_OPTIONS)}"
            )
        if len(strategy.loads) > 1:
            raise ValueError(f"spottune loads one meta-trained policy, got {len(strategy.loads)}")
        policy = strategy.loads[0] if strategy.loads else None
        spec = cls(att.lr, **{k: v for k, v in options.items()}, policy=policy)
        if policy is not None and (spec.global_k is not None or spec.force is not None):
            raise ValueError(
                "a meta-trained policy routes per image; drop global_k and force to load one"
            )
        if spec.inference not in INFERENCE:
            raise ValueError(
                f"spottune inference must be one of {INFERENCE}, got {spec.inference!r}"
            )
        if spec.force not in (None, 0, 1):
            raise ValueError(f"spottune force must be None, 0 or 1, got {spec.force!r}")
        if spec.global_k is not None and (
            isinstance(spec.global_k, bool) or not isinstance(spec.global_k, int)
            or spec.global_k < 0
        ):  # fmt: skip
            raise ValueError(
                f"spottune global_k must be None or an int >= 0, got {spec.global_k!r}"
            )
        if not spec.tau > 0 or spec.policy_lr < 0 or spec.penalty < 0:
            raise ValueError(f"spottune needs tau > 0, policy_lr >= 0, penalty >= 0; got {spec}")
        return spec

    @property
    def structure(self) -> tuple[Any, ...]:
        """What replicas batched together must share: the parameters that exist, how they mix,
        the policy they start from."""
        return (self.global_k, self.tau, self.penalty, self.force, self.policy)

    @property
    def training(self) -> tuple[Any, ...]:
        """What training depends on (replicas that differ only in ``inference`` train alike)."""
        return (
            self.lr, self.policy_lr, self.global_k, self.tau, self.penalty, self.force, self.policy
        )  # fmt: skip


def gumbel_noise(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """``-log(-log(u))``, u uniform from ``generator`` (float32, CPU), as the released code."""
    u = torch.rand(tuple(shape), generator=generator)
    return -torch.log(-torch.log(u + GUMBEL_EPS) + GUMBEL_EPS)


def inference_generator(seed: int) -> torch.Generator:
    """The generator of a replica's test-time decisions, apart from its training draws."""
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    )


def straight_through(logits: torch.Tensor, noise: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Decisions (..., 2) -> (...): 1 = the tuned copy. Forward: the hard one-hot of
    ``logits + noise`` (argmax of ``logits`` without noise); backward: the gradient of
    ``softmax((logits + noise) / tau)`` (straight-through, as the released code)."""
    z = logits if noise is None else logits + noise
    soft = F.softmax(z / tau, dim=-1)
    hard = (z.argmax(-1, keepdim=True) == torch.arange(2, device=z.device)).to(soft.dtype)
    return ((hard - soft).detach() + soft)[..., 1]


class SpotTuneNet(nn.Module):
    """The frozen backbone, its tuned copy, the policy and the head.

    ``forward(x, noise)``: x normalised (B, C, H, W), noise (B, L, 2) or None (argmax) ->
    logits (B, n_way), decisions (B, L) (1 = routed through the tuned copy).
    Parameters: ``tuned.*``, ``head.*``, ``policy.*`` (per image) or ``gates`` (global, (L, 2)).
    """

    def __init__(self, backbone: Backbone, head: nn.Module, spec: SpotTuneSpec) -> None:
        super().__init__()
        self.frozen = backbone
        self.tuned = copy.deepcopy(backbone)
        self.head = head
        self.spec = spec
        split = backbone.forward_stages()
        self.stages, self.tail = split.stages, split.tail
        if len(self.stages) < 2 and spec.global_k is None:
            raise ValueError(
                f"{backbone.name} runs as one stage, so SpotTune has one block to route and the "
                "per-image policy (on the first block's output) nothing to read; use a backbone "
                "with stages (conv4/conv6/resnet12) or global_k"
            )
        n_blocks = len(self.stages)
        if spec.global_k is None:
            with torch.no_grad():
                probe = torch.zeros(
                    1, backbone.in_channels, backbone.image_size, backbone.image_size
                )
                width = _pooled(self.stages[0].run(backbone, probe.to(_device(backbone)))).shape[1]
            self.policy = nn.Linear(width, 2 * n_blocks)
            nn.init.zeros_(self.policy.weight)
            nn.init.zeros_(self.policy.bias)
        else:
            self.gates = nn.Parameter(torch.zeros(n_blocks, 2))
        self.n_blocks = n_blocks

    def policy_logits(self, first: torch.Tensor) -> torch.Tensor:
        """(B, L, 2) from the frozen first block's output (B, ...)."""
        if self.spec.global_k is not None:
            return self.gates.expand(len(first), -1, -1)
        return self.policy(_pooled(first)).unflatten(1, (self.n_blocks, 2))

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        decisions = []
        for i, stage in enumerate(self.stages):
            frozen = stage.run(self.frozen, x)
            if i == 0:
                if self.spec.force is not None:
                    d_all = torch.full(
                        (len(x), self.n_blocks), float(self.spec.force), device=x.device
                    )
                else:
                    d_all = straight_through(self.policy_logits(frozen), noise, self.spec.tau)
            d = d_all[:, i].reshape(-1, *([1] * (frozen.ndim - 1)))
            x = frozen * (1 - d) + stage.run(self.tuned, x) * d
            decisions.append(d_all[:, i])
        logits = self.head(self.tail(self.frozen, x).float())
        return logits, torch.stack(decisions, 1)

    def penalty(self) -> torch.Tensor:
        """:func:`gate_penalty` of this net's gates (0 for the per-image policy)."""
        return gate_penalty(getattr(self, "gates", None), self.spec)


def gate_penalty(gates: torch.Tensor | None, spec: SpotTuneSpec) -> torch.Tensor:
    """Global variant: ``λ [(Σ_l p_l − k)² + Σ_l p_l (1 − p_l)]``, p_l = softmax(gates_l)[1] the
    probability that block l is tuned: the count pulled to k, each p_l pushed to 0 or 1."""
    if gates is None or spec.global_k is None or spec.force is not None:
        return torch.zeros(())
    p = F.softmax(gates, -1)[:, 1]
    return spec.penalty * ((p.sum() - spec.global_k) ** 2 + (p * (1 - p)).sum())


def _pooled(x: torch.Tensor) -> torch.Tensor:
    return x.mean((2, 3)) if x.ndim == 4 else x


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def policy_parameters(net: SpotTuneNet) -> int:
    """How many parameters the policy (or the global gates) has."""
    module = net.policy if net.spec.global_k is None else None
    return sum(p.numel() for p in module.parameters()) if module is not None else net.gates.numel()


def build_net(
    backbone: Backbone, spec: SpotTuneSpec, n_way: int, cfg: FinetuneConfig
) -> SpotTuneNet:
    """A private float32 :class:`SpotTuneNet` in eval mode, nothing requiring grad yet."""
    if cfg.bn_mode != "eval":
        raise ValueError(
            "SpotTune runs both paths with eval-mode batch norm (running statistics fixed); "
            f"use FinetuneConfig(bn_mode='eval'), got {cfg.bn_mode!r}"
        )
    frozen = copy.deepcopy(backbone).float().to(memory_format=torch.contiguous_format).eval()
    head = create_head(cfg.head, frozen.out_dim, n_way).to(_device(frozen))
    net = SpotTuneNet(frozen, head, spec).to(_device(frozen)).eval()
    if spec.global_k is not None and spec.global_k > net.n_blocks:
        raise ValueError(
            f"global_k={spec.global_k} but {backbone.name} has {net.n_blocks} blocks to route"
        )
    if spec.policy is not None:
        state, trained_on = load_policy(spec.policy)
        here = state_digest(backbone)
        if trained_on is not None and trained_on != here:
            raise ValueError(
                f"the policy {spec.policy.rsplit('#', 1)[0]} was meta-trained on another "
                f"backbone (weights digest {trained_on[:12]}…, this one {here[:12]}…); "
                "meta-train one for this backbone"
            )
        try:
            net.policy.load_state_dict({k: v.to(_device(frozen)) for k, v in state.items()})
        except RuntimeError as exc:
            raise ValueError(
                f"the policy {spec.policy.rsplit('#', 1)[0]} was meta-trained for another "
                f"backbone (its shapes do not fit {backbone.name}): {exc}"
            ) from None
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@functools.lru_cache(maxsize=8)
def load_policy(reference: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The policy state of a ``"path#sha256"`` reference, its hash checked (weights only), and
    the weights digest of the backbone it was meta-trained on (None if not recorded)."""
    _, blob = read_reference(
        reference, "meta-trained policy",
        "meta-train one with ptx_utils.finetuning.spottune_meta.meta_train_policy",
    )  # fmt: skip
    payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    identity = json.loads(payload.get("identity", "{}"))
    return dict(payload["policy"]), identity.get("backbone")


def trained_names(net: SpotTuneNet) -> dict[str, str]:
    """Trained parameter name -> its rate group (``"tuned"``, ``"head"``, ``"policy"``)."""
    out = {}
    for name, _ in net.named_parameters():
        group = name.split(".")[0]
        if group in ("tuned", "head"):
            out[name] = group
        elif group in ("policy", "gates"):
            out[name] = "policy"
    return out


def init_head(net: SpotTuneNet, plan: ReplicaPlan) -> None:
    """The head's initial weights from the replica plan (as every engine's)."""
    with torch.no_grad():
        net.head.weight.copy_(plan.head_weight)
        if getattr(net.head, "bias", None) is not None:
            net.head.bias.copy_(plan.head_bias)


def fit_support(
    net: SpotTuneNet,
    rates: dict[str, float],
    plan: ReplicaPlan,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    cfg: FinetuneConfig,
    after_step: Callable[[int], None] | None = None,
) -> bool:
    """The protocol's SGD (``torch.optim.SGD``) on ``net``'s copies, head and policy at
    ``rates`` (group -> lr; 0 leaves a group frozen), batches and noise from ``plan`` (the head
    initialised from it by :func:`init_head`). ``after_step(step)`` runs after every update.
    Returns whether the loss diverged."""
    device = _device(net)
    params = dict(net.named_parameters())
    groups: dict[str, list[nn.Parameter]] = {}
    for name, group in trained_names(net).items():
        if rates[group] > 0:
            params[name].requires_grad_(True)
            groups.setdefault(group, []).append(params[name])
    optimizer = (
        torch.optim.SGD(
            [{"params": ps, "lr": rates[g]} for g, ps in groups.items()],
            lr=rates["head"], momentum=cfg.momentum, dampening=cfg.dampening,
            weight_decay=cfg.weight_decay,
        )
        if groups
        else None  # nothing trains: the draws still happen, so the streams stay aligned
    )  # fmt: skip
    x_all, y_all = support_images.to(device), support_labels.to(device)
    aug = Augmentation()
    for step, row in enumerate(plan.batches, 1):
        idx = row[row >= 0].to(device)
        x = augment(x_all[idx], aug, plan.generator) if cfg.augment else normalize(x_all[idx])
        noise = gumbel_noise((len(idx), net.n_blocks, 2), plan.generator).to(device)
        logits, _ = net(x, noise)
        loss = F.cross_entropy(logits, y_all[idx]) + net.penalty().to(device)
        if not torch.isfinite(loss):
            return True
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if after_step is not None:
            after_step(step)
    for p in net.parameters():
        p.requires_grad_(False)
    return False


def spottune_sequential(
    backbone: Backbone,
    strategy: Strategy,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    cfg: FinetuneConfig,
    seed: int,
    record: tuple[int, ...] = (),
) -> tuple[torch.Tensor, bool, torch.Tensor]:
    """The reference: ``torch.optim.SGD`` (the protocol's) on the copies, head and policy.

    Args:
        support_images: uint8 (N, C, H, W); support_labels: int64 (N,); query_images: uint8.
        record: passes after which to keep the query logits too.

    Returns:
        (query logits float32 (S, Q, n_way) after each ``record`` pass then the last, NaN from a
        divergence on; diverged; decisions float32 (Q, L) at the end).
    """
    spec = SpotTuneSpec.of(strategy)
    net = build_net(backbone, spec, n_way, cfg)
    device = _device(net)
    plan = replica_plan(seed, len(support_images), n_way, net.frozen.out_dim, cfg)
    init_head(net, plan)
    x_query = normalize(query_images.to(device))
    nan = torch.full((len(query_images), n_way), float("nan"), device=device)

    def query() -> tuple[torch.Tensor, torch.Tensor]:
        noise = None
        if spec.inference == "sample":
            noise = gumbel_noise((len(x_query), net.n_blocks, 2), inference_generator(seed))
        with torch.no_grad():
            out, d = net(x_query, None if noise is None else noise.to(device))
        return (out if bool(torch.isfinite(out).all()) else nan), d

    per_pass = len(plan.batches) // cfg.passes if cfg.passes else 0
    check_record_within(record, cfg.passes, "passes")
    at = {p * per_pass: j for j, p in enumerate(record)}
    recorded = [nan] * len(record)

    def keep(step: int) -> None:
        if step in at:
            recorded[at[step]] = query()[0]

    keep(0)
    rates = {"tuned": spec.lr, "head": strategy.head_lr, "policy": spec.policy_lr}
    if fit_support(net, rates, plan, support_images, support_labels, cfg, keep):
        undecided = torch.full((len(x_query), net.n_blocks), float("nan"), device=device)
        return torch.stack([*recorded, nan]), True, undecided
    logits, decisions = query()
    return torch.stack([*recorded, logits]), not bool(torch.isfinite(logits).all()), decisions
