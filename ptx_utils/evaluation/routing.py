"""Where SpotTune routes: per episode and block, the fraction of queries sent to the tuned copy.

Replica (strategy, episode i) is seeded as in the harness (``replica_seed(seed, i)``), so the
accuracies here equal :func:`~ptx_utils.evaluation.evaluate_strategies`' rows for the same
episodes; the decisions are those each query met at test time (sampled or argmax, as the
strategy says).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from ptx_utils.core.runtime import Runtime
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.finetuning import FinetuneConfig, Strategy, place_episodes, replica_seed
from ptx_utils.finetuning.spottune_batched import spottune_batched
from ptx_utils.models import Backbone

#: Episodes one call of the batched SpotTune trains at once.
ROUTING_CHUNK = 16


def spottune_routing(
    backbone: Backbone,
    strategies: Mapping[str, Strategy],
    dataset: FewShotDataset,
    episodes: Episodes,
    cfg: FinetuneConfig,
    runtime: Runtime | None = None,
) -> pd.DataFrame:
    """SpotTune strategies (``path == "spottune"``) on every episode; one row per (strategy,
    episode, block).

    Returns:
        columns ``strategy, episode, block, layers, tuned_fraction`` (of the episode's queries
        routed through the tuned copy), ``accuracy`` (the episode's, repeated per block) and
        ``seconds`` (training and scoring time per episode of the strategy, shared by
        strategies that train alike: SpotTune's sampled and argmax pair trains once).

    Example:
        >>> from ptx_utils.data import load_dataset
        >>> from ptx_utils.data.episodes import sample_episodes
        >>> from ptx_utils.finetuning import spottune
        >>> from ptx_utils.models import create_backbone
        >>> test = load_dataset("synthetic", "test", image_size=16, images_per_class=10)
        >>> rows = spottune_routing(create_backbone("conv4", image_size=16),
        ...     {"SpotTune": spottune(4)}, test, sample_episodes(test, 5, 1, 2, 2, 0),
        ...     FinetuneConfig(passes=1), Runtime(progress=False))
        >>> rows.shape
        (8, 7)
    """
    runtime = Runtime() if runtime is None else runtime
    model, (s_img, s_lab, q_img, q_lab) = place_episodes(
        backbone, dataset, episodes, runtime.device
    )
    layers = [", ".join(s.layers) for s in model.forward_stages().stages]
    frames = []
    bar = tqdm(total=len(strategies) * len(episodes), desc="SpotTune routing", unit="replica",
               disable=not runtime.progress)  # fmt: skip
    for name, strategy in strategies.items():
        if strategy.path != "spottune":
            raise ValueError(f"{name!r} is not a SpotTune strategy (path {strategy.path!r})")
    groups: dict[Strategy, list[str]] = {}  # strategies that train alike run together
    for name, strategy in strategies.items():
        groups.setdefault(strategy.trained_as(), []).append(name)
    try:
        for names in groups.values():
            for start in range(0, len(episodes), ROUTING_CHUNK):
                eps = list(range(start, min(start + ROUTING_CHUNK, len(episodes))))
                tic = time.perf_counter()
                logits, _, decisions = spottune_batched(
                    model, [strategies[n] for n in names for _ in eps], eps * len(names),
                    [replica_seed(runtime.seed, e) for e in eps] * len(names), s_img, s_lab,
                    q_img, episodes.n_way, strategies[names[0]].protocol(cfg),
                )  # fmt: skip
                seconds = (time.perf_counter() - tic) / len(eps)  # per trained replica
                final = logits[:, -1]
                right = final.argmax(-1) == q_lab[torch.tensor(eps * len(names))]
                ok = torch.isfinite(final).flatten(1).all(1)
                accuracy = torch.where(ok, right.double().mean(1), torch.nan)
                usage = decisions.double().mean(1)  # (R, L)
                for r, (name, e) in enumerate((n, e) for n in names for e in eps):
                    for b, layer in enumerate(layers):
                        frames.append(
                            (name, e, b, layer, float(usage[r, b]), float(accuracy[r]), seconds)
                        )
                bar.update(len(eps) * len(names))
    finally:
        bar.close()
    return pd.DataFrame(
        frames,
        columns=["strategy", "episode", "block", "layers", "tuned_fraction", "accuracy", "seconds"],
    )


def routing_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over episodes of the tuned fraction, per strategy and block."""
    return (
        rows.groupby(["strategy", "block", "layers"], sort=False)["tuned_fraction"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
