"""Notebook 03's step: the searched scheme beside the fixed strategies, on identical episodes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from ptx_utils.core.io import atomic_write_text, refuse_existing
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import EpisodeSetting
from ptx_utils.evaluation import Evaluation, evaluate_strategies, paired_table, write_results
from ptx_utils.finetuning import (
    FinetuneConfig,
    Scheme,
    Strategy,
    as_strategy,
    bn_affine,
    full_finetune,
    last_k,
    linear_probe,
)
from ptx_utils.models import Backbone


def fixed_strategies(
    n_layers: int, head_lr: float, lr: float = 0.01, last: int = 1
) -> dict[str, Strategy]:
    """The fixed strategies every comparison lists: linear probe, full fine-tune at ``lr``,
    last-``last`` at ``lr`` and BN-affine at ``lr``."""
    return {
        "linear probe": linear_probe(n_layers, head_lr),
        "full fine-tune": full_finetune(n_layers, lr, head_lr),
        f"last-{last}": last_k(n_layers, last, lr, head_lr),
        "BN-affine": bn_affine(n_layers, lr, head_lr),
    }


def transfer_strategies(
    searched: Strategy | Scheme, head_lr: float | None = None
) -> dict[str, Strategy]:
    """``searched`` first, then :func:`fixed_strategies` with the searched scheme's head lr."""
    searched = as_strategy(searched)
    head = searched.head_lr if head_lr is None else head_lr
    return {"searched": searched, **fixed_strategies(len(searched.lrs), head)}


def evaluate_shots(
    backbone: Backbone,
    strategies: Mapping[int, Mapping[str, Strategy | Scheme]],
    dataset: FewShotDataset,
    setting: EpisodeSetting,
    cfg: FinetuneConfig,
    runtime: Runtime | None = None,
    checkpoint_dir: str | Path | None = None,
) -> Evaluation:
    """:func:`~ptx_utils.evaluation.evaluate_strategies` for each ``k_shot -> strategies``.

    The episodes of shot k are ``setting.with_shot(k).sample(dataset, seed)`` — those notebook 01
    lists. With ``checkpoint_dir`` every (shot, strategy) is saved there when done and an
    interrupted call resumes. Returns the rows of all shots in one :class:`Evaluation`; its
    ``meta["evaluations"]`` keeps each evaluation's metadata by shot.
    """
    runtime = Runtime() if runtime is None else runtime
    done, meta = [], {}
    for k_shot, named in strategies.items():
        episodes = setting.with_shot(k_shot).sample(dataset, seed=runtime.seed)
        evaluation = evaluate_strategies(
            backbone, named, dataset, episodes, cfg, runtime=runtime,
            checkpoint_dir=checkpoint_dir,
        )  # fmt: skip
        meta[str(k_shot)] = evaluation.meta
        done.append(evaluation)
    return Evaluation.concat(done, evaluations=meta, finetune_config=asdict(cfg))


def searched_differences(rows: pd.DataFrame, searched: str = "searched") -> pd.DataFrame:
    """``searched`` minus every other strategy, episode by episode (per setting).

    Columns as :func:`~ptx_utils.evaluation.paired_table` with ``strategy`` = ``searched`` and
    ``reference`` = the other strategy: ``wins`` counts episodes the searched scheme won. Rows:
    per (n_way, k_shot), the other strategies in the order they appear in ``rows``.
    """
    others = [s for s in dict.fromkeys(rows["strategy"]) if s != searched]
    if searched not in set(rows["strategy"]) or not others:
        raise ValueError(
            f"rows need the strategy {searched!r} and at least one other; "
            f"got {sorted(set(rows['strategy']))}"
        )
    tables = [paired_table(rows, ref) for ref in others]
    differences = pd.concat([t[t["strategy"] == searched] for t in tables], ignore_index=True)
    # One block per setting, the references in the order of the strategies (as the summary).
    return differences.sort_values(["n_way", "k_shot"], kind="stable", ignore_index=True)


def write_transfer(run_dir: str | Path, evaluation: Evaluation) -> dict[str, Path]:
    """Write notebook 03's results under ``run_dir/results/``: ``transfer_*`` from
    :func:`~ptx_utils.evaluation.write_results` (paired against the linear probe) and
    ``transfer_vs_searched.csv`` (:func:`searched_differences`). Nothing existing is replaced."""
    target = Path(run_dir) / "results" / "transfer_vs_searched.csv"
    refuse_existing([target], "transfer results", "use a new run directory")
    differences = searched_differences(evaluation.rows)
    paths = write_results(run_dir, evaluation, "transfer", reference="linear probe")
    paths["vs_searched"] = atomic_write_text(target, differences.to_csv(index=False))
    return paths
