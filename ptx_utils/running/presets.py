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
    "precision": "auto",
    "executor": "local",
    "ray_address": None,
    "pretrained": None,
    "shift_levels": [0.0, 0.5, 1.0],
    "cross_domain": [],
    "search_methods": ["evolution", "random"],
    "explore_episodes": 5,
    "runs_root": None,
    "base_split": "train",
    "val_split": "val",
    "novel_split": "test",
    "strategy_set": "all",
    "case_meta": None,
}

# Pre-training settings per preset (keys of ptx_utils.pretraining.PretrainConfig); notebooks merge
# the notebook parameter ``pretrain`` (a dict of overrides) over these.
_PRETRAIN: dict[str, dict[str, Any]] = {
    "smoke": {
        "method": "baseline++",
        "epochs": 2,
        "epoch_images": 3200,
        "batch_size": 64,
        "val_episodes": 10,
    },
    # demo: the best validation epoch is the 3rd; the 4th shows the score turning down
    "demo": {"method": "baseline++", "epochs": 4, "batch_size": 64, "val_episodes": 50},
    # CloserLook / P-Transfer: 400 epochs, batch 16, Adam 1e-3. ProtoNet: 100 episodes an epoch,
    # 600 epochs (60k episodes) for 1-shot and 400 (40k) for 5-shot.
    "paper": {"method": "baseline++", "epochs": 400, "batch_size": 16, "val_episodes": 100},
}

# Search settings per preset: keys of ptx_utils.search.SearchConfig (merged like ``pretrain``).
# The paper: population 20, 20 generations, top-10 parents. On a 2-core CPU one 5-way 1-shot
# candidate costs ~4.5 s with 10 episodes and 50 passes (Conv4, 32x32), so demo is far smaller
# (its budget, and what it no longer shows for it: docs/results.md#measured-the-demo-run).
# smoke and demo race (docs/search.md#racing); paper scores every candidate in full, as the paper.
_SEARCH: dict[str, dict[str, Any]] = {
    "smoke": {"population": 3, "generations": 2, "top_k": 2, "racing": True},
    "demo": {"population": 6, "generations": 3, "top_k": 3, "racing": True},
    "paper": {"population": 20, "generations": 20, "top_k": 10},
}

# Fine-tuning protocol per preset: keys of ptx_utils.finetuning.FinetuneConfig. The paper's is 100
# passes over the support set; demo takes 40 (at 50 the fixed strategies rank as at 100 on the
# synthetic default, at 20 the linear probe under-fits; 40 keeps the demo within 5 minutes),
# smoke only checks that it runs.
_FINETUNE: dict[str, dict[str, Any]] = {
    "smoke": {"passes": 3},
    "demo": {"passes": 40},
    "paper": {"passes": 100},
}

# Notebook 04: one search and one test per target (shift level or cross-domain dataset), k_shot
# shots each; ``search`` is merged over the preset's search settings.
_SHIFT: dict[str, dict[str, Any]] = {
    "smoke": {
        "k_shot": 1,
        "n_val_episodes": 1,
        "n_test_episodes": 4,
        "search": {"population": 3, "generations": 2, "top_k": 2},
    },
    "demo": {
        "k_shot": 1,
        "n_val_episodes": 4,
        "n_test_episodes": 12,
        "search": {"population": 6, "generations": 3, "top_k": 3},
    },
    "paper": {
        "k_shot": 5,
        "n_val_episodes": 20,
        "n_test_episodes": 600,
        "search": {"population": 20, "generations": 20, "top_k": 10},
    },
}

# Notebook 03's accuracy against the number of updates: one run per strategy on the first
# n_episodes test episodes, scored after each of ``passes`` (the survey's 5 ... 200).
_STEPS: dict[str, dict[str, Any]] = {
    "smoke": {"passes": [0, 1, 3], "n_episodes": 2},
    "demo": {"passes": [0, 5, 10, 25, 40], "n_episodes": 3},
    "paper": {"passes": [0, 5, 10, 25, 50, 100, 200], "n_episodes": 100},
}

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        **_COMMON,
        "strategy_set": "representative",
        "n_query": 5,
        "n_val_episodes": 1,
        "n_test_episodes": 6,
        "explore_episodes": 2,
    },
    "demo": {
        **_COMMON,
        "k_shots": [1],
        "n_val_episodes": 4,
        "n_test_episodes": 30,
        "explore_episodes": 2,
        "search_methods": ["evolution"],
        "shift_levels": [0.0, 1.0],
        "strategy_set": "representative",
    },
    "paper": {**_COMMON, "n_val_episodes": 20, "n_test_episodes": 600},
}
for _name, _preset in PRESETS.items():
    _preset["pretrain"] = _PRETRAIN[_name]
    _preset["search"] = _SEARCH[_name]
    _preset["finetune"] = _FINETUNE[_name]
    _preset["shift"] = _SHIFT[_name]
    _preset["steps_curve"] = _STEPS[_name]


def get_preset(name: str) -> dict[str, Any]:
    """A copy of the preset's parameters; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
