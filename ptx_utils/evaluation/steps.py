"""Accuracy against adaptation length: every strategy's query accuracy after several update
counts, from one run each (the engines' ``record``).

The survey's MAML point — 5–10 inner steps are too few, 100 help — asked of every strategy that
trains: SGD strategies run ``max(passes)`` passes and are scored after each of ``passes``;
attachment strategies (TSA, LT+NCC) run ``max(passes)`` full-batch steps likewise;
closed-form strategies (nearest centroid, logistic regression) do not train and score the same at
every point. Replica seeds are the harness's (:func:`~ptx_utils.finetuning.replica_seed`), so a
point equals the harness's score of that many passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from ptx_utils.core.runtime import Runtime
from ptx_utils.core.stats import mean_ci95
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.finetuning import (
    FinetuneConfig,
    Scheme,
    Strategy,
    check_strategies,
    default_engine,
    place_episodes,
    replica_curves,
    replica_seed,
)
from ptx_utils.models import Backbone

#: The update counts the survey's question asks about.
DEFAULT_PASSES = (5, 10, 25, 50, 100, 200)
#: Columns of :func:`evaluate_steps`' rows and :func:`steps_summary`.
STEP_COLUMNS = ("strategy", "episode", "n_way", "k_shot", "passes", "accuracy")
STEP_SUMMARY_COLUMNS = ("strategy", "n_way", "k_shot", "passes", "n", "mean", "ci95")


def evaluate_steps(
    backbone: Backbone,
    strategies: Mapping[str, Strategy | Scheme],
    dataset: FewShotDataset,
    episodes: Episodes,
    cfg: FinetuneConfig | None = None,
    passes: Sequence[int] = DEFAULT_PASSES,
    runtime: Runtime | None = None,
    engine: str | None = None,
) -> pd.DataFrame:
    """Query accuracy of every strategy on every episode after each of ``passes`` updates.

    Args:
        backbone, strategies, dataset, episodes: as :func:`.harness.evaluate_strategies`.
        cfg: the protocol; its ``passes`` is replaced by ``max(passes)`` (and the ``steps`` of
            each attachment, UpperCaSE or MAML strategy likewise).
        passes: increasing update counts (0 = before any update).

    Returns:
        rows (:data:`STEP_COLUMNS`), accuracy as a fraction, NaN where a replica had diverged.

    Example:
        >>> from ptx_utils.data import load_dataset
        >>> from ptx_utils.data.episodes import sample_episodes
        >>> from ptx_utils.finetuning import linear_probe
        >>> from ptx_utils.models import create_backbone
        >>> test = load_dataset("synthetic", "test", image_size=16, images_per_class=10)
        >>> rows = evaluate_steps(create_backbone("conv4", image_size=16),
        ...     {"linear probe": linear_probe(4)}, test, sample_episodes(test, 5, 1, 2, 2, 0),
        ...     passes=(1, 3), runtime=Runtime(progress=False))
        >>> rows.shape
        (4, 6)
    """
    runtime = Runtime() if runtime is None else runtime
    record = [int(p) for p in passes]
    if not record:
        raise ValueError("passes must list at least one update count")
    cfg = replace(FinetuneConfig() if cfg is None else cfg, passes=max(record))
    named = check_strategies(strategies, backbone.layer_names())
    named = {
        k: replace(s, steps=max(record)) if s.path in ("attachments", "case", "maml") else s
        for k, s in named.items()
    }
    model, tensors = place_episodes(backbone, dataset, episodes, runtime.device)
    plan = [(name, e) for name in named for e in range(len(episodes))]
    accuracy = replica_curves(
        model,
        [named[name] for name, _ in plan],
        [e for _, e in plan],
        [replica_seed(runtime.seed, e) for _, e in plan],
        tensors,
        episodes.n_way,
        cfg,
        record,
        engine=default_engine() if engine is None else engine,
        chunk_size=runtime.chunk_size,
        progress=runtime.progress,
        precision=runtime.torch_precision(),
        executor=runtime.where(),
    )
    n_points = len(record)
    return pd.DataFrame(
        {
            "strategy": np.repeat([name for name, _ in plan], n_points),
            "episode": np.repeat(np.array([e for _, e in plan], dtype=np.int64), n_points),
            "n_way": episodes.n_way,
            "k_shot": episodes.k_shot,
            "passes": np.tile(np.array(record, dtype=np.int64), len(plan)),
            "accuracy": accuracy.ravel(),
        },
        columns=list(STEP_COLUMNS),
    )


def steps_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ± 95 % CI of :func:`evaluate_steps`' rows per (strategy, setting, passes)."""
    out = []
    keys = ["strategy", "n_way", "k_shot", "passes"]
    for key, part in rows.groupby(keys, sort=False):
        acc = part["accuracy"].to_numpy(dtype=float)
        acc = acc[np.isfinite(acc)]
        mean, ci = mean_ci95(acc) if len(acc) else (float("nan"), float("nan"))
        out.append({**dict(zip(keys, key, strict=True)), "n": len(acc), "mean": mean, "ci95": ci})
    return pd.DataFrame(out, columns=list(STEP_SUMMARY_COLUMNS))
