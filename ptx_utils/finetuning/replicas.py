"""The replica runner: fine-tune (strategy, episode, seed) replicas with either engine; score them.

What the search's fitness and the evaluation harness share. A replica's seed depends on the
episode, never on the strategy (:func:`replica_seed`), so strategies compared on one episode start
from the same head and see the same batch order.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ptx_utils.core.device import resolve_device
from ptx_utils.core.runtime import LOCAL, Executor
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.finetuning.sequential import finetune_sequential
from ptx_utils.finetuning.strategy import Strategy, as_strategy
from ptx_utils.models import Backbone

ENGINES = ("sequential", "batched")
SEED_STRIDE = 1_000_003


def replica_seed(seed: int, episode: int) -> int:
    """The fine-tuning seed of episode ``episode``: ``seed * 1_000_003 + episode``.

    It does not depend on the strategy, so every strategy gets the same head initialisation and
    batch order on one episode.
    """
    return int(seed) * SEED_STRIDE + int(episode)


def default_engine() -> str:
    """``"batched"`` when :mod:`ptx_utils.finetuning.batched` imports, else ``"sequential"``."""
    try:
        import ptx_utils.finetuning.batched  # noqa: F401
    except ImportError:
        return "sequential"
    return "batched"


EpisodeTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def place_episodes(
    backbone: Backbone,
    dataset: FewShotDataset,
    episodes: Episodes,
    device: str | torch.device = "auto",
) -> tuple[Backbone, EpisodeTensors]:
    """The backbone (copied only if it must move) and the episodes' tensors on ``device``.

    Returns:
        (model, (support_images uint8 (E, N, C, H, W), support_labels int64 (E, N),
        query_images uint8 (E, Q, C, H, W), query_labels int64 (E, Q))).
    """
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    model = backbone
    if next(backbone.parameters()).device != dev:
        model = copy.deepcopy(backbone).to(dev)
    batch = episodes.tensors(dataset)
    tensors = (
        batch.support_images.to(dev),
        batch.support_labels.to(dev),
        batch.query_images.to(dev),
        batch.query_labels.to(dev),
    )
    return model, tensors


def check_episode_tensors(
    episode_index: Sequence[int],
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
) -> None:
    """Refuse episode tensors of the wrong shapes, or replica episode indices out of range."""
    if support_images.ndim != 5 or query_images.ndim != 5 or support_labels.ndim != 2:
        raise ValueError(
            "expected stacked episodes: support_images (E, N, C, H, W), support_labels (E, N), "
            f"query_images (E, Q, C, H, W); got {tuple(support_images.shape)}, "
            f"{tuple(support_labels.shape)}, {tuple(query_images.shape)}"
        )
    n_ep = support_images.shape[0]
    if support_labels.shape != support_images.shape[:2] or query_images.shape[0] != n_ep:
        raise ValueError(
            f"episode tensors disagree: support_images {tuple(support_images.shape)}, "
            f"support_labels {tuple(support_labels.shape)}, query_images "
            f"{tuple(query_images.shape)}"
        )
    bad = [e for e in episode_index if not 0 <= e < n_ep]
    if bad:
        raise ValueError(f"replica episode indices {bad[:5]} out of range for {n_ep} episodes")


def _run_replicas(
    model: Backbone,
    strategies: Sequence[Strategy | Scheme],
    episode_index: Sequence[int],
    seeds: Sequence[int],
    episode_tensors: EpisodeTensors,
    n_way: int,
    cfg: FinetuneConfig,
    engine: str,
    chunk_size: int | None,
    progress: bool,
    desc: str,
    precision: str,
    record: Sequence[int] | None = None,
    executor: Executor = LOCAL,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Either engine on the replicas: (logits (R, Q, n_way), diverged (R,), recorded or None),
    on the device of the episode tensors; here or on Ray workers (``executor``)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if executor.kind == "ray":
        from ptx_utils.finetuning.ray_executor import run_replicas_ray

        return run_replicas_ray(
            model, [as_strategy(s) for s in strategies], episode_index, seeds, episode_tensors,
            n_way, cfg, engine, chunk_size, progress, desc, precision, record, executor.address,
            executor.workers,
        )  # fmt: skip
    support_images, support_labels, query_images, query_labels = episode_tensors
    dev = query_labels.device
    if engine == "batched":
        from ptx_utils.finetuning.batched import Replica, finetune_batched

        replicas = [
            Replica(strategy=strategy, episode=e, seed=s)
            for strategy, e, s in zip(strategies, episode_index, seeds, strict=True)
        ]
        out = finetune_batched(
            model, replicas, support_images, support_labels, query_images, n_way, cfg,
            chunk_size=chunk_size, progress=progress, desc=desc, precision=precision,
            record=record,
        )  # fmt: skip
        recorded = out.recorded.to(dev) if record is not None else None
        diverged = torch.as_tensor(out.diverged, dtype=torch.bool, device=dev)
        return out.logits.to(dev), diverged, recorded
    results = []
    for strategy, e, s in zip(
        tqdm(strategies, desc=desc, unit="replica", disable=not progress),
        episode_index,
        seeds,
        strict=True,
    ):
        results.append(
            finetune_sequential(
                model,
                strategy,
                support_images[e],
                support_labels[e],
                query_images[e],
                n_way,
                cfg,
                seed=s,
                precision=precision,
                record=record,
            )
        )
    if not results:
        empty = torch.empty(0, query_images.shape[1], n_way, device=dev)
        return empty, torch.zeros(0, dtype=torch.bool, device=dev), None
    logits = torch.stack([r.logits.to(dev) for r in results])
    diverged = torch.tensor([r.diverged for r in results], dtype=torch.bool, device=dev)
    recorded = None
    if record is not None:
        recorded = torch.stack([r.recorded.to(dev) for r in results])  # type: ignore[union-attr]
    return logits, diverged, recorded


def replica_accuracies(
    model: Backbone,
    strategies: Sequence[Strategy | Scheme],
    episode_index: Sequence[int],
    seeds: Sequence[int],
    episode_tensors: EpisodeTensors,
    n_way: int,
    cfg: FinetuneConfig,
    engine: str = "batched",
    chunk_size: int | None = None,
    progress: bool = True,
    desc: str = "fine-tuning",
    precision: str = "fp32",
    executor: Executor = LOCAL,
) -> tuple[np.ndarray, np.ndarray]:
    """Fine-tune replica i = (``strategies[i]``, episode ``episode_index[i]``, ``seeds[i]``), score.

    Args:
        model: the backbone, already on the device of ``episode_tensors``.
        episode_tensors: stacked episodes (support_images uint8 (E, N, C, H, W), support_labels
            int64 (E, N), query_images uint8 (E, Q, C, H, W), query_labels int64 (E, Q)).
        engine: ``"sequential"`` (the reference, one replica at a time) or ``"batched"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:mod:`ptx_utils.core.device`).
        executor: where the replicas run (:class:`~ptx_utils.core.runtime.Executor`: here, or
            the batched engine's chunks on Ray workers — the same numbers).

    Returns:
        accuracy float64 (R,): fraction of the replica's queries right, NaN when it diverged;
        diverged bool (R,): the engine said so or a logit is not finite.
    """
    logits, diverged, _ = _run_replicas(
        model, strategies, episode_index, seeds, episode_tensors, n_way, cfg, engine,
        chunk_size, progress, desc, precision, None, executor,
    )  # fmt: skip
    query_labels = episode_tensors[3]
    # Non-finite logits count as diverged whatever the engine said.
    diverged = diverged | ~torch.isfinite(logits).flatten(1).all(1)
    index = torch.as_tensor(list(episode_index), dtype=torch.int64, device=query_labels.device)
    correct = logits.argmax(-1) == query_labels[index]
    accuracy = correct.double().mean(-1)
    accuracy = torch.where(diverged, torch.full_like(accuracy, math.nan), accuracy)
    return accuracy.cpu().numpy().astype(np.float64), diverged.cpu().numpy().astype(bool)


def replica_curves(
    model: Backbone,
    strategies: Sequence[Strategy | Scheme],
    episode_index: Sequence[int],
    seeds: Sequence[int],
    episode_tensors: EpisodeTensors,
    n_way: int,
    cfg: FinetuneConfig,
    record: Sequence[int],
    engine: str = "batched",
    chunk_size: int | None = None,
    progress: bool = True,
    desc: str = "accuracy vs updates",
    precision: str = "fp32",
    executor: Executor = LOCAL,
) -> np.ndarray:
    """Query accuracy of replica i after each of ``record`` updates, from one run each.

    As :func:`replica_accuracies`, with ``record`` (passes for SGD strategies, steps for
    attachments; closed-form strategies give one value at every point).

    Returns:
        accuracy float64 (R, S), NaN where the replica had diverged by then.
    """
    _, _, recorded = _run_replicas(
        model, strategies, episode_index, seeds, episode_tensors, n_way, cfg, engine,
        chunk_size, progress, desc, precision, record, executor,
    )  # fmt: skip
    assert recorded is not None
    query_labels = episode_tensors[3]
    index = torch.as_tensor(list(episode_index), dtype=torch.int64, device=query_labels.device)
    correct = recorded.argmax(-1) == query_labels[index].unsqueeze(1)
    accuracy = correct.double().mean(-1)
    accuracy = torch.where(torch.isfinite(recorded).flatten(2).all(2), accuracy, math.nan)
    return accuracy.cpu().numpy().astype(np.float64)
