"""The search's fitness: mean accuracy after fine-tuning on fixed validation episodes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np

from ptx_utils.core.runtime import Runtime
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.finetuning.replicas import place_episodes, replica_accuracies, replica_seed
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.finetuning.strategy import Strategy
from ptx_utils.models import Backbone
from ptx_utils.models.checkpoint import state_digest


class FitnessFn(Protocol):
    """Accuracy of each scheme on each fixed validation episode."""

    def __call__(self, schemes: Sequence[Scheme], desc: str = ...) -> np.ndarray:
        """float64 (S, E): query accuracy of scheme s on episode e, NaN where it diverged."""
        ...


def fitness_of(accuracies: np.ndarray) -> np.ndarray:
    """Fitness per row of an accuracy matrix (S, E): the mean with NaN (diverged) scored 0."""
    return np.nan_to_num(np.asarray(accuracies, dtype=np.float64), nan=0.0).mean(axis=1)


class EpisodeFitness:
    """Fine-tune schemes on fixed validation episodes and score them: the search's fitness.

    One call fine-tunes every (scheme, episode) replica with one call of the batched engine
    (``engine="sequential"``: the reference loop, one replica at a time — the naive baseline
    of the search benchmark). Replica (scheme, episode i) is seeded with
    :func:`~ptx_utils.finetuning.replicas.replica_seed` ``(runtime.seed, i)``; ``runtime``
    (None: ``Runtime()``) also gives the device, chunk size and progress bars. ``base`` is the
    strategy whose scheme the search varies (each candidate scheme runs as
    ``base.with_scheme(scheme)``); None: the strategy of the scheme alone.
    """

    def __init__(
        self,
        backbone: Backbone,
        dataset: FewShotDataset,
        episodes: Episodes,
        finetune: FinetuneConfig | None = None,
        runtime: Runtime | None = None,
        engine: str = "batched",
        base: Strategy | None = None,
    ) -> None:
        if len(episodes) == 0 or episodes.n_query < 1:
            raise ValueError(
                "the search needs validation episodes with query images; sample at least one "
                "episode with n_query >= 1"
            )
        self.runtime = Runtime() if runtime is None else runtime
        self.finetune = FinetuneConfig() if finetune is None else finetune
        self.engine = engine
        self.base = base
        self.layer_names = tuple(backbone.layer_names())
        self.n_way = episodes.n_way
        self.n_episodes = len(episodes)
        self.model, self.tensors = place_episodes(backbone, dataset, episodes, self.runtime.device)
        self._identity = {
            "layer_names": list(self.layer_names),
            "backbone_digest": state_digest(backbone),
            "episodes_digest": episodes.digest(),
            "dataset": f"{dataset.name}/{dataset.split}",
            "dataset_fingerprint": episodes.dataset_fingerprint,
            "n_way": episodes.n_way,
            "k_shot": episodes.k_shot,
            "n_query": episodes.n_query,
            "n_episodes": len(episodes),
            "finetune": asdict(self.finetune),
        }
        self.precision = self.runtime.torch_precision()
        if self.precision != "fp32":  # only then, so the identity of earlier searches is unchanged
            self._identity["precision"] = self.precision
        if base is not None:  # only then, so the identity of earlier searches is unchanged
            self._identity["base_strategy"] = {
                k: v for k, v in base.to_dict().items() if k not in ("scheme", "name")
            }

    def identity(self) -> dict[str, Any]:
        """What the fitness depends on (backbone weights, episodes, protocol), JSON-ready."""
        return dict(self._identity)

    def __call__(
        self,
        schemes: Sequence[Scheme | Strategy],
        desc: str = "fitness",
        episodes: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Accuracies float64 (S, E) of ``schemes`` (schemes or strategies) on the validation
        episodes (only those listed in ``episodes``, if given), NaN where a replica diverged."""
        index = list(range(self.n_episodes)) if episodes is None else list(episodes)
        if self.base is not None:
            schemes = [self.base.with_scheme(s) if isinstance(s, Scheme) else s for s in schemes]
        accuracy, _ = replica_accuracies(
            self.model,
            [s for s in schemes for _ in index],
            [i for _ in schemes for i in index],
            [replica_seed(self.runtime.seed, i) for _ in schemes for i in index],
            self.tensors,
            self.n_way,
            self.finetune,
            engine=self.engine,
            chunk_size=self.runtime.chunk_size,
            progress=self.runtime.progress,
            desc=desc,
            precision=self.precision,
            executor=self.runtime.where(),
        )
        return accuracy.reshape(len(schemes), len(index))
