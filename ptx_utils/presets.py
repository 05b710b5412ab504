"""Named parameter sets for the pipeline: ``smoke`` (CI), ``demo`` (a laptop CPU), ``paper``.

A preset is a plain dict of notebook parameters; ``ptx run -p KEY=VALUE`` overrides any entry.
Protocol defaults follow the paper (5-way, 1/5-shot, 15 queries, 600 test episodes); presets only
scale the budget down.
"""

from __future__ import annotations

import copy
from typing import Any

_COMMON: dict[str, Any] = {
    "dataset": "synthetic",
    "backbone": "conv4",
    "data_root": None,
    "image_size": None,
    "n_way": 5,
    "k_shots": [1, 5],
    "n_query": 15,
    "seed": 0,
    "device": "auto",
    "shift_levels": [0.0, 0.5, 1.0],
    "base_split": "train",
    "val_split": "val",
    "novel_split": "test",
}

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {**_COMMON, "n_query": 5, "n_val_episodes": 4, "n_test_episodes": 20},
    "demo": {**_COMMON, "n_val_episodes": 20, "n_test_episodes": 200},
    "paper": {**_COMMON, "n_val_episodes": 20, "n_test_episodes": 600},
}


def get_preset(name: str) -> dict[str, Any]:
    """A copy of the preset's parameters; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
