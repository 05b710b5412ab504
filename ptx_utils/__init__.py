"""ptx-kit: partial transfer for few-shot image classification.

The notebooks in ``notebooks/`` call this package; every piece of logic lives here so that tests
can reach it. Sub-modules:

- :mod:`ptx_utils.data` — dataset registry, loaders from local files, decoded-image cache.
- :mod:`ptx_utils.data.episodes` — n-way k-shot episodes, deterministic from a seed.
- :mod:`ptx_utils.models` — backbones with ordered layers (registry by name) and heads.
- :mod:`ptx_utils.pretraining.loop` — Baseline / Baseline++ / ProtoNet pre-training, resumable.
- :mod:`ptx_utils.models.checkpoint` — checkpoints (weights + metadata), read with weights_only=True.
- :mod:`ptx_utils.models.features` — frozen features and nearest-centroid accuracy on episodes.
- :mod:`ptx_utils.finetuning.scheme` — per-layer learning-rate schemes and the named fixed strategies.
- :mod:`ptx_utils.finetuning.protocol`, :mod:`ptx_utils.finetuning.batched` — reference and batched engine.
- :mod:`ptx_utils.evaluation.harness`, :mod:`ptx_utils.core.stats` — strategies x episodes, CIs, paired tests.
- :mod:`ptx_utils.core.io` — run directories, provenance, atomic writes.
- :mod:`ptx_utils.plots.figures` — figures saved as PDF and PNG.
- :mod:`ptx_utils.running.cli` — the ``ptx`` command.
"""

__version__ = "0.1.0"
