"""What the notebooks call, one module per notebook step.

- :mod:`~ptx_utils.steps.common` — required inputs, the pre-trained backbone, the protocol.
- :mod:`~ptx_utils.steps.searching` — 02: the searches and their summary.
- :mod:`~ptx_utils.steps.transfer` — 03: searched vs fixed strategies on the test episodes.
- :mod:`~ptx_utils.steps.domain_shift` — 04: one search and one test per shift target.
- :mod:`~ptx_utils.steps.analysis` — 05: every run under ``runs/`` gathered into tables.
"""
