"""Pre-training: Baseline / Baseline++ / ProtoNet on base classes, resumable, curves as CSV.

- :mod:`~ptx_utils.pretraining.config` — :class:`PretrainConfig`, :class:`PretrainResult`.
- :mod:`~ptx_utils.pretraining.loop` — :func:`pretrain`.
"""

from ptx_utils.pretraining.config import METHODS, PretrainConfig, PretrainResult
from ptx_utils.pretraining.loop import pretrain

__all__ = ["METHODS", "PretrainConfig", "PretrainResult", "pretrain"]
