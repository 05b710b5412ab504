"""ptx-kit: partial transfer for few-shot image classification; the notebooks call this package.

Sub-packages follow the data flow (:data:`FLOW`), each importing only from those before it:
``core`` (I/O, provenance, device, runtime, statistics) → ``data`` (datasets, episodes) →
``models`` (backbones with layers and forward stages, heads, checkpoints) → ``pretraining`` →
``finetuning`` (schemes, strategies, sequential reference, batched engine) → ``search`` →
``evaluation`` → ``steps`` (what notebooks 02–05 call) → ``plots`` → ``widgets`` → ``running``
(presets, papermill pipeline, the ``ptx`` command). Layout: ``docs/development.md``.
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
