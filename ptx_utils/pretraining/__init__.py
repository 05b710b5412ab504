"""Pre-training: Baseline / Baseline++ / ProtoNet / MAML on base classes, resumable, curves as CSV.

- :mod:`~ptx_utils.pretraining.config` — :class:`PretrainConfig`, :class:`PretrainResult`.
- :mod:`~ptx_utils.pretraining.loop` — :func:`pretrain`.
- :mod:`~ptx_utils.pretraining.maml` — MAML's inner loop over many tasks at once, the meta-gradient.
- :mod:`~ptx_utils.pretraining.zoo` — :func:`from_zoo`: start from a zoo entry instead.
"""

from ptx_utils.pretraining.config import METHODS, PretrainConfig, PretrainResult
from ptx_utils.pretraining.loop import pretrain
from ptx_utils.pretraining.zoo import from_zoo

__all__ = ["METHODS", "PretrainConfig", "PretrainResult", "from_zoo", "pretrain"]
