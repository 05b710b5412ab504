"""Running the pipeline: presets, the papermill pipeline, the ``ptx`` command.

- :mod:`~ptx_utils.running.presets` — ``smoke``, ``demo``, ``paper``.
- :mod:`~ptx_utils.running.pipeline` — notebooks 01 → 05 into a run directory; resume.
- :mod:`~ptx_utils.running.cli` — ``ptx run``, ``ptx data``.
"""
