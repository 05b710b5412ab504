"""Racing: score a generation's candidates a few validation episodes at a time, stop the hopeless.

The rule (``docs/search.md``): a candidate is compared, episode by episode, with the current
k-th best fully scored candidate; after each stage of ``race_episodes`` episodes, with paired
differences ``d`` over the ``n`` episodes seen, it stops when
``mean(d) + race_z * max(sd(d), RACE_SD_FLOOR) / sqrt(n) < 0`` — even optimistically it would not
enter the top-k. Stopped candidates keep their partial scores (``raced_out``). Until ``top_k``
candidates are fully scored, everyone is scored in full. Deterministic: the reference and the
stages depend only on what was evaluated before the generation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.search.config import SearchConfig
from ptx_utils.search.result import Candidate, ranked

#: The smallest spread the bound assumes (accuracy units): with 2 or 3 episodes seen the
#: sample deviation of the differences can be 0 by chance.
RACE_SD_FLOOR = 0.05


def race(
    fitness: Any,
    schemes: Sequence[Scheme],
    candidates: Sequence[Candidate],
    config: SearchConfig,
    desc: str,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Score ``schemes`` with racing against ``candidates`` (those evaluated before).

    ``fitness`` must take ``episodes=`` (a list of episode indices) and have ``n_episodes``.

    Returns:
        per scheme its accuracies float64 (n_i,) over the first n_i episodes, and raced_out
        bool (S,).
    """
    n_episodes = int(fitness.n_episodes)
    full = [c for c in candidates if not c.raced_out]
    scores = np.full((len(schemes), n_episodes), np.nan)
    seen = np.zeros(len(schemes), dtype=np.int64)
    out = np.zeros(len(schemes), dtype=bool)
    if len(full) < config.top_k:
        scores[:] = fitness(list(schemes), desc=desc)
        return [row for row in scores], out
    reference = np.nan_to_num(np.asarray(ranked(full)[config.top_k - 1].accuracies), nan=0.0)
    alive = np.arange(len(schemes))
    done = 0
    while done < n_episodes and len(alive):
        stop = min(n_episodes, done + config.race_episodes)
        block = list(range(done, stop))
        part = fitness([schemes[i] for i in alive], desc=f"{desc} (episodes {done + 1}-{stop})",
                       episodes=block)  # fmt: skip
        scores[alive, done:stop] = part
        seen[alive] = stop
        done = stop
        if done < n_episodes:
            d = np.nan_to_num(scores[alive, :done], nan=0.0) - reference[:done]
            sd = d.std(axis=1, ddof=1) if done > 1 else np.zeros(len(alive))
            bound = d.mean(axis=1) + config.race_z * np.maximum(sd, RACE_SD_FLOOR) / math.sqrt(done)
            out[alive[bound < 0]] = True
            alive = alive[bound >= 0]
    return [scores[i, : seen[i]] for i in range(len(schemes))], out
