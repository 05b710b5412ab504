"""Within a generation: every fitness call's result kept in ``out_dir``, so a search stopped in
the middle of a generation resumes from its last finished call, not from the generation's start.

A racing generation is several calls (one per stage of ``race_episodes`` episodes); a restarted
search proposes the same schemes (deterministic) and makes the same calls in the same order, so
a call found in the log is answered from it and the first one missing runs exactly as it would
have: the resumed search equals an uninterrupted one. The log is dropped once the generation is
saved in the state.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptx_utils.core.io import atomic_write_json
from ptx_utils.finetuning.scheme import Scheme

#: The file beside ``state.json`` holding the calls of the generation in progress.
STAGES_FILE = "generation_in_progress.json"


class StageLog:
    """Wraps a fitness: answers calls already made in generation ``generation`` of the search
    ``search`` (its settings and fitness identity) from the log, runs and logs the others
    (atomically, after each call). Has the fitness' ``n_episodes``; ``replayed_seconds`` is the
    time the answered calls took when they ran."""

    def __init__(
        self, fitness: Any, out_dir: Path, generation: int, search: Mapping[str, Any]
    ) -> None:
        self.fitness, self.path, self.generation = fitness, out_dir / STAGES_FILE, generation
        self.search = json.loads(json.dumps(search, default=str))
        self.n_episodes = getattr(fitness, "n_episodes", None)
        self.calls: list[dict[str, Any]] = []
        self.replayed_seconds = 0.0
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if (saved.get("generation"), saved.get("search")) == (generation, self.search):
                self.calls = saved["calls"]

    def __call__(
        self, schemes: Sequence[Scheme], desc: str = "", episodes: Sequence[int] | None = None
    ) -> np.ndarray:
        key = json.loads(  # as the log reads back: lists, not tuples
            json.dumps(
                {
                    "schemes": [s.to_dict() for s in schemes],
                    "episodes": None if episodes is None else list(episodes),
                }
            )
        )
        for call in self.calls:
            if {k: call[k] for k in key} == key:
                self.replayed_seconds += call["seconds"]
                return np.array(call["accuracies"], dtype=np.float64)  # None -> NaN
        kwargs = {} if episodes is None else {"episodes": list(episodes)}
        tic = time.perf_counter()
        accuracies = np.asarray(self.fitness(list(schemes), desc=desc, **kwargs), np.float64)
        if accuracies.ndim != 2:  # not logged: the search refuses it with the shape it expected
            return accuracies
        rows = [[None if math.isnan(a) else float(a) for a in row] for row in accuracies]
        self.calls.append({**key, "accuracies": rows, "seconds": time.perf_counter() - tic})
        state = {"generation": self.generation, "search": self.search, "calls": self.calls}
        atomic_write_json(self.path, state)
        return accuracies

    def clear(self) -> None:
        """Drop the log (its generation is in the state now)."""
        drop_log(self.path.parent)


def drop_log(out_dir: Path) -> None:
    """Remove a log left in ``out_dir`` (a search starting afresh there)."""
    (out_dir / STAGES_FILE).unlink(missing_ok=True)
