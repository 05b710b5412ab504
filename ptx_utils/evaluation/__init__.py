"""Evaluation: strategies × episodes → per-episode accuracy → mean ± CI, paired differences.

- :mod:`~ptx_utils.evaluation.harness` — :func:`evaluate_strategies` → :class:`Evaluation`.
- :mod:`~ptx_utils.evaluation.tables` — :func:`summary_table`, :func:`paired_table`.
- :mod:`~ptx_utils.evaluation.report` — :func:`write_results` (CSV, LaTeX, provenance).
- :mod:`~ptx_utils.evaluation.steps` — :func:`evaluate_steps`: accuracy against the number of
  updates, from one run.
- :mod:`~ptx_utils.evaluation.routing` — :func:`spottune_routing`: where SpotTune routes.
"""

from ptx_utils.evaluation.harness import Evaluation, evaluate_strategies, strategy_checkpoint
from ptx_utils.evaluation.report import mean_ci_latex, summary_latex, write_results
from ptx_utils.evaluation.routing import routing_summary, spottune_routing
from ptx_utils.evaluation.steps import evaluate_steps, steps_summary
from ptx_utils.evaluation.tables import (
    PAIRED_COLUMNS,
    ROW_COLUMNS,
    SETTING_COLUMNS,
    SUMMARY_COLUMNS,
    paired_table,
    summary_table,
)

__all__ = [
    "PAIRED_COLUMNS",
    "ROW_COLUMNS",
    "SETTING_COLUMNS",
    "SUMMARY_COLUMNS",
    "Evaluation",
    "evaluate_steps",
    "evaluate_strategies",
    "mean_ci_latex",
    "paired_table",
    "routing_summary",
    "spottune_routing",
    "steps_summary",
    "strategy_checkpoint",
    "summary_latex",
    "summary_table",
    "write_results",
]
