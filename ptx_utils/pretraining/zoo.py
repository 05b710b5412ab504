"""Start from a zoo entry instead of pre-training: its checkpoint and curves, put in a run."""

from __future__ import annotations

import csv
from pathlib import Path

from ptx_utils.core.io import atomic_write_text
from ptx_utils.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ptx_utils.models.zoo import read_pretrained, zoo_curves, zoo_record
from ptx_utils.pretraining.config import PretrainResult


def from_zoo(
    name: str, out_dir: str | Path, dataset: str | None = None, backbone: str | None = None
) -> PretrainResult:
    """Write zoo entry ``name`` into ``out_dir`` as ``best.pt`` and ``curves.csv``; its result.

    The later notebooks then use it as if notebook 01 had trained it. ``dataset`` / ``backbone``,
    when given, must be the entry's. Run again: an ``out_dir`` already holding this entry is
    reused; one holding another checkpoint is refused (nothing is overwritten).

    Example:
        >>> import tempfile
        >>> result = from_zoo("conv4-baselinepp-omniglot", tempfile.mkdtemp(), "omniglot")
        >>> result.best_epoch == len([h for h in result.history if h["epoch"] <= result.best_epoch])
        True
    """
    record = zoo_record(name)
    trained_on = record["dataset"]
    if dataset is not None and dataset != trained_on:
        raise ValueError(
            f"zoo entry {name!r} was pre-trained on {trained_on!r}, not {dataset!r}; run with "
            f"dataset={trained_on!r} (other datasets are targets of notebook 04: cross_domain)"
        )
    if backbone is not None and backbone != record["backbone"]["name"]:
        raise ValueError(
            f"zoo entry {name!r} is a {record['backbone']['name']}, not a {backbone}; "
            f"run with backbone={record['backbone']['name']!r}"
        )
    out_dir = Path(out_dir)
    best = out_dir / "best.pt"
    if best.exists():
        held = load_checkpoint(best)["meta"].get("zoo_sha256")
        if held != record["sha256"]:
            raise CheckpointError(
                f"{best} holds another checkpoint than zoo entry {name!r}; use a new run directory"
            )
    else:
        ckpt = read_pretrained(name)
        ckpt["meta"] = {**ckpt["meta"], "zoo": name, "zoo_sha256": record["sha256"]}
        save_checkpoint(best, {k: v for k, v in ckpt.items() if k != "format"})
    curves = zoo_curves(name)
    if not (out_dir / "curves.csv").exists():
        atomic_write_text(out_dir / "curves.csv", curves.read_text())
    with curves.open() as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    for row in history:
        row["epoch"] = int(row["epoch"])
    return PretrainResult(out_dir, history, record["best_epoch"], record["best_val"])
