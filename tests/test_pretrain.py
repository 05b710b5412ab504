"""Pre-training: every method runs, resume equals uninterrupted, checkpoints refuse mismatches."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from ptx_utils.data import FewShotDataset, load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.data.errors import DataError
from ptx_utils.models import create_backbone
from ptx_utils.models.checkpoint import CheckpointError, load_backbone, load_checkpoint
from ptx_utils.models.features import nearest_centroid_accuracy
from ptx_utils.pretraining import PretrainConfig, pretrain
from ptx_utils.running.presets import get_preset

TINY = {"image_size": 16, "images_per_class": 20, "classes": (10, 5, 5)}


@pytest.fixture(scope="module")
def tiny() -> tuple[FewShotDataset, FewShotDataset]:
    return load_dataset("synthetic", "train", **TINY), load_dataset("synthetic", "val", **TINY)


def _cfg(**kw: object) -> PretrainConfig:
    base = {
        "epochs": 3,
        "epoch_images": 64,
        "batch_size": 16,
        "val_episodes": 4,
        "val_shot": 1,
        "val_query": 5,
        "device": "cpu",
        "seed": 5,
    }
    return PretrainConfig.from_dict({**base, **kw})


@pytest.mark.parametrize("method", ["baseline", "baseline++", "protonet"])
def test_each_method_trains_and_writes_its_files(
    method: str, tiny: tuple[FewShotDataset, FewShotDataset], tmp_path: Path
) -> None:
    cfg = _cfg(method=method, epochs=2, episodes_per_epoch=3, train_shot=1, train_query=3)
    result = pretrain(cfg, *tiny, tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2]
    # The loop writes the CSV only; notebook 01 draws the figure outside the loop.
    assert not (tmp_path / "curves.pdf").exists()
    for name in ("best.pt", "last.pt", "curves.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    with open(tmp_path / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0 <= float(r["val_acc"]) <= 1 and float(r["train_loss"]) > 0 for r in rows)
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["epoch"] == result.best_epoch and ckpt["meta"]["method"] == method
    assert ckpt["meta"]["layers"] == ["block1", "block2", "block3", "block4"]
    assert ckpt["meta"]["dataset"]["classes"] == tiny[0].class_names


def test_resume_equals_uninterrupted(
    tiny: tuple[FewShotDataset, FewShotDataset], tmp_path: Path
) -> None:
    cfg = _cfg()
    straight = pretrain(cfg, *tiny, tmp_path / "straight")
    pretrain(cfg, *tiny, tmp_path / "resumed", until_epoch=2)  # "interrupted" after epoch 2
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 2
    resumed = pretrain(cfg, *tiny, tmp_path / "resumed")
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for part in ("backbone", "head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert torch.equal(a["rng"], b["rng"])


def test_resume_refuses_another_configuration(
    tiny: tuple[FewShotDataset, FewShotDataset], tmp_path: Path
) -> None:
    pretrain(_cfg(epochs=1), *tiny, tmp_path)
    with pytest.raises(CheckpointError, match="another configuration"):
        pretrain(_cfg(epochs=2, lr=0.01), *tiny, tmp_path)


def test_checkpoint_refuses_other_backbone_or_size(
    tiny: tuple[FewShotDataset, FewShotDataset], tmp_path: Path
) -> None:
    pretrain(_cfg(epochs=1), *tiny, tmp_path)
    model, meta = load_backbone(tmp_path / "best.pt", backbone="conv4", image_size=16)
    assert meta["backbone"]["name"] == "conv4" and model.image_size == 16
    with pytest.raises(CheckpointError, match=r"trained with name=conv4.*name=conv6"):
        load_backbone(tmp_path / "best.pt", backbone="conv6")
    with pytest.raises(CheckpointError, match=r"image_size=16.*image_size=84"):
        load_backbone(tmp_path / "best.pt", image_size=84)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="run the pre-training step"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown pre-training parameter.*epoch_count"):
        PretrainConfig.from_dict({"epoch_count": 3})
    with pytest.raises(ValueError, match="unknown method 'reptile'"):
        PretrainConfig(method="reptile")


@pytest.mark.parametrize("method", ["protonet", "maml"])
def test_episodes_a_split_cannot_supply_are_refused_before_any_work(
    method: str, tiny, tmp_path: Path
) -> None:
    """20 images a class (like Omniglot's drawings): 5-shot 16-query training episodes need 21."""
    cfg = _cfg(method=method, train_shot=5, train_query=16)
    with pytest.raises(DataError, match=r"train_shot \+ train_query must be at most 20"):
        pretrain(cfg, *tiny, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match=r"val_shot \+ val_query = 21 images.*the smallest has 20"):
        pretrain(_cfg(val_shot=5, val_query=16), *tiny, tmp_path / "run")
    no_size_advice = r"fewer than val_way=6; lower val_way or use a split with more classes$"
    with pytest.raises(DataError, match=no_size_advice):
        pretrain(_cfg(val_way=6), *tiny, tmp_path / "run")  # 5 classes: their size is not it
    assert not (tmp_path / "run").exists()


@pytest.mark.smoke_reader
def test_smoke_preset_learns_beyond_chance_and_beyond_its_initialisation(smoke_run: Path) -> None:
    """The shared smoke run's pre-training (notebook 01 on the synthetic default), scored by its
    own 5-way 5-shot nearest-centroid validation (chance 0.2), against the same initial weights
    on the same validation episodes. Measured on this kit's CPU: untrained Conv4 about 0.68,
    after the smoke pre-training 0.93."""
    best = load_checkpoint(smoke_run / "pretrain" / "best.pt")
    cfg = PretrainConfig.from_dict(best["meta"]["config"])
    assert {k: getattr(cfg, k) for k in get_preset("smoke")["pretrain"]} == get_preset("smoke")[
        "pretrain"
    ]
    data = best["meta"]["dataset"]
    val = load_dataset(data["name"], data["val_split"])
    assert val.image_size == data["image_size"]
    episodes = sample_episodes(
        val, cfg.val_way, cfg.val_shot, cfg.val_query, cfg.val_episodes, seed=cfg.seed
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        untrained = create_backbone(
            cfg.backbone, in_channels=val.channels, image_size=val.image_size
        )
    before = nearest_centroid_accuracy(untrained, val, episodes, torch.device("cpu")).mean()
    assert best["best_val"] > 0.2 + 0.5, best["history"]
    assert best["best_val"] > before + 0.1, (before, best["history"])


def test_feature_norm_freezes_bn_affine_and_tracks_statistics(
    tiny: tuple[FewShotDataset, FewShotDataset], tmp_path: Path
) -> None:
    """FN pre-training: γ = 1, β = 0 throughout, running statistics still move."""
    fn = pretrain(_cfg(epochs=2, feature_norm=True), *tiny, tmp_path / "fn")
    ckpt = load_checkpoint(fn.last_checkpoint)
    assert ckpt["meta"]["config"]["feature_norm"] is True
    weights = {k: v for k, v in ckpt["backbone"].items() if k.endswith(("bn.weight", "bn.bias"))}
    assert len(weights) == 8
    for key, value in weights.items():
        assert torch.equal(value, torch.ones_like(value) if key.endswith("weight") else
                           torch.zeros_like(value)), key  # fmt: skip
    means = [v for k, v in ckpt["backbone"].items() if k.endswith("running_mean")]
    assert all(float(m.abs().sum()) > 0 for m in means)  # statistics tracked
    plain = load_checkpoint(pretrain(_cfg(epochs=2), *tiny, tmp_path / "bn").last_checkpoint)
    assert not torch.equal(plain["backbone"]["block1.bn.weight"], weights["block1.bn.weight"])
    # a resumed run of a checkpoint written before the setting existed reads it as False
    del plain["meta"]["config"]["feature_norm"]
    assert PretrainConfig.from_dict(plain["meta"]["config"]).feature_norm is False


def test_protonet_temperature_divides_the_training_logits(
    tiny: tuple[FewShotDataset, FewShotDataset], tmp_path: Path
) -> None:
    """The first episode's recorded loss is the cross-entropy of −‖q − c‖² / temperature on the
    run's initial weights (no augmentation, so the inputs are known)."""
    from ptx_utils.data.augment import normalize
    from ptx_utils.models.features import centroid_logits

    train, val = tiny
    kw = {"method": "protonet", "epochs": 1, "episodes_per_epoch": 1, "train_shot": 2}
    kw |= {"train_query": 3, "crop": False, "flip": False, "jitter": 0.0}
    for temperature in (1.0, 8.0):
        cfg = _cfg(**kw, temperature=temperature)
        result = pretrain(cfg, train, val, tmp_path / str(temperature))
        episode = sample_episodes(train, 5, 2, 3, 1, seed=cfg.seed * 100_003)
        idx = torch.from_numpy(
            np.concatenate([episode.support[0].ravel(), episode.query[0].ravel()])
        )
        torch.manual_seed(cfg.seed)
        backbone = create_backbone("conv4", in_channels=train.channels, image_size=16).train()
        with torch.no_grad():
            feats = backbone(normalize(train.images[idx]))
        logits = centroid_logits(feats[:10].reshape(1, 5, 2, -1), feats[None, 10:])[0]
        truth = torch.arange(5).repeat_interleave(3)
        expected = torch.nn.functional.cross_entropy(logits / temperature, truth).item()
        assert result.history[0]["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert load_checkpoint(tmp_path / "8.0" / "last.pt")["meta"]["config"]["temperature"] == 8.0
    with pytest.raises(CheckpointError, match="another configuration"):
        pretrain(_cfg(**{**kw, "epochs": 2}, temperature=2.0), train, val, tmp_path / "8.0")


def test_temperature_is_protonets_and_positive() -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        PretrainConfig(method="protonet", temperature=0.0)
    with pytest.raises(ValueError, match="method 'baseline\\+\\+' has none: leave it at 1"):
        PretrainConfig(method="baseline++", temperature=64.0)
    old = {k: v for k, v in vars(PretrainConfig(method="protonet")).items() if k != "temperature"}
    assert PretrainConfig.from_dict(old).temperature == 1.0  # checkpoints from before the option
