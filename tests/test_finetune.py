"""The sequential fine-tuning reference: protocol, determinism, frozen layers, divergence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptx_utils.data import FewShotDataset, load_dataset
from ptx_utils.data.augment import normalize
from ptx_utils.data.episodes import EpisodeBatch, sample_episodes
from ptx_utils.finetuning.fixed import bn_affine, full_finetune, linear_probe
from ptx_utils.finetuning.protocol import FinetuneConfig, replica_plan
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.finetuning.sequential import finetune_sequential
from ptx_utils.models import Backbone, create_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def novel() -> FewShotDataset:
    return load_dataset("synthetic", "test", image_size=16, images_per_class=30)


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_backbone("conv4", in_channels=3, image_size=16)


@pytest.fixture(scope="module")
def batch(novel: FewShotDataset) -> EpisodeBatch:
    return sample_episodes(novel, 5, 5, 5, 2, seed=0).tensors(novel)


def _run(
    backbone: Backbone,
    scheme: Scheme,
    batch: EpisodeBatch,
    cfg: FinetuneConfig,
    seed: int = 3,
    e: int = 0,
) -> torch.Tensor:
    return finetune_sequential(
        backbone,
        scheme,
        batch.support_images[e],
        batch.support_labels[e],
        batch.query_images[e],
        5,
        cfg,
        seed,
    ).logits


def test_plan_covers_every_support_image_once_per_pass() -> None:
    cfg = FinetuneConfig(passes=3, batch_size=4)
    plan = replica_plan(7, n_support=10, n_way=5, in_dim=8, cfg=cfg)
    assert plan.batches.shape == (9, 4)  # 3 passes x ceil(10 / 4) steps
    for p in range(3):
        rows = plan.batches[3 * p : 3 * p + 3].ravel()
        assert sorted(rows[rows >= 0].tolist()) == list(range(10))
    assert torch.equal(plan.head_weight, replica_plan(7, 10, 5, 8, cfg).head_weight)
    assert plan.head_weight.abs().max() <= 8**-0.5


def test_same_seed_same_logits_other_seed_other(backbone: Backbone, batch: EpisodeBatch) -> None:
    cfg = FinetuneConfig(passes=3)
    a = _run(backbone, full_finetune(4, 0.1), batch, cfg, seed=1)
    b = _run(backbone, full_finetune(4, 0.1), batch, cfg, seed=1)
    c = _run(backbone, full_finetune(4, 0.1), batch, cfg, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_backbone_is_left_unchanged(backbone: Backbone, batch: EpisodeBatch) -> None:
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    _run(backbone, full_finetune(4, 0.1), batch, FinetuneConfig(passes=2))
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_linear_probe_equals_training_the_head_on_frozen_features(
    backbone: Backbone, batch: EpisodeBatch
) -> None:
    """Frozen layers: the same as embedding once and training only the head by hand."""
    cfg = FinetuneConfig(passes=4)
    logits = _run(backbone, linear_probe(4), batch, cfg, seed=5)
    backbone.eval()
    with torch.no_grad():
        fs = backbone(normalize(batch.support_images[0]))
        fq = backbone(normalize(batch.query_images[0]))
    plan = replica_plan(5, len(fs), 5, backbone.out_dim, cfg)
    w, b = plan.head_weight.clone().requires_grad_(), plan.head_bias.clone().requires_grad_()
    opt = torch.optim.SGD([w, b], lr=0.01, momentum=0.9, dampening=0.9, weight_decay=1e-3)
    for row in plan.batches:
        idx = row[row >= 0]
        loss = F.cross_entropy(fs[idx] @ w.T + b, batch.support_labels[0][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(logits, fq @ w.detach().T + b.detach(), atol=1e-5, rtol=1e-5)


def test_bn_only_and_mixed_schemes_differ_from_linear_probe(
    backbone: Backbone, batch: EpisodeBatch
) -> None:
    cfg = FinetuneConfig(passes=3)
    probe = _run(backbone, linear_probe(4), batch, cfg)
    assert not torch.allclose(probe, _run(backbone, bn_affine(4, 0.1), batch, cfg))
    assert not torch.allclose(probe, _run(backbone, Scheme((0, 0, 0.01, 0.1)), batch, cfg))


def test_divergence_is_reported_not_raised(backbone: Backbone, batch: EpisodeBatch) -> None:
    cfg = FinetuneConfig(passes=5)
    result = finetune_sequential(
        backbone,
        Scheme((1.0,) * 4, head_lr=1.0),
        batch.support_images[0],
        batch.support_labels[0],
        batch.query_images[0],
        5,
        cfg,
        seed=0,
    )
    assert result.diverged and torch.isnan(result.logits).all()
    assert result.logits.shape == (25, 5)


def test_bad_protocol_values_are_refused() -> None:
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        FinetuneConfig(bn_mode="frozen")
    with pytest.raises(ValueError, match="head must be one of"):
        FinetuneConfig(head="mlp")
