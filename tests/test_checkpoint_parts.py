"""A checkpoint written in parts of at most 16 MiB (for machines that carry 64 MiB a call) is
reassembled exactly, and a missing or damaged part is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ptx_utils.models import create_backbone
from ptx_utils.models.checkpoint import (
    PART_BYTES,
    CheckpointError,
    join_checkpoint,
    load_backbone,
    save_checkpoint,
    split_checkpoint,
)


@pytest.fixture(scope="module")
def resnet12_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-12 (84x84 RGB, 12.4 M parameters) checkpoint of ~50 MB."""
    torch.manual_seed(0)
    net = create_backbone("resnet12", in_channels=3, image_size=84)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    meta = {"backbone": net.config(), "layers": net.layer_names(), "method": "baseline++"}
    save_checkpoint(path, {"backbone": net.state_dict(), "meta": meta})
    return path


def test_resnet12_in_parts_of_16_mib_reassembles_to_the_same_weights(
    resnet12_checkpoint: Path, tmp_path: Path
) -> None:
    original = resnet12_checkpoint.read_bytes()
    assert len(original) > 2 * PART_BYTES  # 49.8 MB: 3 parts
    parts = split_checkpoint(resnet12_checkpoint)
    assert len(parts) == -(-len(original) // PART_BYTES)
    assert all(p.stat().st_size <= PART_BYTES for p in parts)

    # carried elsewhere: only the parts and the manifest
    target = tmp_path / "best.pt"
    for p in [*parts, resnet12_checkpoint.with_name("best.pt.parts.json")]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    net, _ = load_backbone(target, backbone="resnet12")  # joins first
    assert target.read_bytes() == original
    reference, _ = load_backbone(resnet12_checkpoint, backbone="resnet12")
    expected = reference.state_dict()
    for name, value in net.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert join_checkpoint(target) == target  # already there with the right hash: kept


def test_missing_or_damaged_part_is_refused(resnet12_checkpoint: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.pt"
    small.write_bytes(resnet12_checkpoint.read_bytes()[: 3 * 1000])
    parts = split_checkpoint(small, part_bytes=1000)
    small.unlink()
    parts[1].write_bytes(b"x" * 1000)
    with pytest.raises(CheckpointError, match=r"small.pt.part001 is damaged"):
        join_checkpoint(small)
    parts[1].unlink()
    with pytest.raises(CheckpointError, match=r"small.pt.part001 is missing"):
        join_checkpoint(small)
    assert not small.exists()  # nothing half-written
    with pytest.raises(CheckpointError, match="no parts manifest"):
        join_checkpoint(tmp_path / "other.pt")
