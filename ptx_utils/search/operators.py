"""How a generation's new schemes are proposed (:func:`propose`): random, mutation, crossover."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ptx_utils.search.config import SearchConfig
from ptx_utils.search.result import ORIGINS, Candidate, ranked
from ptx_utils.search.space import ENUMERATE_LIMIT, Rates, SearchSpace

__all__ = ["ORIGINS", "TRIES_PER_CANDIDATE", "diversity", "propose"]

#: Breeding attempts per wanted candidate before the rest of a generation is drawn at random.
TRIES_PER_CANDIDATE = 100


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

    Every draw comes from ``numpy.random.default_rng([config.seed, generation])``.

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
