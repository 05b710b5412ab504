"""Search for the per-layer fine-tuning scheme: evolution (P-Transfer stage two) and random search.

Modules, in data-flow order (``docs/search.md`` describes the algorithm):

- :mod:`~ptx_utils.search.config` — :class:`SearchConfig`, :class:`SearchError`, the methods.
- :mod:`~ptx_utils.search.space` — :class:`SearchSpace`: the feasible schemes of an lr zoo.
- :mod:`~ptx_utils.search.result` — :class:`Candidate`, :class:`SearchResult`, ``state.json``.
- :mod:`~ptx_utils.search.operators` — random draws, mutation, crossover: :func:`propose`.
- :mod:`~ptx_utils.search.fitness` — :class:`EpisodeFitness`; ``racing`` — :func:`race`.
- :mod:`~ptx_utils.search.loop` — the verbs :func:`evolve` and :func:`search`.
"""

from ptx_utils.search.config import SEARCH_METHODS, SearchConfig, SearchError
from ptx_utils.search.fitness import EpisodeFitness, FitnessFn, fitness_of
from ptx_utils.search.loop import evolve, search
from ptx_utils.search.operators import diversity, propose
from ptx_utils.search.result import (
    CURVE_COLUMNS,
    HISTORY_COLUMNS,
    STATE_FILE,
    Candidate,
    GenerationReport,
    SearchResult,
    ranked,
)
from ptx_utils.search.space import SearchSpace

__all__ = [
    "CURVE_COLUMNS",
    "HISTORY_COLUMNS",
    "SEARCH_METHODS",
    "STATE_FILE",
    "Candidate",
    "EpisodeFitness",
    "FitnessFn",
    "GenerationReport",
    "SearchConfig",
    "SearchError",
    "SearchResult",
    "SearchSpace",
    "diversity",
    "evolve",
    "fitness_of",
    "propose",
    "ranked",
    "search",
]
