"""The batched engine: many (strategy, episode, seed) replicas in one vmapped computation.

Replica by replica it gives the query logits of
:func:`~ptx_utils.finetuning.sequential.finetune_sequential` (fp32, 1e-4). Replicas are grouped
by how their strategies run (:attr:`~ptx_utils.finetuning.Strategy.path`): SGD in vmapped chunks
(:mod:`.sgd_chunks`), closed-form classifiers fitted on every episode's frozen features at once
(:mod:`.closed_form`), attachments trained by a functional Adadelta (:mod:`.adapters`),
SpotTune's copies and policy by the functional SGD (:mod:`.spottune`), CaSE's heads
(:mod:`.uppercase`) and MAML's inner loop (:mod:`.maml_adapt`) chunk by chunk.
How it works and what it saves: ``docs/engine.md``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ptx_utils.core.device import memory_format, resolve_precision
from ptx_utils.finetuning.adapters import adapt_batched
from ptx_utils.finetuning.bn_stats import episodes_statistics
from ptx_utils.finetuning.closed_form import closed_form_logits, frozen_features
from ptx_utils.finetuning.functional_sgd import view_as_replicas
from ptx_utils.finetuning.maml_adapt import maml_batched
from ptx_utils.finetuning.protocol import FinetuneConfig, check_record
from ptx_utils.finetuning.replicas import check_episode_tensors
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.finetuning.sgd_chunks import (
    Variant,
    prefix_groups,
    prepare,
    run_engine,
    sgd_chunk_size,
)
from ptx_utils.finetuning.spottune_batched import spottune_batched
from ptx_utils.finetuning.strategy import Strategy, as_strategy
from ptx_utils.finetuning.uppercase import uppercase_batched
from ptx_utils.finetuning.vectorize import VECTORIZE
from ptx_utils.models import Backbone


@dataclass(frozen=True)
class Replica:
    """One fine-tuning run: a strategy on one episode with one seed.

    Attributes:
        strategy: how to adapt (a bare :class:`Scheme` is the strategy of its rates).
        episode: index into the stacked episode tensors passed to :func:`finetune_batched`.
        seed: the replica's seed for :func:`~ptx_utils.finetuning.protocol.replica_plan`.
    """

    strategy: Strategy | Scheme
    episode: int
    seed: int = 0

    @property
    def scheme(self) -> Scheme:
        """The strategy's per-layer rates."""
        return as_strategy(self.strategy).scheme


@dataclass(frozen=True)
class BatchedResult:
    """Query logits float32 (R, Q, n_way), NaN for diverged replicas, and diverged bool (R,).

    ``recorded`` (with ``record``): float32 (R, S, Q, n_way), the query logits after each of the
    ``record`` update counts, NaN where the replica had diverged by then.
    """

    logits: torch.Tensor
    diverged: torch.Tensor
    recorded: torch.Tensor | None = None


def finetune_batched(
    backbone: Backbone,
    replicas: Sequence[Replica],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    cfg: FinetuneConfig = FinetuneConfig(),  # noqa: B008  (frozen dataclass)
    chunk_size: int | None = None,
    progress: bool = True,
    frozen_prefix: bool = True,
    desc: str = "fine-tune replicas",
    precision: str = "fp32",
    vectorize: str = "auto",
    record: Sequence[int] | None = None,
) -> BatchedResult:
    """Fine-tune many replicas at once; the query logits of each, as the sequential reference.

    Args:
        backbone: the pre-trained backbone (left unchanged); its device is used.
        replicas: the (scheme, episode, seed) runs.
        support_images: uint8 (E, N, C, H, W); support_labels: int64 (E, N) in [0, n_way).
        query_images: uint8 (E, Q, C, H, W).
        n_way: classes per episode.
        cfg: the fine-tuning protocol.
        chunk_size: replicas per chunk; None = found from free GPU memory (fixed on CPU).
        progress: show a progress bar.
        frozen_prefix: compute a chunk's frozen leading stages once per episode (set False
            only to check that it makes no difference).
        desc: the progress bar's label.
        precision: ``"fp32"`` (the reference), ``"bf16"`` (bf16 autocast, channels-last frozen
            prefix, float32 weights, statistics and optimiser) or ``"auto"``.
        vectorize: ``"vmap"``, ``"loop"`` (replicas of a chunk one after another, same
            arithmetic) or ``"auto"`` (loop on a CPU when a chunk trains convolutions).
        record: update counts after which to keep the query logits as well (passes over the
            support set for SGD strategies, full-batch steps for attachments; 0 = before any;
            each at most the strategy's total). One run gives accuracy against adaptation
            length (:func:`~ptx_utils.evaluation.evaluate_steps`).

    Returns:
        :class:`BatchedResult`: logits float32 (R, Q, n_way) on the backbone's device, NaN rows
        for diverged replicas, and diverged bool (R,); ``recorded`` with ``record``.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    if vectorize not in VECTORIZE:
        raise ValueError(f"vectorize must be one of {VECTORIZE}, got {vectorize!r}")
    points = check_record(record)
    check_episode_tensors(
        [r.episode for r in replicas], support_images, support_labels, query_images
    )
    protocols = _groups(replicas, cfg)
    device = next(backbone.parameters()).device
    precision = resolve_precision(precision, device)
    n_rep, n_query = len(replicas), query_images.shape[1]
    logits = torch.full(
        (n_rep, len(points) + 1, n_query, n_way), float("nan"), dtype=torch.float32, device=device
    )
    diverged = torch.zeros(n_rep, dtype=torch.bool, device=device)
    bar = tqdm(total=n_rep, desc=desc, unit="replica", disable=not progress)
    try:
        for (protocol, variant), members in protocols.items():
            group = [replicas[i] for i in members]
            if variant.path in _CHUNKED:
                run = _chunk_runner(
                    backbone, group, support_images, support_labels, query_images, n_way,
                    protocol, variant, vectorize, points,
                )  # fmt: skip
                out, div = _run_in_chunks(group, chunk_size or ATTACHMENT_CHUNK, bar, run)
            elif variant.path == "closed-form":
                out, div = _run_closed_form(
                    backbone, group, support_images, support_labels, query_images, n_way,
                    variant, precision, bar,
                )  # fmt: skip
                out = out.unsqueeze(1).expand(-1, len(points) + 1, -1, -1)  # nothing trains
            else:
                engine = prepare(
                    backbone, group, support_images, support_labels, query_images, n_way,
                    protocol, precision, vectorize, variant, points,
                )  # fmt: skip
                out, div = run_engine(engine, chunk_size, frozen_prefix, bar)
            sel = torch.tensor(members, device=device)
            logits[sel] = out
            diverged[sel] = div
    finally:
        bar.close()
    return BatchedResult(logits[:, -1], diverged, logits[:, :-1] if record is not None else None)


def _groups(
    replicas: Sequence[Replica], cfg: FinetuneConfig
) -> dict[tuple[FinetuneConfig, Variant], list[int]]:
    """Replicas whose strategies resolve to the same protocol (head, BN mode) and variant
    (closed form, feature transform, AdaBN, attachments) run together."""
    protocols: dict[tuple[FinetuneConfig, Variant], list[int]] = {}
    for i, r in enumerate(replicas):
        strategy = as_strategy(r.strategy)
        protocols.setdefault((strategy.protocol(cfg), Variant.of(strategy)), []).append(i)
    return protocols


def chunk_plan(
    backbone: Backbone,
    replicas: Sequence[Replica],
    support_images: torch.Tensor,
    query_images: torch.Tensor,
    cfg: FinetuneConfig = FinetuneConfig(),  # noqa: B008  (frozen dataclass)
    chunk_size: int | None = None,
    frozen_prefix: bool = True,
) -> list[list[int]]:
    """The chunks :func:`finetune_batched` trains, as replica indices: the same call on one
    chunk's replicas computes exactly that chunk (on a CPU, or with ``chunk_size`` given), so an
    executor can spread chunks over workers without changing a number.

    Example:
        >>> from ptx_utils.finetuning import linear_probe
        >>> from ptx_utils.models import create_backbone
        >>> x = torch.zeros(3, 5, 3, 16, 16, dtype=torch.uint8)
        >>> reps = [Replica(linear_probe(4), e) for e in (2, 0, 1)]
        >>> chunk_plan(create_backbone("conv4", image_size=16), reps, x, x, chunk_size=2)
        [[1, 2], [0]]
    """
    plan: list[list[int]] = []
    split = backbone.forward_stages()
    for (protocol, variant), members in _groups(replicas, cfg).items():
        group = [replicas[i] for i in members]
        if variant.path == "closed-form":
            plan.append(members)
        elif variant.path in _CHUNKED:
            order = sorted(range(len(group)), key=lambda i: (group[i].episode, group[i].seed, i))
            size = chunk_size or ATTACHMENT_CHUNK
            plan += [[members[i] for i in order[p : p + size]] for p in range(0, len(order), size)]
        else:
            names = backbone.layer_names()
            layer_lrs = [dict(zip(names, r.scheme.lrs, strict=True)) for r in group]
            size = chunk_size or sgd_chunk_size(
                backbone, support_images, query_images, protocol, len(group)
            )
            episodes = [r.episode for r in group]
            for _, idx in prefix_groups(split, layer_lrs, episodes, frozen_prefix):
                plan += [[members[i] for i in idx[p : p + size]] for p in range(0, len(idx), size)]
    return plan


# -- attachments (TSA, LT+NCC) ------------------------------------------------------------------

#: Replicas an attachment, SpotTune, CaSE or MAML chunk trains at once when ``chunk_size`` is None.
ATTACHMENT_CHUNK = 16

#: The paths trained chunk by chunk by their own engine (:func:`_chunk_runner`).
_CHUNKED = ("attachments", "spottune", "case", "maml")


def _run_in_chunks(
    replicas: Sequence[Replica],
    size: int,
    bar: Any,
    run: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``run(idx)`` -> (logits, diverged) on chunks of ``size`` replicas in (episode, seed) order,
    put back in the replicas' order: logits (R, S, Q, n_way), diverged (R,)."""
    order = sorted(range(len(replicas)), key=lambda i: (replicas[i].episode, replicas[i].seed, i))
    logits, diverged = [], []
    for pos in range(0, len(order), size):
        idx = order[pos : pos + size]
        out, div = run(idx)
        logits.append(out)
        diverged.append(div)
        bar.update(len(idx))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(logits)[inverse], torch.cat(diverged)[inverse]


def _chunk_runner(
    backbone: Backbone,
    replicas: Sequence[Replica],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    cfg: FinetuneConfig,
    variant: Variant,
    vectorize: str,
    record: tuple[int, ...],
) -> Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]:
    """The engine of ``variant.path`` (attachments, SpotTune, CaSE, MAML) on the replicas at
    ``idx``: ``run(idx)`` -> logits (len(idx), S, Q, n_way), diverged (len(idx),)."""
    episode_tensors = (support_images, support_labels, query_images, n_way)

    def picked(idx: list[int]) -> tuple[list[Strategy], list[int], list[int]]:
        chosen = [replicas[i] for i in idx]
        strategies = [as_strategy(r.strategy) for r in chosen]
        return strategies, [r.episode for r in chosen], [r.seed for r in chosen]

    if variant.path == "attachments":
        episodes = [r.episode for r in replicas]
        stats = episodes_statistics(
            backbone, episodes, support_images, query_images, variant.bn_stats
        )

        def attachments(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            strategies, eps, _ = picked(idx)
            return adapt_batched(
                backbone, strategies, eps, *episode_tensors, stats or None, vectorize, record
            )

        return attachments
    if variant.path == "spottune":
        return lambda idx: spottune_batched(
            backbone, *picked(idx), *episode_tensors, cfg, vectorize, record
        )[:2]
    if variant.path == "case":
        return lambda idx: uppercase_batched(backbone, *picked(idx), *episode_tensors, record)
    if variant.path == "maml":
        loop = vectorize == "loop" or (vectorize == "auto" and support_images.device.type == "cpu")
        return lambda idx: maml_batched(*picked(idx)[:2], *episode_tensors, not loop, record)
    raise ValueError(f"no chunked engine for path {variant.path!r}")


# -- closed-form strategies ---------------------------------------------------------------------

#: Episodes whose features a closed-form group holds at once.
CLOSED_FORM_EPISODES = 64


def _run_closed_form(
    backbone: Backbone,
    replicas: Sequence[Replica],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    n_way: int,
    variant: Variant,
    precision: str,
    bar: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of every episode, one batched fit: logits (R, Q, n_way), diverged (R,)."""
    assert variant.classifier is not None
    device = next(backbone.parameters()).device
    model = copy.deepcopy(backbone).to(memory_format=memory_format(precision)).eval()
    episodes = sorted({r.episode for r in replicas})
    per_episode: dict[int, torch.Tensor] = {}
    for pos in range(0, len(episodes), CLOSED_FORM_EPISODES):
        chunk = episodes[pos : pos + CLOSED_FORM_EPISODES]
        s_feats, q_feats = frozen_features(
            model, chunk, support_images, query_images, variant.bn_stats, precision
        )
        labels = support_labels[torch.tensor(chunk, device=support_labels.device)].to(device)
        out = closed_form_logits(
            variant.classifier, s_feats, labels, q_feats, n_way, variant.transform,
            dict(variant.options),
        )  # fmt: skip
        per_episode.update(zip(chunk, out, strict=True))
        bar.set_postfix_str(f"{variant.classifier}: {pos + len(chunk)}/{len(episodes)} episodes")
    logits = torch.stack([per_episode[r.episode] for r in replicas])
    diverged = ~torch.isfinite(logits).flatten(1).all(1)
    logits = torch.where(
        view_as_replicas(diverged, logits), torch.full_like(logits, float("nan")), logits
    )
    bar.update(len(replicas))
    return logits, diverged


__all__ = ["BatchedResult", "Replica", "chunk_plan", "finetune_batched"]
