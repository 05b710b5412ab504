"""Checkpoints: weights + metadata in one file, written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (nothing that needs
unpickling code): ``backbone`` and ``head`` state dicts, ``meta`` (backbone config and layer list,
dataset, image size, classes, parameters, provenance), and for resuming ``optimizer``, ``rng``,
``epoch``, ``history`` and ``best_val``.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptx_utils.core.io import atomic_save
from ptx_utils.models import Backbone, create_backbone

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or made for another backbone / input."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format number) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buffer)
    return atomic_save(path, lambda f: f.write(buffer.getvalue()))


#: The largest part :func:`split_checkpoint` writes by default (a ResNet-12 checkpoint with its
#: optimizer state is ~150 MiB; the GPU machines carry at most 64 MiB a call).
PART_BYTES = 16 * 2**20


def _parts_manifest(path: Path) -> Path:
    return path.with_name(path.name + ".parts.json")


def split_checkpoint(path: str | Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """Write ``path`` as parts ``<name>.part000, ...`` of at most ``part_bytes`` each, plus the
    manifest ``<name>.parts.json`` (sizes and SHA-256 of the whole and of every part); return the
    parts. The checkpoint itself is left in place; :func:`join_checkpoint` reassembles it."""
    path = Path(path)
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be >= 1, got {part_bytes}")
    data = path.read_bytes()
    parts, records = [], []
    for i, start in enumerate(range(0, max(len(data), 1), part_bytes)):
        chunk = data[start : start + part_bytes]
        part = path.with_name(f"{path.name}.part{i:03d}")
        atomic_save(part, lambda f, chunk=chunk: f.write(chunk))
        parts.append(part)
        records.append(
            {"name": part.name, "size": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()}
        )
    manifest = {
        "name": path.name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "parts": records,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_save(_parts_manifest(path), lambda f: f.write(text.encode()))
    return parts


def join_checkpoint(path: str | Path) -> Path:
    """Reassemble ``path`` from the parts its manifest lists, checking every size and hash;
    written atomically, so a failed join leaves nothing behind. An existing ``path`` with the
    manifest's hash is kept as it is; one with another hash is an error (nothing is replaced)."""
    path = Path(path)
    manifest_path = _parts_manifest(path)
    if not manifest_path.is_file():
        raise CheckpointError(f"no parts manifest {manifest_path}; split_checkpoint writes one")
    manifest = json.loads(manifest_path.read_text())
    if path.is_file():
        if hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"]:
            return path
        raise CheckpointError(f"{path} exists and differs from its parts; move it away to join")
    data = read_parts(path)
    return atomic_save(path, lambda f: f.write(data))


def read_parts(path: str | Path) -> bytes:
    """The bytes of checkpoint ``path`` reassembled in memory from the parts its manifest lists,
    every part's size and SHA-256 and the whole's checked; a missing or damaged part is named."""
    path = Path(path)
    manifest_path = _parts_manifest(path)
    manifest = json.loads(manifest_path.read_text())
    chunks = []
    for record in manifest["parts"]:
        part = path.with_name(record["name"])
        if not part.is_file():
            raise CheckpointError(
                f"checkpoint part {part} is missing; copy every part listed in {manifest_path}"
            )
        chunk = part.read_bytes()
        if len(chunk) != record["size"] or hashlib.sha256(chunk).hexdigest() != record["sha256"]:
            raise CheckpointError(f"checkpoint part {part} is damaged (size or SHA-256 differs)")
        chunks.append(chunk)
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise CheckpointError(f"the parts of {path} do not reassemble to the recorded SHA-256")
    return data


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a missing or foreign file is a clear error.

    A checkpoint present only as parts (:func:`split_checkpoint`) is reassembled first."""
    path = Path(path)
    if not path.is_file() and _parts_manifest(path).is_file():
        join_checkpoint(path)
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
    return backbone_from_checkpoint(
        load_checkpoint(path, map_location), str(path), backbone, image_size, in_channels
    )


def backbone_from_checkpoint(
    ckpt: dict[str, Any],
    label: str,
    backbone: str | None = None,
    image_size: int | None = None,
    in_channels: int | None = None,
) -> tuple[Backbone, dict[str, Any]]:
    """The backbone of a checkpoint already read (``label`` names it in errors), and its meta."""
    meta = ckpt["meta"]
    config = dict(meta["backbone"])
    expected = {"name": backbone, "image_size": image_size, "in_channels": in_channels}
    wrong = {k: v for k, v in expected.items() if v is not None and config.get(k) != v}
    if wrong:
        asked = ", ".join(f"{k}={v}" for k, v in wrong.items())
        had = ", ".join(f"{k}={config.get(k)}" for k in wrong)
        raise CheckpointError(
            f"checkpoint {label} was trained with {had}, but {asked} was asked for; use a "
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


def read_reference(reference: str, what: str, how_to_make: str) -> tuple[Path, bytes]:
    """The bytes of a ``"path#sha256"`` reference (what a strategy's ``loads`` holds), the hash
    checked. ``what`` names the file in errors, ``how_to_make`` says how to get one."""
    path, _, sha = reference.rpartition("#")
    if not path or len(sha) != 64:
        raise ValueError(f"a {what} reference is 'path#sha256', got {reference!r}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} {file} not found; {how_to_make} or fix the path")
    blob = file.read_bytes()
    if hashlib.sha256(blob).hexdigest() != sha:
        raise ValueError(f"{file} does not match its sha256 {sha[:12]}…: the file changed")
    return file, blob


@dataclass(frozen=True)
class MetaTrained:
    """A meta-trained part (SpotTune's policy, UpperCaSE's CaSE blocks): file, hash, record."""

    path: Path
    sha256: str
    record: dict[str, Any]

    @property
    def reference(self) -> str:
        """``"path#sha256"``: what a strategy's ``loads`` holds."""
        return f"{self.path}#{self.sha256}"
