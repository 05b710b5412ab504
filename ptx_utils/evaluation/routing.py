"""Where SpotTune routes: per episode and block, the fraction of queries sent to the tuned copy.

Replica (strategy, episode i) is seeded as in the harness (``replica_seed(seed, i)``), so the
accuracies here equal :func:`~ptx_utils.evaluation.evaluate_strategies`' rows for the same
episodes; the decisions are those each query met at test time (sampled or argmax, as the
strategy says). With a ``checkpoint_dir`` each chunk of episodes is saved with what it was made
with, and a re-run with the same settings reuses it: an interrupted routing run resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ptx_utils.core.io import atomic_write_json, atomic_write_text, slug
from ptx_utils.core.runtime import Runtime
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.finetuning import FinetuneConfig, Strategy, place_episodes, replica_seed
from ptx_utils.finetuning.spottune_batched import spottune_batched
from ptx_utils.models import Backbone

#: Episodes one call of the batched SpotTune trains at once.
ROUTING_CHUNK = 16

#: The columns of :func:`spottune_routing`'s rows.
COLUMNS = ["strategy", "episode", "block", "layers", "tuned_fraction", "accuracy", "seconds"]


def spottune_routing(
    backbone: Backbone,
    strategies: Mapping[str, Strategy],
    dataset: FewShotDataset,
    episodes: Episodes,
    cfg: FinetuneConfig,
    runtime: Runtime | None = None,
    checkpoint_dir: str | Path | None = None,
) -> pd.DataFrame:
    """SpotTune strategies (``path == "spottune"``) on every episode; one row per (strategy,
    episode, block).

    Args:
        checkpoint_dir: save each chunk of :data:`ROUTING_CHUNK` episodes there
            (``routing-<strategies>.<first>-<last>.csv`` and its ``.json`` record) and reuse the
            chunks a run with the same settings saved (episodes, dataset, seed, protocol,
            strategies); ``None`` saves nothing.

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
    frames: list[pd.DataFrame] = []
    bar = tqdm(total=len(strategies) * len(episodes), desc="SpotTune routing", unit="replica",
               disable=not runtime.progress)  # fmt: skip
    for name, strategy in strategies.items():
        if strategy.path != "spottune":
            raise ValueError(f"{name!r} is not a SpotTune strategy (path {strategy.path!r})")
    groups: dict[Strategy, list[str]] = {}  # strategies that train alike run together
    for name, strategy in strategies.items():
        groups.setdefault(strategy.trained_as(), []).append(name)
    made_with = {
        "episodes_digest": episodes.digest(),
        "dataset_fingerprint": episodes.dataset_fingerprint,
        "seed": runtime.seed,
        "finetune_config": asdict(cfg),
    }
    try:
        for names in groups.values():
            for start in range(0, len(episodes), ROUTING_CHUNK):
                eps = list(range(start, min(start + ROUTING_CHUNK, len(episodes))))
                asked = {
                    **made_with,
                    "strategies": {n: strategies[n].portable().to_dict() for n in names},
                    "episodes": [eps[0], eps[-1] + 1],
                }
                asked = json.loads(json.dumps(asked, default=str))  # as it reads back
                chunk = _saved_chunk(checkpoint_dir, names, eps, asked)
                if chunk is None:
                    chunk = _route_chunk(
                        model, [strategies[n] for n in names], names, eps, runtime.seed, layers,
                        (s_img, s_lab, q_img, q_lab), episodes.n_way, cfg,
                    )  # fmt: skip
                    if checkpoint_dir is not None:
                        path = _chunk_path(Path(checkpoint_dir), names, eps)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_text(path, chunk.to_csv(index=False))
                        atomic_write_json(path.with_suffix(".json"), asked)
                frames.append(chunk)
                bar.update(len(eps) * len(names))
    finally:
        bar.close()
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.concat(frames, ignore_index=True)  # chunk-major; strategy-major below
    order = rows["strategy"].map({n: i for i, n in enumerate(strategies)})
    return (
        rows.assign(_order=order)
        .sort_values(["_order", "episode", "block"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _route_chunk(
    model: Backbone,
    group: list[Strategy],
    names: list[str],
    eps: list[int],
    seed: int,
    layers: list[str],
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    n_way: int,
    cfg: FinetuneConfig,
) -> pd.DataFrame:
    """One batched SpotTune call: strategies ``group`` (alike in training) on episodes ``eps``."""
    s_img, s_lab, q_img, q_lab = tensors
    tic = time.perf_counter()
    logits, _, decisions = spottune_batched(
        model, [s for s in group for _ in eps], eps * len(group),
        [replica_seed(seed, e) for e in eps] * len(group), s_img, s_lab, q_img, n_way,
        group[0].protocol(cfg),
    )  # fmt: skip
    seconds = (time.perf_counter() - tic) / len(eps)  # per trained replica
    final = logits[:, -1]
    right = final.argmax(-1) == q_lab[torch.tensor(eps * len(group))]
    ok = torch.isfinite(final).flatten(1).all(1)
    accuracy = torch.where(ok, right.double().mean(1), torch.nan)
    usage = decisions.double().mean(1)  # (R, L)
    rows = [
        (name, e, b, layer, float(usage[r, b]), float(accuracy[r]), seconds)
        for r, (name, e) in enumerate((n, e) for n in names for e in eps)
        for b, layer in enumerate(layers)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _chunk_path(checkpoint_dir: Path, names: list[str], eps: list[int]) -> Path:
    """Where the chunk of strategies ``names`` on episodes ``eps`` is saved."""
    return checkpoint_dir / f"routing-{slug(' '.join(names))}.{eps[0]:05d}-{eps[-1]:05d}.csv"


def _saved_chunk(
    checkpoint_dir: str | Path | None, names: list[str], eps: list[int], asked: dict[str, Any]
) -> pd.DataFrame | None:
    """The chunk's saved rows when its record says they were made with ``asked``, else None."""
    if checkpoint_dir is None:
        return None
    path = _chunk_path(Path(checkpoint_dir), names, eps)
    record = path.with_suffix(".json")
    if not record.is_file() or json.loads(record.read_text()) != asked:
        return None
    rows = pd.read_csv(path, dtype={"strategy": str, "layers": str})
    expected = [(n, e) for n in names for e in eps]
    if list(dict.fromkeys(zip(rows["strategy"], rows["episode"], strict=True))) != expected:
        raise ValueError(
            f"{path} does not hold episodes {eps[0]}-{eps[-1]} of {names} as its record says; "
            "remove it (and its .json) to route that chunk again"
        )
    return rows


def routing_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over episodes of the tuned fraction, per strategy and block."""
    return (
        rows.groupby(["strategy", "block", "layers"], sort=False)["tuned_fraction"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
