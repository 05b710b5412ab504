"""Shared basics every other sub-package may use.

- :mod:`~ptx_utils.core.io` — atomic writes, refusing to overwrite, file-name slugs.
- :mod:`~ptx_utils.core.provenance` — git commit, package versions, device, date.
- :mod:`~ptx_utils.core.run_dir` — new run directories and their ``params.json``.
- :mod:`~ptx_utils.core.device`, :mod:`~ptx_utils.core.runtime` — device; seed/device/progress.
- :mod:`~ptx_utils.core.stats` — mean ± 95 % CI, paired differences, Student t.
- :mod:`~ptx_utils.core.latex` — LaTeX escaping and the booktabs table builder.
- :mod:`~ptx_utils.core.checks` — shared input checks.
"""
