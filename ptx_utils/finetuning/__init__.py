"""Fine-tuning: strategies, the protocol, one sequential reference and one batched engine.

- :mod:`.scheme`, :mod:`.strategy`, :mod:`.fixed` — rates, :class:`Strategy`, the named ones
  (linear probe … TSA, LT+NCC, SpotTune, MAML, UpperCaSE; AdaBN, CIT); :mod:`.protocol`.
- :mod:`.sequential` — the reference; :mod:`.batched` — the vmapped engine (:mod:`.sgd_chunks`,
  :mod:`.closed_form`, :mod:`.adapters`, :mod:`.uppercase`, :mod:`.maml_adapt`, …), equal to it.
- :mod:`.replicas` — run and score replicas with either engine, here or on Ray workers
  (:mod:`.ray_executor`).
"""

from ptx_utils.finetuning.batched import BatchedResult, Replica, finetune_batched
from ptx_utils.finetuning.fixed import (
    bn_affine,
    full_finetune,
    last_k,
    linear_probe,
    logistic_regression,
    lt_ncc,
    maml,
    nearest_centroid,
    spottune,
    tsa,
    uppercase,
    with_adabn,
    with_channel_importance,
    with_prototype_head,
)
from ptx_utils.finetuning.protocol import FinetuneConfig, replica_plan
from ptx_utils.finetuning.replicas import (
    ENGINES,
    default_engine,
    place_episodes,
    replica_accuracies,
    replica_curves,
    replica_seed,
)
from ptx_utils.finetuning.scheme import (
    DEFAULT_HEAD_LR,
    DEFAULT_LR_ZOO,
    PARAM_KINDS,
    Scheme,
    check_lr_zoo,
)
from ptx_utils.finetuning.sequential import FinetuneResult, finetune_sequential
from ptx_utils.finetuning.strategy import Attachment, Strategy, as_strategy, check_strategies

__all__ = [
    "DEFAULT_HEAD_LR",
    "DEFAULT_LR_ZOO",
    "ENGINES",
    "PARAM_KINDS",
    "Attachment",
    "BatchedResult",
    "FinetuneConfig",
    "FinetuneResult",
    "Replica",
    "Scheme",
    "Strategy",
    "as_strategy",
    "bn_affine",
    "check_lr_zoo",
    "check_strategies",
    "default_engine",
    "finetune_batched",
    "finetune_sequential",
    "full_finetune",
    "last_k",
    "linear_probe",
    "logistic_regression",
    "lt_ncc",
    "maml",
    "nearest_centroid",
    "place_episodes",
    "replica_accuracies",
    "replica_curves",
    "replica_plan",
    "replica_seed",
    "spottune",
    "tsa",
    "uppercase",
    "with_adabn",
    "with_channel_importance",
    "with_prototype_head",
]
