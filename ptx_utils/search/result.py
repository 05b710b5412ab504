"""What a search produces: evaluated :class:`Candidate` s, per-generation reports, the
:class:`SearchResult` with its history, curve and the ``state.json`` it saves and loads."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ptx_utils.core.io import atomic_write_json, atomic_write_text
from ptx_utils.core.provenance import provenance
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.search.config import SearchConfig, SearchError

#: How a candidate was proposed (:attr:`Candidate.origin`).
ORIGINS = ("random", "mutation", "crossover")
STATE_FORMAT = 1
STATE_FILE = "state.json"
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
    "n_episodes",
    "raced_out",
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


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if a != a else a for a in values]


@dataclass(frozen=True)
class Candidate:
    """One evaluated scheme.

    Attributes:
        index: position in evaluation order (0, 1, ...).
        generation: the generation that proposed it.
        origin: ``"random"``, ``"mutation"`` or ``"crossover"``.
        scheme: the scheme.
        fitness: mean validation accuracy, episodes where it diverged scoring 0.
        accuracies: per validation episode, NaN where it diverged; a raced-out candidate has
            only its first ``len(accuracies)`` episodes.
        seconds: its share of its generation's fitness-evaluation time (not compared: two
            candidates are equal when everything but their timing is).
        raced_out: stopped early by racing; its fitness is partial and it ranks after every
            fully scored candidate (never a parent, never the best).
    """

    index: int
    generation: int
    origin: str
    scheme: Scheme
    fitness: float
    accuracies: tuple[float, ...]
    seconds: float = field(default=0.0, compare=False)
    raced_out: bool = False

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
            "accuracies": _nan_to_none(self.accuracies),
            "seconds": self.seconds,
            **({"raced_out": True} if self.raced_out else {}),
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
            raced_out=bool(data.get("raced_out", False)),
        )


def rank_score(candidate: Candidate) -> float:
    """What ranks candidates: the fitness, minus 2 for a raced-out one (after all others)."""
    return candidate.fitness - 2.0 * candidate.raced_out


def ranked(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: fully scored before raced-out, then by fitness, ties by evaluation order."""
    return sorted(candidates, key=lambda c: (-rank_score(c), c.index))


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
        return 1 + sum(rank_score(c) > rank_score(found[0]) for c in self.candidates)

    def history(self) -> pd.DataFrame:
        """Every evaluated candidate, one row each (:data:`HISTORY_COLUMNS`), evaluation order."""
        fitness = np.array([rank_score(c) for c in self.candidates], dtype=np.float64)
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
                    "n_episodes": len(c.accuracies),
                    "raced_out": c.raced_out,
                    "rank": int(rank),
                    "seconds": c.seconds,
                }
                for c, rank in zip(self.candidates, ranks, strict=True)
            ],
            columns=list(HISTORY_COLUMNS),
        )

    def best_so_far(self) -> pd.DataFrame:
        """Best fitness after each evaluated candidate: columns n_evaluated, best_fitness."""
        fitness = np.array([rank_score(c) for c in self.candidates], dtype=np.float64)
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
            "accuracies": _nan_to_none(best.accuracies),
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
