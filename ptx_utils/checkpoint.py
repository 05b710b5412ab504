"""Checkpoints: weights + metadata in one file, written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (nothing that needs
unpickling code): ``backbone`` and ``head`` state dicts, ``meta`` (backbone config and layer list,
dataset, image size, classes, parameters, provenance), and for resuming ``optimizer``, ``rng``,
``epoch``, ``history`` and ``best_val``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from ptx_utils.models import Backbone, create_backbone
from ptx_utils.runs import atomic_save

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or made for another backbone / input."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format number) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buffer)
    return atomic_save(path, lambda f: f.write(buffer.getvalue()))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a missing or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; run the pre-training step (notebook 01) first"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a ptx-kit checkpoint of format {CHECKPOINT_FORMAT}; pre-train again"
        )
    return ckpt


def load_backbone(
    path: str | Path,
    backbone: str | None = None,
    image_size: int | None = None,
    in_channels: int | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[Backbone, dict[str, Any]]:
    """Rebuild the pre-trained backbone of a checkpoint; return (backbone, meta).

    When ``backbone``, ``image_size`` or ``in_channels`` are given they must match what the
    checkpoint was trained for; otherwise the checkpoint is refused with a message saying so.
    """
    ckpt = load_checkpoint(path, map_location)
    meta = ckpt["meta"]
    config = dict(meta["backbone"])
    expected = {"name": backbone, "image_size": image_size, "in_channels": in_channels}
    wrong = {k: v for k, v in expected.items() if v is not None and config.get(k) != v}
    if wrong:
        asked = ", ".join(f"{k}={v}" for k, v in wrong.items())
        had = ", ".join(f"{k}={config.get(k)}" for k in wrong)
        raise CheckpointError(
            f"checkpoint {path} was trained with {had}, but {asked} was asked for; use a "
            "checkpoint pre-trained with these settings or pre-train again"
        )
    model = create_backbone(**config)
    model.load_state_dict(ckpt["backbone"])
    return model, meta


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes, values): equal digests mean
    identical weights and buffers, whatever device they are on."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
