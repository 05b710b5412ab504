"""The model zoo: entries ship in the package, load without data, are checked, start a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ptx_utils.models import zoo
from ptx_utils.models.checkpoint import (
    CheckpointError,
    load_backbone,
    load_checkpoint,
    save_checkpoint,
    state_digest,
)
from ptx_utils.pretraining import from_zoo
from ptx_utils.running.cli import main

ENTRIES = ("conv4-baselinepp-omniglot", "conv4-baselinepp-mini-imagenet")


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_loads_from_the_package_alone(name: str) -> None:
    assert name in zoo.list_pretrained()
    model, meta = zoo.load_pretrained(name)
    record = zoo.zoo_record(name)
    assert meta["zoo"]["sha256"] == record["sha256"] and model.config() == record["backbone"]
    for key in ("command", "config", "dataset", "licence", "splits", "best_epoch", "best_val"):
        assert record[key] not in (None, ""), key
    assert record["command"].startswith("python benchmarks/train_zoo.py train " + name)
    parts = json.loads((zoo.ZOO_DIR / name / "backbone.pt.parts.json").read_text())["parts"]
    assert all(p["size"] <= 16 * 2**20 for p in parts)
    curves = zoo.zoo_curves(name).read_text().splitlines()
    assert curves[0].startswith("epoch,") and len(curves) - 1 == record["epochs_trained"]
    image = torch.zeros(2, model.config()["in_channels"], *(2 * [model.config()["image_size"]]))
    assert model.eval()(image).shape == (2, model.out_dim)


def test_damaged_or_unknown_entries_are_refused(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(KeyError, match=r"known entries: .*conv4-baselinepp-omniglot"):
        zoo.zoo_record("resnet50-imagenet")
    shutil.copytree(zoo.ZOO_DIR / ENTRIES[0], tmp_path / ENTRIES[0])
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    part = tmp_path / ENTRIES[0] / "backbone.pt.part000"
    data = bytearray(part.read_bytes())
    data[-1] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        zoo.load_pretrained(ENTRIES[0])


def test_from_zoo_puts_the_entry_in_a_run(tmp_path: Path) -> None:
    name = ENTRIES[0]
    result = from_zoo(name, tmp_path / "pretrain", dataset="omniglot", backbone="conv4")
    model, meta = load_backbone(tmp_path / "pretrain" / "best.pt", backbone="conv4")
    assert state_digest(model) == state_digest(zoo.load_pretrained(name)[0])
    assert meta["zoo"] == name and result.best_epoch == zoo.zoo_record(name)["best_epoch"]
    assert [h["epoch"] for h in result.history] == list(range(1, len(result.history) + 1))
    before = (tmp_path / "pretrain" / "best.pt").stat().st_mtime_ns
    from_zoo(name, tmp_path / "pretrain")  # again: reused, not rewritten
    assert (tmp_path / "pretrain" / "best.pt").stat().st_mtime_ns == before
    ckpt = load_checkpoint(tmp_path / "pretrain" / "best.pt")
    ckpt["meta"] = {**ckpt["meta"], "zoo_sha256": "0" * 64}
    save_checkpoint(tmp_path / "trained-here" / "best.pt", ckpt)
    with pytest.raises(CheckpointError, match="another checkpoint"):
        from_zoo(name, tmp_path / "trained-here")
    with pytest.raises(ValueError, match="pre-trained on 'omniglot', not 'synthetic'"):
        from_zoo(name, tmp_path / "other", dataset="synthetic")
    with pytest.raises(ValueError, match="is a conv4, not a resnet12"):
        from_zoo(name, tmp_path / "other", backbone="resnet12")


def test_cli_lists_and_shows_entries(capsys) -> None:
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ENTRIES)
    assert main(["zoo", "show", ENTRIES[0]]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == ENTRIES[0]
    assert main(["zoo", "show", "nope"]) == 2
    assert "no zoo entry 'nope'" in capsys.readouterr().err
