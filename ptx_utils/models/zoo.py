"""The model zoo: pre-trained backbones shipped inside the package, by name.

Each entry is a folder of ``zoo_files/``: the best epoch's checkpoint (backbone only) in parts of at
most 16 MiB with their SHA-256, ``curves.csv`` and ``record.json`` (the command that made it, its
configuration, data and licence note, numbers). ``benchmarks/train_zoo.py`` trains and publishes.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ptx_utils.core.io import atomic_write_json
from ptx_utils.models.base import Backbone
from ptx_utils.models.checkpoint import (
    CheckpointError,
    backbone_from_checkpoint,
    load_checkpoint,
    read_parts,
    save_checkpoint,
    split_checkpoint,
)

ZOO_DIR = Path(__file__).resolve().parent / "zoo_files"
CHECKPOINT = "backbone.pt"


def list_pretrained() -> list[str]:
    """Names of the zoo's entries, sorted.

    Example:
        >>> "conv4-baselinepp-omniglot" in list_pretrained()
        True
    """
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "record.json").is_file())


def zoo_record(name: str) -> dict[str, Any]:
    """An entry's record: command, config, dataset, licence, best epoch, SHA-256, numbers."""
    path = ZOO_DIR / name / "record.json"
    if not path.is_file():
        known = ", ".join(list_pretrained()) or "none"
        raise KeyError(f"no zoo entry {name!r}; known entries: {known} (ptx zoo list)")
    return json.loads(path.read_text())


def zoo_curves(name: str) -> Path:
    """The entry's ``curves.csv`` (one row per pre-training epoch; ``plots.curves_figure``)."""
    zoo_record(name)
    return ZOO_DIR / name / "curves.csv"


def read_pretrained(name: str) -> dict[str, Any]:
    """The entry's checkpoint, reassembled in memory from its parts (sizes and hashes checked)."""
    record = zoo_record(name)
    blob = read_parts(ZOO_DIR / name / CHECKPOINT)
    if hashlib.sha256(blob).hexdigest() != record["sha256"]:
        raise CheckpointError(f"zoo entry {name!r} does not match its SHA-256; reinstall")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def load_pretrained(name: str) -> tuple[Backbone, dict[str, Any]]:
    """The zoo entry's backbone (on CPU) and its checkpoint meta (plus ``meta["zoo"]``).

    Example:
        >>> model, meta = load_pretrained("conv4-baselinepp-omniglot")
        >>> meta["zoo"]["name"], model.config()["name"]
        ('conv4-baselinepp-omniglot', 'conv4')
    """
    model, meta = backbone_from_checkpoint(read_pretrained(name), f"zoo entry {name!r}")
    return model, {**meta, "zoo": zoo_record(name)}


def publish(name: str, best: Path, curves: Path, **record: Any) -> dict[str, Any]:
    """Enter ``best`` (a pre-training ``best.pt``) in the zoo as ``name``; return its record.

    Only the backbone, meta, epoch and history are kept (no optimizer or head). An existing
    entry is refused: remove its folder by hand to replace it.
    """
    folder = ZOO_DIR / name
    if folder.exists():
        raise FileExistsError(f"zoo entry {folder} exists; remove it by hand to publish again")
    ckpt = load_checkpoint(best)
    keep = {k: ckpt[k] for k in ("backbone", "meta", "epoch", "history", "best_val", "best_epoch")}
    folder.mkdir(parents=True)
    path = save_checkpoint(folder / CHECKPOINT, keep)
    split_checkpoint(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    path.unlink()
    shutil.copyfile(curves, folder / "curves.csv")
    full = {
        "name": name,
        "sha256": sha,
        "backbone": ckpt["meta"]["backbone"],
        "best_epoch": int(ckpt["best_epoch"]),
        "best_val": float(ckpt["best_val"]),
        "epochs_trained": len(Path(curves).read_text().splitlines()) - 1,
        "provenance": ckpt["meta"]["provenance"],
        **record,
    }
    atomic_write_json(folder / "record.json", full)
    return full
