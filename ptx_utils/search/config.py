"""The settings of one scheme search (:class:`SearchConfig`) and its error type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ptx_utils.finetuning.scheme import DEFAULT_HEAD_LR, DEFAULT_LR_ZOO, PARAM_KINDS, check_lr_zoo

SEARCH_METHODS = ("evolution", "random")
#: The racing settings (left out of :meth:`SearchConfig.to_dict` while off and at their defaults).
RACING_KEYS = ("racing", "race_episodes", "race_z")


class SearchError(RuntimeError):
    """A search cannot start or resume as asked (settings that disagree with a saved state...)."""


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search (defaults: the paper's).

    Attributes:
        method: ``"evolution"`` or ``"random"`` (the control at an equal budget).
        population: new candidates evaluated per generation.
        generations: number of generations; the budget is ``population * generations``
            evaluated candidates (fewer if the space runs out).
        top_k: parents kept for breeding: the best ``top_k`` evaluated so far.
        mutation_prob: probability that mutation replaces a layer's rate by another of the zoo.
        crossover_fraction: share of a generation bred by crossover (the rest by mutation).
        lr_zoo: the rates a layer may take (0 = frozen).
        head_lr: the head's rate in every candidate.
        params: ``"all"`` or ``"bn"`` (see :class:`~ptx_utils.finetuning.scheme.Scheme`).
        min_trainable_layers, max_trainable_layers: a constraint on how many layers train
            (None: no upper bound).
        seed: seeds the search's draws and the fine-tuning replicas.
        racing: score a new candidate on ``race_episodes`` validation episodes at a time and
            stop when it cannot reach the current top-k (:mod:`ptx_utils.search.racing`).
        race_episodes: episodes per racing stage (the first stage and every later one).
        race_z: the racing bound's width in standard errors (1.64: one-sided 95 %).
    """

    method: str = "evolution"
    population: int = 20
    generations: int = 20
    top_k: int = 10
    mutation_prob: float = 0.1
    crossover_fraction: float = 0.5
    lr_zoo: tuple[float, ...] = DEFAULT_LR_ZOO
    head_lr: float = DEFAULT_HEAD_LR
    params: str = "all"
    min_trainable_layers: int = 0
    max_trainable_layers: int | None = None
    seed: int = 0
    racing: bool = False
    race_episodes: int = 2
    race_z: float = 1.64

    def __post_init__(self) -> None:
        zoo = tuple(float(x) for x in self.lr_zoo)
        object.__setattr__(self, "lr_zoo", zoo)
        object.__setattr__(self, "head_lr", float(self.head_lr))
        problems = []
        if self.method not in SEARCH_METHODS:
            problems.append(f"method must be one of {SEARCH_METHODS}, got {self.method!r}")
        if self.population < 1 or self.generations < 0 or self.top_k < 1:
            problems.append(
                "need population >= 1, generations >= 0 and top_k >= 1, got "
                f"{self.population}, {self.generations}, {self.top_k}"
            )
        if not 0 <= self.mutation_prob <= 1 or not 0 <= self.crossover_fraction <= 1:
            problems.append("mutation_prob and crossover_fraction must lie in [0, 1]")
        try:
            check_lr_zoo(zoo, what="lr_zoo")
        except ValueError as exc:
            problems.append(str(exc))
        if self.params not in PARAM_KINDS:
            problems.append(f"params must be one of {PARAM_KINDS}, got {self.params!r}")
        low, high = self.min_trainable_layers, self.max_trainable_layers
        if low < 0 or (high is not None and high < low):
            problems.append(
                f"need 0 <= min_trainable_layers <= max_trainable_layers, got {low}, {high}"
            )
        if self.race_episodes < 1 or self.race_z < 0:
            problems.append(
                f"need race_episodes >= 1 and race_z >= 0, got {self.race_episodes}, {self.race_z}"
            )
        if problems:
            raise ValueError("invalid SearchConfig: " + "; ".join(problems))

    @property
    def budget(self) -> int:
        """Candidates the search evaluates if the space does not run out first."""
        return self.population * self.generations

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` inverts it."""
        out = asdict(self)
        out["lr_zoo"] = list(self.lr_zoo)
        if not self.racing:  # states written before racing existed read back unchanged
            for key in RACING_KEYS:
                if out[key] == getattr(SearchConfig, key):
                    del out[key]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown search setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values = dict(data)
        if "lr_zoo" in values:
            values["lr_zoo"] = tuple(values["lr_zoo"])
        return cls(**values)
