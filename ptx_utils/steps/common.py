"""What every notebook step shares: required inputs, the pre-trained backbone, the protocol.

Each notebook reads what the one before wrote into the run directory; :func:`require` turns a
missing file into an error naming the notebook that writes it (layout: ``docs/pipeline.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptx_utils.core.device import resolve_device
from ptx_utils.finetuning import FinetuneConfig
from ptx_utils.models import Backbone
from ptx_utils.models.checkpoint import load_backbone

#: Validation episodes use ``seed + VAL_SEED_OFFSET`` so they never coincide with test episodes.
VAL_SEED_OFFSET = 10_000


class RunInputError(FileNotFoundError):
    """A file an earlier notebook writes is missing from the run directory."""


def require(run_dir: str | Path, relative: str | Path, notebook: str) -> Path:
    """``run_dir / relative`` if it exists; else a :class:`RunInputError` naming ``notebook``."""
    path = Path(run_dir) / relative
    if not path.exists():
        raise RunInputError(
            f"{path} is missing: notebook {notebook} writes it. Run {notebook} first with the same "
            f"run_dir ({Path(run_dir)}), or run the whole pipeline with `ptx run`."
        )
    return path


def finetune_config(settings: Mapping[str, Any], pretrain_method: str) -> FinetuneConfig:
    """The fine-tuning protocol: ``settings`` (keys of FinetuneConfig) over the pre-training's head.

    A Baseline backbone gets a new linear head per episode, Baseline++ and ProtoNet a cosine one
    (the classifier they were trained with), unless ``settings`` names ``head``.
    """
    head = "linear" if pretrain_method == "baseline" else "cosine"
    try:
        return FinetuneConfig(**{"head": head, **settings})
    except TypeError as exc:
        raise ValueError(f"finetune parameters {dict(settings)}: {exc}") from None


def load_pretrained(
    run_dir: str | Path, backbone: str, device: str = "auto"
) -> tuple[Backbone, dict[str, Any]]:
    """The backbone notebook 01 pre-trained (``pretrain/best.pt``), on ``device``, in eval mode."""
    path = require(run_dir, "pretrain/best.pt", "01_pretrain")
    model, meta = load_backbone(path, backbone=backbone)
    return model.to(resolve_device(device)).eval(), meta


def val_seed(seed: int) -> int:
    """The seed of the validation episodes the searches score on."""
    return int(seed) + VAL_SEED_OFFSET
