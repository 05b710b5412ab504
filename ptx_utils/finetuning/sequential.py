"""The sequential reference: one strategy, one episode, plain PyTorch (``torch.optim.SGD``).

As simple as it can be; the batched engine must give the same query logits (fp32, 1e-4).
Divergence (a NaN or infinite loss) stops the replica; its logits are NaN, never chance.
AdaBN statistics (:mod:`.bn_stats`) are re-estimated on the copy first; a closed-form strategy
(:mod:`.closed_form`) fits its classifier on the frozen features, one episode, with the
reference solver; the feature transform sits between the backbone and the head; a prototype
head (:mod:`.prototype_init`) starts at the support's class means.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptx_utils.core.device import autocast, memory_format, resolve_precision, to_layout
from ptx_utils.data.augment import Augmentation, augment, normalize
from ptx_utils.finetuning.adapters import adapt_sequential
from ptx_utils.finetuning.bn_stats import episode_statistics, load_statistics, statistics_images
from ptx_utils.finetuning.closed_form import closed_form_logits
from ptx_utils.finetuning.feature_transform import apply_transform
from ptx_utils.finetuning.maml_adapt import maml_sequential
from ptx_utils.finetuning.protocol import (
    FinetuneConfig,
    check_record,
    check_record_within,
    replica_plan,
    set_bn_mode,
    trainable_groups,
)
from ptx_utils.finetuning.prototype_init import PROTOTYPE_HEADS, support_prototypes, with_prototypes
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.finetuning.spottune import spottune_sequential
from ptx_utils.finetuning.strategy import Strategy, as_strategy
from ptx_utils.finetuning.uppercase import uppercase_sequential
from ptx_utils.models import Backbone, create_head


@dataclass(frozen=True)
class FinetuneResult:
    """Query logits (Q, n_way) (NaN when diverged) and whether the replica diverged.

    ``recorded`` (with ``record``): (S, Q, n_way), the query logits after each record point,
    NaN from the point the replica diverged on.
    """

    logits: torch.Tensor
    diverged: bool
    recorded: torch.Tensor | None = None


def finetune_sequential(
    backbone: Backbone,
    strategy: Strategy | Scheme,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    cfg: FinetuneConfig = FinetuneConfig(),  # noqa: B008  (frozen dataclass)
    seed: int = 0,
    precision: str = "fp32",
    record: Sequence[int] | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``backbone`` and a new head on one support set; score the queries.

    Args:
        backbone: the pre-trained backbone (left unchanged).
        strategy: how to adapt (a bare :class:`Scheme` is the strategy of its rates).
        support_images: uint8 (N, C, H, W); support_labels: int64 (N,) in [0, n_way).
        query_images: uint8 (Q, C, H, W).
        seed: the replica's seed (head initialisation, batch order, augmentation).
        precision: ``"fp32"``, ``"bf16"`` (bf16 autocast + channels-last) or ``"auto"``.
        record: update counts (passes; attachments: steps) after which to keep the query logits
            too, as :func:`~ptx_utils.finetuning.batched.finetune_batched`.

    Returns:
        :class:`FinetuneResult` with float32 logits (Q, n_way).
    """
    strategy = as_strategy(strategy)
    cfg = strategy.protocol(cfg)
    points = check_record(record)
    scheme = strategy.scheme
    device = next(backbone.parameters()).device
    precision = resolve_precision(precision, device)
    model = copy.deepcopy(backbone).to(memory_format=memory_format(precision))
    for p in model.parameters():
        p.requires_grad_(False)
    if strategy.adapts_bn:
        images = statistics_images(support_images, query_images, strategy.bn_stats)
        load_statistics(model, episode_statistics(model, images, precision))
    options = dict(strategy.transform_options)

    def features(images: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            out = model(to_layout(images, precision))
        return apply_transform(out.float(), strategy.feature_transform, options)

    if strategy.path == "maml":  # float32, its own network and inner loop (.maml_adapt)
        logits = maml_sequential(
            strategy, support_images.to(device), support_labels, query_images.to(device), n_way,
            points,
        )  # fmt: skip
        return _result(logits[-1], logits[:-1] if record is not None else None)
    if strategy.path == "case":  # float32, UpperCaSE (ptx_utils.finetuning.uppercase)
        logits = uppercase_sequential(
            backbone, strategy, support_images.to(device), support_labels,
            query_images.to(device), n_way, seed, points,
        )  # fmt: skip
        return _result(logits[-1], logits[:-1] if record is not None else None)
    if strategy.path == "spottune":  # float32, the protocol's SGD (ptx_utils.finetuning.spottune)
        logits, _, _ = spottune_sequential(
            backbone, strategy, support_images, support_labels, query_images, n_way, cfg, seed,
            points,
        )  # fmt: skip
        return _result(logits[-1], logits[:-1] if record is not None else None)
    if strategy.path == "attachments":  # TSA / LT+NCC, float32 (ptx_utils.finetuning.adapters)
        logits, _ = adapt_sequential(
            model.to(memory_format=torch.contiguous_format), strategy, support_images,
            support_labels, query_images, n_way, points,
        )  # fmt: skip
        return _result(logits[-1], logits[:-1] if record is not None else None)
    if strategy.closed_form:
        model.eval()
        with torch.no_grad():
            s_feats = features(normalize(support_images.to(device)))
            q_feats = features(normalize(query_images.to(device)))
        logits = closed_form_logits(
            strategy.classifier, s_feats[None], support_labels.to(device)[None], q_feats[None],
            n_way, reference=True,
        )[0]  # fmt: skip
        stacked = logits.expand(len(points), -1, -1) if record is not None else None
        return _result(logits, stacked)
    groups = trainable_groups(model, scheme)
    for g in groups:
        for p in g["params"]:  # type: ignore[union-attr]
            p.requires_grad_(True)
    plan = replica_plan(seed, len(support_images), n_way, model.out_dim, cfg)
    if strategy.classifier in PROTOTYPE_HEADS:  # the episode's statistics are loaded already
        transform = (strategy.feature_transform, options)
        prototypes = support_prototypes(
            model, support_images, support_labels, n_way, transform, precision=precision
        )
        plan = with_prototypes(plan, prototypes, cfg.head)
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
    aug = Augmentation()
    x_all = support_images.to(device)
    y_all = support_labels.to(device)
    x_query = normalize(query_images.to(device))
    nan = torch.full((len(query_images), n_way), float("nan"), device=device)

    def query_logits() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            out = head(features(x_query))
        set_bn_mode(model, scheme, cfg.bn_mode)
        return out if bool(torch.isfinite(out).all()) else nan

    set_bn_mode(model, scheme, cfg.bn_mode)
    per_pass = len(plan.batches) // cfg.passes if cfg.passes else 0
    check_record_within(points, cfg.passes, "passes")
    at = {p * per_pass: j for j, p in enumerate(points)}
    recorded = [nan] * len(points)
    if 0 in at:
        recorded[at[0]] = query_logits()
    for step, row in enumerate(plan.batches, 1):
        idx = row[row >= 0].to(device)
        x = augment(x_all[idx], aug, plan.generator) if cfg.augment else normalize(x_all[idx])
        loss = F.cross_entropy(head(features(x)), y_all[idx])  # the head in float32
        if not torch.isfinite(loss):
            return _result(nan, torch.stack(recorded) if record is not None else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in at:
            recorded[at[step]] = query_logits()
    logits = query_logits()
    return _result(logits, torch.stack(recorded) if record is not None else None)


def _result(logits: torch.Tensor, recorded: torch.Tensor | None = None) -> FinetuneResult:
    """Logits as they are, or NaN and diverged when any is not finite (``recorded`` kept)."""
    if not bool(torch.isfinite(logits).all()):
        return FinetuneResult(torch.full_like(logits, float("nan")), True, recorded)
    return FinetuneResult(logits, False, recorded)
