"""Search for the per-layer fine-tuning scheme: evolution (P-Transfer stage two) and random search.

The search space is every :class:`~ptx_utils.finetuning.scheme.Scheme` whose per-layer rates come from an
lr zoo (``len(zoo) ** n_layers`` of them, optionally only those with a bounded number of trainable
layers). The fitness of a scheme is the mean query accuracy after fine-tuning on a set of
validation episodes fixed for the whole search, an episode on which the replica diverged scoring 0.
:class:`EpisodeFitness` computes the fitness of a whole generation (every new candidate x every
episode) with one call of the batched engine; replica (candidate, episode i) uses the seed
:func:`~ptx_utils.evaluation.harness.replica_seed` ``(seed, i)`` whatever the candidate, so candidates are
compared on identical head initialisations and mini-batch orders.

The evolution follows the paper (and the single-path one-shot NAS search it builds on):
generation 0 is a random population; every later generation keeps the ``top_k`` candidates
evaluated so far as parents and breeds ``population`` new ones, a ``crossover_fraction`` of them
by uniform crossover of two parents and the rest by mutation (each layer's rate replaced, with
probability ``mutation_prob``, by another rate of the zoo), filling up with random schemes when
breeding finds too few new ones. Random search draws every generation at random; with the same
seed its generation 0 is the evolution's, and both evaluate ``population`` new schemes per
generation, so equal settings mean an equal budget of evaluated candidates. A scheme is never
evaluated twice: only schemes not evaluated before are proposed. When the whole space has been
evaluated, the search stops early and says so.

Every random draw of generation g comes from ``numpy.random.default_rng([seed, g])`` and the
history so far, so the search is a pure function of its settings and fitness. With ``out_dir``
the state (settings, every evaluated candidate, the per-generation curve) is written atomically
after each generation, together with ``history.csv``, ``curve.csv`` and ``best_scheme.json``; a
search killed at any point and started again with the same settings resumes after the last
finished generation and ends with exactly the history of an uninterrupted run.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ptx_utils.models.checkpoint import state_digest
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import Episodes
from ptx_utils.evaluation.harness import place_episodes, replica_accuracies, replica_seed
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.models import Backbone
from ptx_utils.core.io import atomic_write_json, atomic_write_text
from ptx_utils.core.provenance import provenance
from ptx_utils.finetuning.scheme import DEFAULT_HEAD_LR, DEFAULT_LR_ZOO, PARAM_KINDS, Scheme

SEARCH_METHODS = ("evolution", "random")
ORIGINS = ("random", "mutation", "crossover")
STATE_FORMAT = 1
STATE_FILE = "state.json"
#: Spaces up to this size are enumerated to draw new random schemes without replacement.
ENUMERATE_LIMIT = 50_000
#: Breeding attempts per wanted candidate before the rest of a generation is drawn at random.
TRIES_PER_CANDIDATE = 100
#: Columns of :meth:`SearchResult.history` (and ``history.csv``).
HISTORY_COLUMNS = (
    "index",
    "generation",
    "origin",
    "scheme",
    "lrs",
    "n_trainable",
    "fitness",
    "n_diverged",
    "diverged",
    "rank",
    "seconds",
)
#: Columns of :attr:`SearchResult.curve` (and ``curve.csv``), one row per generation.
CURVE_COLUMNS = (
    "generation",
    "n_new",
    "n_evaluated",
    "best_fitness",
    "best_index",
    "mean_fitness",
    "diversity",
    "seconds",
)


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
        if not zoo or len(set(zoo)) != len(zoo) or any(x < 0 or x != x for x in zoo):
            problems.append(f"lr_zoo must hold distinct rates >= 0, got {self.lr_zoo}")
        if self.params not in PARAM_KINDS:
            problems.append(f"params must be one of {PARAM_KINDS}, got {self.params!r}")
        low, high = self.min_trainable_layers, self.max_trainable_layers
        if low < 0 or (high is not None and high < low):
            problems.append(
                f"need 0 <= min_trainable_layers <= max_trainable_layers, got {low}, {high}"
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


# -- the space ----------------------------------------------------------------------------------

Rates = tuple[float, ...]


@dataclass(frozen=True)
class SearchSpace:
    """The schemes a search may propose for a backbone of ``n_layers`` layers."""

    n_layers: int
    zoo: Rates
    head_lr: float = DEFAULT_HEAD_LR
    params: str = "all"
    min_trainable: int = 0
    max_trainable: int | None = None

    @classmethod
    def of(cls, n_layers: int, config: SearchConfig) -> SearchSpace:
        space = cls(
            n_layers,
            config.lr_zoo,
            config.head_lr,
            config.params,
            config.min_trainable_layers,
            config.max_trainable_layers,
        )
        if space.size() == 0:
            raise ValueError(
                f"no scheme of {n_layers} layers with rates from {config.lr_zoo} has between "
                f"{config.min_trainable_layers} and {config.max_trainable_layers} trainable "
                "layers; relax the constraint"
            )
        return space

    @property
    def _nonzero(self) -> Rates:
        return tuple(x for x in self.zoo if x > 0)

    def _counts(self) -> list[int]:
        """Admissible numbers of trainable layers."""
        high = self.n_layers if self.max_trainable is None else self.max_trainable
        counts = range(self.min_trainable, min(high, self.n_layers) + 1)
        if 0.0 not in self.zoo:
            return [t for t in counts if t == self.n_layers]
        return [t for t in counts if t == 0 or self._nonzero]

    def _weight(self, t: int) -> int:
        """Schemes with exactly ``t`` trainable layers."""
        return math.comb(self.n_layers, t) * len(self._nonzero) ** t

    def size(self) -> int:
        return sum(self._weight(t) for t in self._counts())

    def feasible(self, lrs: Rates) -> bool:
        n_trainable = sum(x > 0 for x in lrs)
        return (
            len(lrs) == self.n_layers
            and all(x in self.zoo for x in lrs)
            and n_trainable >= self.min_trainable
            and (self.max_trainable is None or n_trainable <= self.max_trainable)
        )

    def scheme(self, lrs: Rates) -> Scheme:
        return Scheme(lrs, self.head_lr, self.params)

    def sample(self, rng: np.random.Generator) -> Rates:
        """One scheme drawn uniformly from the feasible ones."""
        counts = self._counts()
        weights = np.array([self._weight(t) for t in counts], dtype=np.float64)
        t = counts[int(rng.choice(len(counts), p=weights / weights.sum()))]
        lrs = [0.0] * self.n_layers
        nonzero = self._nonzero
        for i in rng.choice(self.n_layers, size=t, replace=False):
            lrs[int(i)] = nonzero[int(rng.integers(len(nonzero)))]
        return tuple(lrs)

    def enumerate(self) -> Iterator[Rates]:
        """Every feasible scheme, in lexicographic order of zoo positions."""
        for lrs in itertools.product(self.zoo, repeat=self.n_layers):
            if self.feasible(lrs):
                yield lrs


# -- candidates, proposals ----------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One evaluated scheme.

    Attributes:
        index: position in evaluation order (0, 1, ...).
        generation: the generation that proposed it.
        origin: ``"random"``, ``"mutation"`` or ``"crossover"``.
        scheme: the scheme.
        fitness: mean validation accuracy, episodes where it diverged scoring 0.
        accuracies: per validation episode, NaN where it diverged.
        seconds: its share of its generation's fitness-evaluation time (not compared: two
            candidates are equal when everything but their timing is).
    """

    index: int
    generation: int
    origin: str
    scheme: Scheme
    fitness: float
    accuracies: tuple[float, ...]
    seconds: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {self.origin!r}")

    @property
    def n_diverged(self) -> int:
        return sum(a != a for a in self.accuracies)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "generation": self.generation,
            "origin": self.origin,
            "scheme": self.scheme.to_dict(),
            "fitness": self.fitness,
            "accuracies": [None if a != a else a for a in self.accuracies],
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(
            index=int(data["index"]),
            generation=int(data["generation"]),
            origin=str(data["origin"]),
            scheme=Scheme.from_dict(data["scheme"]),
            fitness=float(data["fitness"]),
            accuracies=tuple(math.nan if a is None else float(a) for a in data["accuracies"]),
            seconds=float(data["seconds"]),
        )


def fitness_of(accuracies: np.ndarray) -> np.ndarray:
    """Fitness per row of an accuracy matrix (S, E): the mean with NaN (diverged) scored 0."""
    return np.nan_to_num(np.asarray(accuracies, dtype=np.float64), nan=0.0).mean(axis=1)


def ranked(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: by fitness, ties broken by evaluation order."""
    return sorted(candidates, key=lambda c: (-c.fitness, c.index))


def diversity(schemes: Sequence[Rates]) -> float:
    """Mean fraction of layers on which two schemes of the list differ (0 for fewer than two)."""
    if len(schemes) < 2:
        return 0.0
    a = np.array(schemes, dtype=np.float64)
    differ = (a[:, None, :] != a[None, :, :]).mean(-1)
    n = len(schemes)
    return float(differ.sum() / (n * (n - 1)))


def _random_new(
    space: SearchSpace, rng: np.random.Generator, n: int, taken: set[Rates]
) -> list[Rates]:
    """Up to ``n`` distinct feasible schemes not in ``taken``, uniformly at random."""
    if n <= 0:
        return []
    if space.size() <= ENUMERATE_LIMIT:
        pool = [lrs for lrs in space.enumerate() if lrs not in taken]
        picks = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        return [pool[int(i)] for i in picks]
    out: list[Rates] = []
    for _ in range(TRIES_PER_CANDIDATE * n):
        lrs = space.sample(rng)
        if lrs not in taken and lrs not in out:
            out.append(lrs)
            if len(out) == n:
                break
    return out


def _mutate(space: SearchSpace, rng: np.random.Generator, parent: Rates, prob: float) -> Rates:
    """Each layer's rate replaced with probability ``prob`` by another rate of the zoo."""
    child = list(parent)
    for i in range(space.n_layers):
        if rng.random() < prob:
            others = [x for x in space.zoo if x != parent[i]]
            if others:
                child[i] = others[int(rng.integers(len(others)))]
    return tuple(child)


def _crossover(rng: np.random.Generator, a: Rates, b: Rates) -> Rates:
    """Uniform crossover: each layer's rate from ``a`` or ``b`` with probability 1/2."""
    take_a = rng.random(len(a)) < 0.5
    return tuple(x if t else y for x, y, t in zip(a, b, take_a, strict=True))


def propose(
    space: SearchSpace,
    config: SearchConfig,
    evaluated: Sequence[Candidate],
    generation: int,
) -> list[tuple[Rates, str]]:
    """The new schemes of generation ``generation`` given the candidates evaluated before it.

    Returns:
        (rates, origin) pairs, at most ``config.population``, all feasible, distinct and never
        evaluated before; fewer only when the space has fewer new schemes left (none: exhausted).
    """
    rng = np.random.default_rng([config.seed, generation])
    taken = {c.scheme.lrs for c in evaluated}
    n = min(config.population, space.size() - len(taken))
    if n <= 0:
        return []
    out: list[tuple[Rates, str]] = []

    def add(lrs: Rates, origin: str) -> bool:
        if lrs in taken or not space.feasible(lrs):
            return False
        taken.add(lrs)
        out.append((lrs, origin))
        return True

    if config.method == "evolution" and evaluated:
        parents = [c.scheme.lrs for c in ranked(evaluated)[: config.top_k]]
        n_cross = round(n * config.crossover_fraction) if len(parents) >= 2 else 0
        made = 0
        for _ in range(TRIES_PER_CANDIDATE * n_cross):
            if made == n_cross:
                break
            i, j = rng.choice(len(parents), size=2, replace=False)
            made += add(_crossover(rng, parents[int(i)], parents[int(j)]), "crossover")
        target = n
        for _ in range(TRIES_PER_CANDIDATE * (target - len(out))):
            if len(out) == target:
                break
            parent = parents[int(rng.integers(len(parents)))]
            add(_mutate(space, rng, parent, config.mutation_prob), "mutation")
    for lrs in _random_new(space, rng, n - len(out), taken):
        add(lrs, "random")
    return out


# -- fitness ------------------------------------------------------------------------------------


class FitnessFn(Protocol):
    """Accuracy of each scheme on each fixed validation episode."""

    def __call__(self, schemes: Sequence[Scheme], desc: str = ...) -> np.ndarray:
        """float64 (S, E): query accuracy of scheme s on episode e, NaN where it diverged."""
        ...


class EpisodeFitness:
    """Fine-tune schemes on fixed validation episodes and score them: the search's fitness.

    One call fine-tunes every (scheme, episode) replica with one call of the batched engine
    (``engine="sequential"``: the reference loop, one replica at a time — the naive baseline
    of the search benchmark). Replica (scheme, episode i) is seeded with
    :func:`~ptx_utils.evaluation.harness.replica_seed` ``(seed, i)``.
    """

    def __init__(
        self,
        backbone: Backbone,
        dataset: FewShotDataset,
        episodes: Episodes,
        finetune: FinetuneConfig | None = None,
        seed: int = 0,
        device: str | torch.device = "auto",
        engine: str = "batched",
        chunk_size: int | None = None,
        progress: bool = True,
    ) -> None:
        if len(episodes) == 0 or episodes.n_query < 1:
            raise ValueError(
                "the search needs validation episodes with query images; sample at least one "
                "episode with n_query >= 1"
            )
        self.finetune = FinetuneConfig() if finetune is None else finetune
        self.seed = int(seed)
        self.engine = engine
        self.chunk_size = chunk_size
        self.progress = progress
        self.layer_names = tuple(backbone.layer_names())
        self.n_way = episodes.n_way
        self.n_episodes = len(episodes)
        self.model, self.tensors = place_episodes(backbone, dataset, episodes, device)
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

    def identity(self) -> dict[str, Any]:
        """What the fitness depends on (backbone weights, episodes, protocol), JSON-ready."""
        return dict(self._identity)

    def __call__(
        self,
        schemes: Sequence[Scheme],
        desc: str = "fitness",
        episodes: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Accuracies float64 (S, E) of ``schemes`` on the validation episodes (only those
        listed in ``episodes``, if given), NaN where a replica diverged."""
        index = list(range(self.n_episodes)) if episodes is None else list(episodes)
        accuracy, _ = replica_accuracies(
            self.model,
            [s for s in schemes for _ in index],
            [i for _ in schemes for i in index],
            [replica_seed(self.seed, i) for _ in schemes for i in index],
            self.tensors,
            self.n_way,
            self.finetune,
            engine=self.engine,
            chunk_size=self.chunk_size,
            progress=self.progress,
            desc=desc,
        )
        return accuracy.reshape(len(schemes), len(index))


# -- the search loop ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationReport:
    """What a callback gets after each generation (the state is already on disk)."""

    generation: int
    generations: int
    new: tuple[Candidate, ...]
    best: Candidate
    mean_fitness: float
    diversity: float
    n_evaluated: int
    seconds: float
    result: SearchResult

    def line(self) -> str:
        """The one-line summary the search prints."""
        return (
            f"generation {self.generation + 1}/{self.generations}: best {self.best.fitness:.4f} "
            f"({self.best.scheme}), mean {self.mean_fitness:.4f}, diversity "
            f"{self.diversity:.2f}, {len(self.new)} new, {self.n_evaluated} evaluated, "
            f"{self.seconds:.1f} s"
        )


Callback = Callable[[GenerationReport], None]


@dataclass
class SearchResult:
    """A finished (or, inside a callback, running) search.

    Attributes:
        config: the settings.
        layer_names: the backbone's layers, one rate each.
        candidates: every evaluated candidate, in evaluation order.
        curve: one row per generation (:data:`CURVE_COLUMNS`).
        exhausted: True if the search stopped because every scheme of the space was evaluated.
        out_dir: where the state and history are written (None: nowhere).
        elapsed_seconds: wall time spent in this and earlier (resumed) invocations.
        identity: what the fitness depends on (checked when resuming).
    """

    config: SearchConfig
    layer_names: tuple[str, ...]
    candidates: list[Candidate] = field(default_factory=list)
    curve: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CURVE_COLUMNS))
    exhausted: bool = False
    out_dir: Path | None = None
    elapsed_seconds: float = 0.0
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def generations_done(self) -> int:
        return len(self.curve)

    @property
    def complete(self) -> bool:
        return self.exhausted or self.generations_done >= self.config.generations

    @property
    def best(self) -> Candidate:
        if not self.candidates:
            raise SearchError("the search has not evaluated any candidate yet")
        return ranked(self.candidates)[0]

    def rank(self, scheme: Scheme) -> int | None:
        """1 + the number of evaluated candidates strictly fitter than ``scheme``'s evaluation
        (None if ``scheme`` was not evaluated); tied candidates share a rank."""
        found = [c for c in self.candidates if c.scheme == scheme]
        if not found:
            return None
        return 1 + sum(c.fitness > found[0].fitness for c in self.candidates)

    def history(self) -> pd.DataFrame:
        """Every evaluated candidate, one row each (:data:`HISTORY_COLUMNS`), evaluation order."""
        fitness = np.array([c.fitness for c in self.candidates], dtype=np.float64)
        ordered = np.sort(fitness)
        ranks = 1 + len(fitness) - np.searchsorted(ordered, fitness, side="right")
        return pd.DataFrame(
            [
                {
                    "index": c.index,
                    "generation": c.generation,
                    "origin": c.origin,
                    "scheme": str(c.scheme),
                    "lrs": json.dumps(list(c.scheme.lrs)),
                    "n_trainable": c.scheme.n_trainable_layers,
                    "fitness": c.fitness,
                    "n_diverged": c.n_diverged,
                    "diverged": c.n_diverged > 0,
                    "rank": int(rank),
                    "seconds": c.seconds,
                }
                for c, rank in zip(self.candidates, ranks, strict=True)
            ],
            columns=list(HISTORY_COLUMNS),
        )

    def best_so_far(self) -> pd.DataFrame:
        """Best fitness after each evaluated candidate: columns n_evaluated, best_fitness."""
        fitness = np.array([c.fitness for c in self.candidates], dtype=np.float64)
        return pd.DataFrame(
            {
                "n_evaluated": np.arange(1, len(fitness) + 1),
                "best_fitness": np.maximum.accumulate(fitness) if len(fitness) else fitness,
            }
        )

    def best_record(self) -> dict[str, Any]:
        """The best scheme with its fitness, rank and ties: what ``best_scheme.json`` holds."""
        best = self.best
        return {
            "scheme": best.scheme.to_dict(),
            "scheme_text": str(best.scheme),
            "fitness": best.fitness,
            "accuracies": [None if a != a else a for a in best.accuracies],
            "rank": 1,
            "n_tied": sum(c.fitness == best.fitness for c in self.candidates) - 1,
            "n_evaluated": len(self.candidates),
            "generation": best.generation,
            "index": best.index,
            "method": self.config.method,
            "seed": self.config.seed,
            "generations_done": self.generations_done,
            "exhausted": self.exhausted,
            "layer_names": list(self.layer_names),
        }

    def summary(self) -> str:
        if not self.candidates:
            return f"{self.config.method} search: nothing evaluated yet"
        best = self.best
        stop = " (space exhausted)" if self.exhausted else ""
        return (
            f"{self.config.method} search, {self.generations_done} generation(s){stop}: "
            f"{len(self.candidates)} schemes evaluated in {self.elapsed_seconds:.1f} s; best "
            f"{best.fitness:.4f} = {best.scheme} (generation {best.generation + 1})"
        )

    # -- persistence ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "identity": self.identity,
            "layer_names": list(self.layer_names),
            "exhausted": self.exhausted,
            "elapsed_seconds": self.elapsed_seconds,
            "candidates": [c.to_dict() for c in self.candidates],
            "curve": self.curve.to_dict(orient="records"),
        }

    def save(self) -> None:
        """Write the state, history, curve and best scheme into ``out_dir``, each atomically."""
        if self.out_dir is None:
            return
        out = self.out_dir
        atomic_write_text(out / "history.csv", self.history().to_csv(index=False))
        atomic_write_text(out / "curve.csv", self.curve.to_csv(index=False))
        if self.candidates:
            record = {**self.best_record(), "provenance": provenance(seed=self.config.seed)}
            atomic_write_json(out / "best_scheme.json", record)
        # The state goes last: a resume trusts it, and the other files are derived from it.
        atomic_write_json(out / STATE_FILE, self.state())

    @classmethod
    def load(cls, out_dir: str | Path) -> SearchResult:
        """Read the search written into ``out_dir`` (finished or not)."""
        path = Path(out_dir) / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise SearchError(f"no search state at {path}; run the search first") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise SearchError(f"cannot read the search state {path}: {exc}") from exc
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise SearchError(f"{path} is not a ptx-kit search state of format {STATE_FORMAT}")
        curve = pd.DataFrame(state["curve"], columns=list(CURVE_COLUMNS))
        return cls(
            config=SearchConfig.from_dict(state["config"]),
            layer_names=tuple(state["layer_names"]),
            candidates=[Candidate.from_dict(c) for c in state["candidates"]],
            curve=curve.astype({"generation": int, "n_new": int, "n_evaluated": int}),
            exhausted=bool(state["exhausted"]),
            out_dir=Path(out_dir),
            elapsed_seconds=float(state["elapsed_seconds"]),
            identity=dict(state["identity"]),
        )


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
            result.save()
    if result.complete and progress and result.candidates:
        tqdm.write(f"already complete: {result.summary()}")

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
        accuracies = np.asarray(
            fitness(schemes, desc=f"generation {g + 1}/{config.generations}"), dtype=np.float64
        )
        seconds = time.perf_counter() - start
        if accuracies.ndim != 2 or accuracies.shape[0] != len(schemes):
            raise SearchError(
                f"the fitness returned an array of shape {accuracies.shape}; expected "
                f"({len(schemes)}, n_episodes)"
            )
        scores = fitness_of(accuracies)
        first = len(result.candidates)
        new = tuple(
            Candidate(
                index=first + i,
                generation=g,
                origin=origin,
                scheme=scheme,
                fitness=float(scores[i]),
                accuracies=tuple(float(a) for a in accuracies[i]),
                seconds=seconds / len(schemes),
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
    device: str | torch.device = "auto",
    chunk_size: int | None = None,
    progress: bool = True,
    callback: Callback | None = None,
) -> SearchResult:
    """Search for the best scheme of ``backbone`` on validation ``episodes`` of ``dataset``.

    The fitness is :class:`EpisodeFitness` (batched engine, replica seeds from
    ``config.seed``); see :func:`evolve` for the rest of the arguments. Shows one progress bar
    per generation and a one-line summary after it.
    """
    config = SearchConfig() if config is None else config
    fitness = EpisodeFitness(
        backbone,
        dataset,
        episodes,
        finetune,
        seed=config.seed,
        device=device,
        chunk_size=chunk_size,
        progress=progress,
    )
    return evolve(
        fitness,
        backbone.layer_names(),
        config,
        out_dir=out_dir,
        resume=resume,
        identity=fitness.identity(),
        progress=progress,
        callback=callback,
    )
