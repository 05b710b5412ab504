"""The search space: every feasible per-layer rate tuple of an lr zoo (:class:`SearchSpace`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ptx_utils.finetuning.scheme import DEFAULT_HEAD_LR, Scheme
from ptx_utils.search.config import SearchConfig

#: Per-layer learning rates of one scheme (its ``lrs``).
Rates = tuple[float, ...]
#: Spaces up to this size are enumerated to draw new random schemes without replacement.
ENUMERATE_LIMIT = 50_000


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
