"""ptx-kit: partial transfer for few-shot image classification.

The notebooks in ``notebooks/`` call this package; every piece of logic lives here. Sub-packages
follow the data flow, and each imports only from those before it:

- :mod:`ptx_utils.core` — atomic I/O, provenance, device, runtime, statistics, LaTeX, checks.
- :mod:`ptx_utils.data` — datasets by name, decoded-image cache, episodes, augmentation.
- :mod:`ptx_utils.models` — backbones (layers + forward stages), heads, checkpoints, features.
- :mod:`ptx_utils.pretraining` — Baseline / Baseline++ / ProtoNet, resumable.
- :mod:`ptx_utils.finetuning` — schemes, strategies, protocol, sequential reference, batched engine.
- :mod:`ptx_utils.search` — evolutionary and random search for the per-layer scheme.
- :mod:`ptx_utils.evaluation` — strategies × episodes → mean ± CI, paired tests, reports.
- :mod:`ptx_utils.steps` — what notebooks 02–05 call, one module per step.
- :mod:`ptx_utils.plots`, :mod:`ptx_utils.widgets` — figures (PDF + PNG); live explorers.
- :mod:`ptx_utils.running` — presets, the papermill pipeline, the ``ptx`` command.
"""

__version__ = "0.1.0"

#: The sub-packages in data-flow order: a sub-package imports only from those before it.
FLOW = (
    "core",
    "data",
    "models",
    "pretraining",
    "finetuning",
    "search",
    "evaluation",
    "steps",
    "plots",
    "widgets",
    "running",
)
