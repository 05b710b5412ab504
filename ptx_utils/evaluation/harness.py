"""The evaluation harness: fine-tune every strategy on every test episode; one tidy row each.

Replica (strategy, episode i) is seeded with :func:`~ptx_utils.finetuning.replica_seed`
``(seed, i)`` whatever the strategy, so strategies differ on an episode only by how they adapt
and :func:`~ptx_utils.evaluation.tables.paired_table` compares them episode by episode. With a
checkpoint directory each strategy's rows are saved when done, its progress every
:data:`BLOCK_EPISODES` episodes, and both are reused on a re-run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ptx_utils.core.io import atomic_write_json, atomic_write_text, slug
from ptx_utils.core.runtime import Runtime
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.evaluation.tables import ROW_COLUMNS, paired_table, summary_table
from ptx_utils.finetuning import (
    ENGINES,
    FinetuneConfig,
    Scheme,
    Strategy,
    batched,
    check_strategies,
    default_engine,
    place_episodes,
    replica_accuracies,
    replica_seed,
)
from ptx_utils.finetuning.chunking import CPU_CHUNK_SIZE
from ptx_utils.models import Backbone


@dataclass
class Evaluation:
    """What :func:`evaluate_strategies` returns.

    Attributes:
        rows: the tidy frame, one row per (strategy, episode), columns :data:`ROW_COLUMNS`.
        meta: JSON-ready metadata (engine, device, seed, episodes digest, dataset, protocol,
            strategies), written beside the results by :func:`~ptx_utils.evaluation.write_results`.
    """

    rows: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """:func:`~ptx_utils.evaluation.tables.summary_table` of the rows."""
        return summary_table(self.rows)

    def paired(self, reference: str) -> pd.DataFrame:
        """:func:`~ptx_utils.evaluation.tables.paired_table` of the rows against ``reference``."""
        return paired_table(self.rows, reference)

    @classmethod
    def concat(cls, evaluations: Sequence[Evaluation], /, **meta: Any) -> Evaluation:
        """The rows of several evaluations in one frame; ``meta`` becomes the metadata."""
        rows = pd.concat([e.rows for e in evaluations], ignore_index=True)
        return cls(rows, dict(meta))


def evaluate_strategies(
    backbone: Backbone,
    strategies: Mapping[str, Strategy | Scheme],
    dataset: FewShotDataset,
    episodes: Episodes,
    cfg: FinetuneConfig | None = None,
    runtime: Runtime | None = None,
    engine: str | None = None,
    checkpoint_dir: str | Path | None = None,
) -> Evaluation:
    """Fine-tune and score every strategy on every episode.

    Args:
        backbone: the pre-trained backbone (left unchanged; copied when it must move device).
        strategies: name -> strategy (or bare scheme), in the order the tables list them.
        dataset: the split ``episodes`` were drawn from.
        episodes: the test episodes; row ``episode`` of the result is position i.
        cfg: the fine-tuning protocol (None: the paper's :class:`FinetuneConfig` defaults).
        runtime: seed (replica i uses ``replica_seed(seed, i)``), device, chunk size, progress.
        engine: ``"sequential"`` (the reference), ``"batched"`` or None (the default engine).
        checkpoint_dir: save each strategy's rows there when done (:func:`strategy_checkpoint`;
            its progress every :data:`BLOCK_EPISODES` episodes)
            and reuse those saved for the same episodes, strategy, seed and protocol; a saved
            file for other settings is refused. Resumed rows equal an uninterrupted run's.

    Returns:
        :class:`Evaluation`: ``rows`` strategy-major with ``accuracy`` (fraction right, NaN when
        diverged), ``diverged`` and the replica ``seed``; ``meta``.

    Example:
        >>> from ptx_utils.data import load_dataset
        >>> from ptx_utils.data.episodes import sample_episodes
        >>> from ptx_utils.finetuning import linear_probe
        >>> from ptx_utils.models import create_backbone
        >>> test = load_dataset("synthetic", "test", image_size=16, images_per_class=10)
        >>> ev = evaluate_strategies(create_backbone("conv4", image_size=16),
        ...     {"linear probe": linear_probe(4)}, test, sample_episodes(test, 5, 1, 2, 2, 0),
        ...     FinetuneConfig(passes=1), Runtime(progress=False))
        >>> ev.rows.shape
        (2, 9)
    """
    runtime = Runtime() if runtime is None else runtime
    cfg = FinetuneConfig() if cfg is None else cfg
    named = check_strategies(strategies, backbone.layer_names())
    engine = default_engine() if engine is None else engine
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES} or None (the default), got {engine!r}")
    if episodes.n_query < 1:
        raise ValueError("evaluation needs query images; sample episodes with n_query >= 1")
    if checkpoint_dir is not None:
        return _evaluate_resumable(
            backbone, named, dataset, episodes, cfg, runtime, engine, Path(checkpoint_dir)
        )
    return _evaluate(backbone, named, dataset, episodes, cfg, runtime, engine)


def _evaluate(
    backbone: Backbone,
    named: dict[str, Strategy],
    dataset: FewShotDataset,
    episodes: Episodes,
    cfg: FinetuneConfig,
    runtime: Runtime,
    engine: str,
    offset: int = 0,
    desc: str = "fine-tuning",
) -> Evaluation:
    """The harness on ``episodes``, which are episodes ``offset``, ``offset + 1``, ... of the
    evaluation: rows and replica seeds carry those positions."""
    model, tensors = place_episodes(backbone, dataset, episodes, runtime.device)
    n_way, n_episodes = episodes.n_way, len(episodes)
    plan = [(name, e) for name in named for e in range(n_episodes)]
    seeds = [replica_seed(runtime.seed, offset + e) for _, e in plan]
    accuracy, diverged = replica_accuracies(
        model,
        [named[name] for name, _ in plan],
        [e for _, e in plan],
        seeds,
        tensors,
        n_way,
        cfg,
        engine=engine,
        chunk_size=runtime.chunk_size,
        progress=runtime.progress,
        desc=desc,
        precision=runtime.torch_precision(),
        executor=runtime.where(),
    )
    rows = pd.DataFrame(
        {
            "strategy": [name for name, _ in plan],
            "scheme": [str(named[name]) for name, _ in plan],
            "episode": np.array([offset + e for _, e in plan], dtype=np.int64),
            "n_way": n_way,
            "k_shot": episodes.k_shot,
            "n_query": episodes.n_query,
            "accuracy": accuracy,
            "diverged": diverged,
            "seed": np.array(seeds, dtype=np.int64),
        },
        columns=list(ROW_COLUMNS),
    )
    return Evaluation(
        rows, _meta(engine, str(tensors[0].device), runtime, episodes, dataset, cfg, named)
    )


def _meta(
    engine: str,
    device: str,
    runtime: Runtime,
    episodes: Episodes,
    dataset: FewShotDataset,
    cfg: FinetuneConfig,
    named: Mapping[str, Strategy],
) -> dict[str, Any]:
    """An evaluation's metadata (:attr:`Evaluation.meta`)."""
    return {
        "engine": engine,
        "device": device,
        "precision": runtime.torch_precision(),
        "seed": runtime.seed,
        "episodes_digest": episodes.digest(),
        "episodes_seed": episodes.seed,
        "dataset": f"{dataset.name}/{dataset.split}",
        "dataset_fingerprint": episodes.dataset_fingerprint,
        "finetune_config": asdict(cfg),
        "strategies": {name: s.to_dict() for name, s in named.items()},
    }


def strategy_checkpoint(checkpoint_dir: str | Path, episodes: Episodes, strategy: str) -> Path:
    """Where :func:`evaluate_strategies` keeps one strategy's rows: ``<n>way_<k>shot_<q>query_
    <strategy>.csv`` (and its metadata beside it, same stem, ``.json``)."""
    stem = f"{episodes.n_way}way_{episodes.k_shot}shot_{episodes.n_query}query_{slug(strategy)}"
    return Path(checkpoint_dir) / f"{stem}.csv"


#: The metadata a saved strategy must share with the evaluation that would reuse it.
_RESUME_KEYS = ("episodes_digest", "dataset_fingerprint", "seed", "finetune_config", "precision")


def _settings(episodes: Episodes, cfg: FinetuneConfig, runtime: Runtime) -> dict[str, Any]:
    """What saved rows must have been made with to be reused (:data:`_RESUME_KEYS`), JSON-ready."""
    return {
        "episodes_digest": episodes.digest(),
        "dataset_fingerprint": episodes.dataset_fingerprint,
        "seed": runtime.seed,
        "finetune_config": json.loads(json.dumps(asdict(cfg))),
        "precision": runtime.torch_precision(),
    }


def _evaluate_resumable(
    backbone: Backbone,
    strategies: dict[str, Strategy],
    dataset: FewShotDataset,
    episodes: Episodes,
    cfg: FinetuneConfig,
    runtime: Runtime,
    engine: str,
    checkpoint_dir: Path,
) -> Evaluation:
    """:func:`evaluate_strategies` one strategy at a time (those that train alike together),
    saving or reusing each one."""
    expected = _settings(episodes, cfg, runtime)
    done: dict[str, tuple[pd.DataFrame, dict[str, Any]]] = {}
    for name, strategy in strategies.items():
        path = strategy_checkpoint(checkpoint_dir, episodes, name)
        meta_path = path.with_suffix(".json")
        if meta_path.exists():  # written after the CSV: its presence means the strategy is done
            meta = json.loads(meta_path.read_text())
            saved = {k: meta.get(k) for k in _RESUME_KEYS}
            saved["precision"] = meta.get("precision", "fp32")  # results from before bf16
            saved_strategy = meta.get("strategies", {}).get(name)
            if (
                saved != expected
                or saved_strategy is None
                or Strategy.from_dict(saved_strategy).portable() != strategy.portable()
            ):
                raise ValueError(
                    f"{meta_path} holds strategy {name!r} for other settings (episodes, seed, "
                    "fine-tuning protocol, precision or strategy differ); use another checkpoint "
                    "directory or remove that file to evaluate again"
                )
            done[name] = (_read_rows(path), meta)
    for name, strategy in strategies.items():
        if name in done:
            continue
        # with it, every pending strategy that trains alike (SpotTune's two inference modes)
        group = {
            n: s for n, s in strategies.items()
            if n not in done and s.trained_as() == strategy.trained_as()
        }  # fmt: skip
        evaluation = _evaluate_in_blocks(
            backbone, group, dataset, episodes, cfg, runtime, engine, checkpoint_dir
        )
        for n in group:
            rows = evaluation.rows[evaluation.rows["strategy"] == n].reset_index(drop=True)
            meta = json.loads(json.dumps(evaluation.meta, default=str))
            meta["strategies"] = {n: meta["strategies"][n]}
            path = strategy_checkpoint(checkpoint_dir, episodes, n)
            atomic_write_text(path, rows.to_csv(index=False))
            atomic_write_json(path.with_suffix(".json"), meta)
            done[n] = (rows, meta)
    for block in _block_files(checkpoint_dir, episodes, list(strategies)):
        block.unlink(missing_ok=True)  # the strategies' files hold every episode now
    frames = [done[n][0][list(ROW_COLUMNS)] for n in strategies]
    metas = [done[n][1] for n in strategies]
    meta = {**metas[0], **expected}
    meta["device"] = ", ".join(dict.fromkeys(m["device"] for m in metas))
    meta["engine"] = ", ".join(dict.fromkeys(m["engine"] for m in metas))
    meta["strategies"] = {name: s.to_dict() for name, s in strategies.items()}
    return Evaluation(pd.concat(frames, ignore_index=True), meta)


def _read_rows(path: Path) -> pd.DataFrame:
    """Saved rows as the harness made them (names as text, NaN accuracy where diverged)."""
    text = {"strategy": str, "scheme": str}
    rows = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=text)
    rows["accuracy"] = rows["accuracy"].astype(float)
    rows["diverged"] = rows["diverged"].astype(bool)
    return rows


#: Test episodes a strategy is evaluated on between two saves of its progress, on a CPU: a
#: multiple of every batch the engine forms across episodes there (SGD chunks of 32 replicas,
#: attachment / SpotTune / CaSE / MAML chunks of 16, closed-form fits of 64 episodes), so a
#: block trains and fits exactly the batches one call over every episode would.
BLOCK_EPISODES = 64


def _block_size(runtime: Runtime, n_episodes: int) -> int:
    """Episodes a block: :data:`BLOCK_EPISODES` (rounded up to a multiple of the runtime's chunk
    size and the closed-form batch); all of them on CUDA or Ray, whose chunks follow the call."""
    if runtime.where().kind != "local" or runtime.torch_device().type != "cpu":
        return max(1, n_episodes)
    default = (CPU_CHUNK_SIZE, batched.ATTACHMENT_CHUNK)
    chunks = (runtime.chunk_size,) if runtime.chunk_size else default
    unit = math.lcm(*chunks, batched.CLOSED_FORM_EPISODES)
    return unit * -(-BLOCK_EPISODES // unit)


def _block_files(checkpoint_dir: Path, episodes: Episodes, names: Sequence[str]) -> list[Path]:
    """The saved blocks of strategies ``names``: ``<stem>.block<first>-<last episode>.{csv,json}``
    beside each strategy's file."""
    stems = [strategy_checkpoint(checkpoint_dir, episodes, n).stem for n in names]
    return sorted(p for stem in stems for p in checkpoint_dir.glob(f"{stem}.block*.*"))


def _evaluate_in_blocks(
    backbone: Backbone,
    group: dict[str, Strategy],
    dataset: FewShotDataset,
    episodes: Episodes,
    cfg: FinetuneConfig,
    runtime: Runtime,
    engine: str,
    checkpoint_dir: Path,
) -> Evaluation:
    """``group`` on ``episodes`` a block at a time (:func:`_block_size`), each block's rows saved
    with what they were made with and reused by a re-run with the same settings."""
    size = _block_size(runtime, len(episodes))
    first = strategy_checkpoint(checkpoint_dir, episodes, next(iter(group)))
    made_with = {
        **_settings(episodes, cfg, runtime),
        "chunk_size": runtime.chunk_size,
        "strategies": {n: s.portable().to_dict() for n, s in group.items()},
    }
    parts, devices, engines = [], [], []
    for start in range(0, len(episodes), size):
        stop = min(len(episodes), start + size)
        block = first.with_name(f"{first.stem}.block{start:05d}-{stop - 1:05d}.csv")
        record = block.with_suffix(".json")
        asked = json.loads(json.dumps({**made_with, "episodes": [start, stop]}, default=str))
        saved = json.loads(record.read_text()) if record.is_file() else {}
        if saved.get("made_with") == asked:
            rows = _read_rows(block)
            expected = [(n, e) for n in group for e in range(start, stop)]
            if list(zip(rows["strategy"], rows["episode"], strict=True)) != expected:
                raise ValueError(
                    f"{block} does not hold episodes {start}-{stop - 1} of {list(group)} as its "
                    "record says; remove it (and its .json) to evaluate that block again"
                )
            parts.append(rows)
            devices.append(saved["device"])
            engines.append(saved["engine"])
            continue
        sub = episodes[start:stop]
        desc = f"test episodes {start + 1}-{stop} of {len(episodes)}"
        out = _evaluate(backbone, group, dataset, sub, cfg, runtime, engine, start, desc)
        atomic_write_text(block, out.rows.to_csv(index=False))
        device = out.meta["device"]
        atomic_write_json(record, {"made_with": asked, "device": device, "engine": engine})
        parts.append(out.rows)
        devices.append(device)
        engines.append(engine)
    if not parts:  # no episodes
        return _evaluate(backbone, group, dataset, episodes, cfg, runtime, engine)
    blocks = pd.concat(parts, ignore_index=True)  # block-major: strategy-major, as one call
    rows = pd.concat([blocks[blocks["strategy"] == n] for n in group], ignore_index=True)
    device, engines_used = (", ".join(dict.fromkeys(v)) for v in (devices, engines))
    return Evaluation(rows, _meta(engines_used, device, runtime, episodes, dataset, cfg, group))
