"""Notebook 02's step: the searches (evolution and random at an equal budget), their summary."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ptx_utils.core.io import write_or_match
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import EpisodeSetting
from ptx_utils.finetuning import FinetuneConfig
from ptx_utils.models import Backbone
from ptx_utils.search import SearchConfig, SearchResult, search
from ptx_utils.steps.common import require, val_seed

#: Columns of ``search_summary.csv`` (:func:`search_summary`).
SEARCH_SUMMARY_COLUMNS = (
    "n_way",
    "k_shot",
    "method",
    "best_scheme",
    "best_lrs",
    "n_trainable",
    "best_fitness",
    "n_evaluated",
    "generations",
    "seconds",
)


def search_dir(run_dir: str | Path, n_way: int, k_shot: int, method: str) -> Path:
    """Where the ``method`` search of the ``n_way``-way ``k_shot``-shot protocol lives."""
    return Path(run_dir) / "search" / f"{n_way}way_{k_shot}shot_{method}"


def search_config(settings: Mapping[str, Any], method: str, seed: int) -> SearchConfig:
    """A :class:`SearchConfig` from a preset's ``search`` dict, for ``method`` and ``seed``."""
    return SearchConfig.from_dict({**settings, "method": method, "seed": seed})


def run_searches(
    backbone: Backbone,
    dataset: FewShotDataset,
    setting: EpisodeSetting,
    settings: Mapping[str, Any],
    cfg: FinetuneConfig,
    run_dir: str | Path,
    methods: Sequence[str] = ("evolution", "random"),
    runtime: Runtime | None = None,
    callback: Callable[[str], Any] | None = None,
) -> dict[str, SearchResult]:
    """Run (or resume) one search per method on the same validation episodes.

    Args:
        setting: the validation episodes, drawn with :func:`~ptx_utils.steps.common.val_seed`.
        settings: a preset's ``search`` dict (keys of :class:`SearchConfig`).
        runtime: seed (of the searches and their episodes), device, progress.
        callback: ``method -> search callback`` (e.g. a ``plots.LiveSearchPlot`` factory).

    Returns:
        method -> finished search, each written under :func:`search_dir`.
    """
    runtime = Runtime() if runtime is None else runtime
    episodes = setting.sample(dataset, seed=val_seed(runtime.seed))
    results = {}
    for method in methods:
        results[method] = search(
            backbone,
            dataset,
            episodes,
            config=search_config(settings, method, runtime.seed),
            finetune=cfg,
            out_dir=search_dir(run_dir, setting.n_way, setting.k_shot, method),
            runtime=runtime,
            callback=callback(method) if callback else None,
        )
    return results


def search_summary(results: Mapping[tuple[int, int, str], SearchResult]) -> pd.DataFrame:
    """One row per search, ``(n_way, k_shot, method) -> result``; columns
    :data:`SEARCH_SUMMARY_COLUMNS`."""
    rows = []
    for (n_way, k_shot, method), result in results.items():
        best = result.best
        rows.append(
            {
                "n_way": n_way,
                "k_shot": k_shot,
                "method": method,
                "best_scheme": str(best.scheme),
                "best_lrs": " ".join(f"{lr:g}" for lr in best.scheme.lrs),
                "n_trainable": best.scheme.n_trainable_layers,
                "best_fitness": best.fitness,
                "n_evaluated": len(result.candidates),
                "generations": result.generations_done,
                "seconds": round(result.elapsed_seconds, 2),
            }
        )
    return pd.DataFrame(rows, columns=list(SEARCH_SUMMARY_COLUMNS))


def write_search_summary(
    run_dir: str | Path, results: Mapping[tuple[int, int, str], SearchResult]
) -> pd.DataFrame:
    """:func:`search_summary` written to ``run_dir/results/search_summary.csv`` (atomically), or
    found already written the same (it is derived from the searches' own state, so a re-run
    with identical settings keeps the file); one written from other searches is refused."""
    table = search_summary(results)
    write_or_match(
        {Path(run_dir) / "results" / "search_summary.csv": table.to_csv(index=False)},
        "search summary",
        "use a new run directory for other searches",
    )
    return table


def load_search(run_dir: str | Path, n_way: int, k_shot: int, method: str) -> SearchResult:
    """The search notebook 02 wrote for this protocol and method."""
    out = search_dir(run_dir, n_way, k_shot, method)
    require(run_dir, out.relative_to(run_dir) / "state.json", "02_search")
    return SearchResult.load(out)
