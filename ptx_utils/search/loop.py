"""The public verbs: :func:`evolve` (any fitness) and :func:`search` (fine-tuning fitness).

Generation 0 is random; later generations breed from the best ``top_k`` evaluated so far
(evolution) or draw at random again (random search), never re-evaluating a scheme. With
``out_dir`` the state is saved after every generation, each fitness call of the generation in
progress as it ends (:mod:`.stages`), and a restarted search resumes where it stopped. The
algorithm, determinism and resume are described in ``docs/search.md``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ptx_utils.core.runtime import Runtime
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.finetuning.strategy import Strategy
from ptx_utils.models import Backbone
from ptx_utils.search.config import SearchConfig, SearchError
from ptx_utils.search.fitness import EpisodeFitness, FitnessFn, fitness_of
from ptx_utils.search.operators import diversity, propose
from ptx_utils.search.racing import race
from ptx_utils.search.result import (
    CURVE_COLUMNS,
    STATE_FILE,
    Callback,
    Candidate,
    GenerationReport,
    SearchResult,
)
from ptx_utils.search.space import SearchSpace
from ptx_utils.search.stages import StageLog, drop_log


def _differences(saved: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    return [
        f"{key}={saved.get(key)!r} there, {asked.get(key)!r} now"
        for key in sorted(set(saved) | set(asked))
        if saved.get(key) != asked.get(key)
    ]


def _resume(
    out_dir: Path, config: SearchConfig, layer_names: tuple[str, ...], identity: dict[str, Any]
) -> SearchResult:
    """The saved search in ``out_dir`` if it was made with the same settings, else an error.

    Only ``generations`` may differ: a finished search can be extended by asking for more.
    """
    saved = SearchResult.load(out_dir)
    differ = _differences(
        {**saved.config.to_dict(), "generations": None},
        {**config.to_dict(), "generations": None},
    )
    differ += _differences(saved.identity, identity)
    if differ:
        raise SearchError(
            f"{out_dir} holds a search made with other settings ({'; '.join(differ)}); resume "
            "it with the same settings, or give a new out_dir for this search (nothing there "
            "is overwritten)"
        )
    saved.config = config
    return saved


def evolve(
    fitness: FitnessFn,
    layer_names: Sequence[str],
    config: SearchConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    identity: Mapping[str, Any] | None = None,
    progress: bool = True,
    callback: Callback | None = None,
) -> SearchResult:
    """Run (or resume) a search with any fitness function.

    Args:
        fitness: scores a list of schemes on the validation episodes, (S, E) accuracies.
        layer_names: the backbone's layers (one rate each).
        config: the search settings (None: the paper's defaults).
        out_dir: where to write the state after every generation (None: keep it in memory).
        resume: if ``out_dir`` holds a state, continue it (it must have been made with the same
            settings); False refuses to touch an existing state.
        identity: what the fitness depends on; stored and checked on resume.
        progress: print a one-line summary per generation (the fitness shows the bars).
        callback: called after each generation with a :class:`GenerationReport`.

    Returns:
        The :class:`SearchResult`; its ``best`` is the fittest scheme evaluated.

    Example:
        >>> import numpy as np
        >>> def fitness(schemes, desc=""):  # one episode: accuracy = share of trained layers
        ...     return np.array([[s.n_trainable_layers / 2] for s in schemes])
        >>> config = SearchConfig(population=2, generations=1, lr_zoo=(0.0, 0.1))
        >>> result = evolve(fitness, ["conv1", "conv2"], config, progress=False)
        >>> len(result.candidates), result.generations_done
        (2, 1)
    """
    config = SearchConfig() if config is None else config
    layer_names = tuple(layer_names)
    identity = {"layer_names": list(layer_names), **dict(identity or {})}
    space = SearchSpace.of(len(layer_names), config)
    state_path = None if out_dir is None else Path(out_dir) / STATE_FILE
    if state_path is not None and state_path.exists():
        if not resume:
            raise SearchError(
                f"{state_path.parent} already holds a search; pass resume=True to continue it, "
                "or give a new out_dir (nothing is overwritten)"
            )
        result = _resume(state_path.parent, config, layer_names, identity)
    else:
        result = SearchResult(
            config,
            layer_names,
            out_dir=None if out_dir is None else Path(out_dir),
            identity=identity,
        )
        if result.out_dir is not None:
            result.out_dir.mkdir(parents=True, exist_ok=True)
            drop_log(result.out_dir)  # a log without its state belongs to no search here
            result.save()
    if result.complete and progress and result.candidates:
        tqdm.write(f"already complete: {result.summary()}")

    this = {"config": {**config.to_dict(), "generations": None}, "identity": identity}  # logs' tag
    while not result.complete:
        g = result.generations_done
        proposals = propose(space, config, result.candidates, g)
        if not proposals:
            result.exhausted = True
            result.save()
            if progress:
                tqdm.write(f"search space exhausted: all {space.size()} schemes evaluated")
            break
        schemes = [space.scheme(lrs) for lrs, _ in proposals]
        start = time.perf_counter()
        desc = f"generation {g + 1}/{config.generations}"
        log = None if result.out_dir is None else StageLog(fitness, result.out_dir, g, this)
        scorer = fitness if log is None else log
        if config.racing:
            rows, raced = race(scorer, schemes, result.candidates, config, desc)
        else:
            accuracies = np.asarray(scorer(schemes, desc=desc), dtype=np.float64)
            if accuracies.ndim != 2 or accuracies.shape[0] != len(schemes):
                raise SearchError(
                    f"the fitness returned an array of shape {accuracies.shape}; expected "
                    f"({len(schemes)}, n_episodes)"
                )
            rows, raced = list(accuracies), np.zeros(len(schemes), dtype=bool)
        seconds = time.perf_counter() - start + (0.0 if log is None else log.replayed_seconds)
        scores = np.array([fitness_of(row[None])[0] for row in rows])
        first = len(result.candidates)
        new = tuple(
            Candidate(
                index=first + i,
                generation=g,
                origin=origin,
                scheme=scheme,
                fitness=float(scores[i]),
                accuracies=tuple(float(a) for a in rows[i]),
                seconds=seconds / len(schemes),
                raced_out=bool(raced[i]),
            )
            for i, ((_, origin), scheme) in enumerate(zip(proposals, schemes, strict=True))
        )
        result.candidates.extend(new)
        best = result.best
        row = {
            "generation": g,
            "n_new": len(new),
            "n_evaluated": len(result.candidates),
            "best_fitness": best.fitness,
            "best_index": best.index,
            "mean_fitness": float(scores.mean()),
            "diversity": diversity([lrs for lrs, _ in proposals]),
            "seconds": seconds,
        }
        frame = pd.DataFrame([row], columns=list(CURVE_COLUMNS))
        result.curve = frame if result.curve.empty else pd.concat([result.curve, frame])
        result.curve = result.curve.reset_index(drop=True)
        result.elapsed_seconds += seconds
        result.save()
        if log is not None:
            log.clear()
        report = GenerationReport(
            generation=g,
            generations=config.generations,
            new=new,
            best=best,
            mean_fitness=row["mean_fitness"],
            diversity=row["diversity"],
            n_evaluated=len(result.candidates),
            seconds=seconds,
            result=result,
        )
        if progress:
            tqdm.write(report.line())
        if callback is not None:
            callback(report)
    return result


def search(
    backbone: Backbone,
    dataset: FewShotDataset,
    episodes: Episodes,
    config: SearchConfig | None = None,
    finetune: FinetuneConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    runtime: Runtime | None = None,
    callback: Callback | None = None,
    base: Strategy | None = None,
) -> SearchResult:
    """Search for the best scheme of ``backbone`` on validation ``episodes`` of ``dataset``.

    The fitness is :class:`~ptx_utils.search.fitness.EpisodeFitness` (batched engine, replica
    seeds from ``config.seed``). ``runtime`` (None: ``Runtime()``) gives the device, chunk size
    and progress (one bar per generation and a one-line summary after it); its ``seed`` is not
    used. ``base``: the strategy whose per-layer scheme is searched (its classifier, BN
    statistics... stay fixed); None: the scheme alone. See :func:`evolve` for the rest.

    Example:
        >>> import torch
        >>> from ptx_utils.data import load_dataset
        >>> from ptx_utils.data.episodes import sample_episodes
        >>> from ptx_utils.models import create_backbone
        >>> data = load_dataset("synthetic", "test", image_size=16, images_per_class=30)
        >>> episodes = sample_episodes(data, n_way=5, k_shot=1, n_query=3, n_episodes=1)
        >>> _ = torch.manual_seed(0)
        >>> backbone = create_backbone("conv4", in_channels=3, image_size=16)
        >>> config = SearchConfig(population=2, generations=1)
        >>> result = search(backbone, data, episodes, config, FinetuneConfig(passes=1),
        ...                 runtime=Runtime(device="cpu", progress=False))
        >>> len(result.candidates), result.best.fitness <= 1.0
        (2, True)
    """
    config = SearchConfig() if config is None else config
    runtime = Runtime() if runtime is None else runtime
    fitness = EpisodeFitness(
        backbone, dataset, episodes, finetune, runtime=replace(runtime, seed=config.seed),
        base=base,
    )  # fmt: skip
    return evolve(
        fitness,
        backbone.layer_names(),
        config,
        out_dir=out_dir,
        resume=resume,
        identity=fitness.identity(),
        progress=runtime.progress,
        callback=callback,
    )
