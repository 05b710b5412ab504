"""CaSE blocks: identity at initialisation, γ from the context set, stored for inference."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace

import pytest
import torch

from ptx_utils.data import load_dataset
from ptx_utils.data.augment import normalize
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.finetuning import Replica, Scheme, Strategy, case_meta, finetune_batched, uppercase
from ptx_utils.finetuning.case import CaSE, CaSENetwork
from ptx_utils.finetuning.case_meta import CaSEBlocks, CaSEMetaConfig, meta_train_case
from ptx_utils.finetuning.sequential import finetune_sequential
from ptx_utils.finetuning.uppercase import fit_head_sequential, load_case
from ptx_utils.models import Backbone, create_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net() -> CaSENetwork:
    torch.manual_seed(0)
    return CaSENetwork(create_backbone("conv4", in_channels=3, image_size=16))


def _perturb(block: CaSE, seed: int) -> None:
    """Non-zero last layer, as after meta-training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        block.l3.weight.copy_(torch.randn(block.l3.weight.shape, generator=gen))
        block.l3.bias.copy_(torch.randn(block.l3.bias.shape, generator=gen))


def test_zero_initialised_blocks_are_the_identity(net: CaSENetwork) -> None:
    x = torch.randn(7, 3, 16, 16)
    with torch.no_grad():
        want = net.backbone(x)
        with net.context():
            got_context = net(x)
        got = net(x)
    assert all(torch.equal(b.gamma, torch.ones_like(b.gamma)) for b in net.blocks)
    torch.testing.assert_close(got_context, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    hidden = [b.l1.out_features for b in net.blocks]
    assert hidden == [16] * 4  # max(16, 64 // 64), as the released code


def test_inference_uses_the_gamma_of_the_context_set() -> None:
    torch.manual_seed(1)
    net = CaSENetwork(create_backbone("conv4", in_channels=3, image_size=16))
    for i, block in enumerate(net.blocks):
        _perturb(block, i)
    support, query = torch.randn(5, 3, 16, 16), torch.randn(6, 3, 16, 16)
    with torch.no_grad(), net.context():
        net(support)
    stored = [b.gamma.clone() for b in net.blocks]
    with torch.no_grad():
        out = net(query)
        # by hand: stage by stage, each scaled by the γ its block computed on the support set
        s, q = support, query
        for stage, block, gamma in zip(net.stages, net.blocks, stored, strict=True):
            s = stage.run(net.backbone, s)
            torch.testing.assert_close(block.gamma_of(s), gamma)
            s = s * gamma.view(1, -1, 1, 1)
            q = stage.run(net.backbone, q) * gamma.view(1, -1, 1, 1)
        torch.testing.assert_close(out, net.tail(net.backbone, q))
        assert not torch.allclose(stored[0], torch.ones_like(stored[0]))
        assert all(float(g.min()) > 0 and float(g.max()) < 2 for g in stored)  # 2·sigmoid
        with net.context():
            net(query)  # another context: other γ
        assert not torch.allclose(net.blocks[0].gamma, stored[0])


def test_standardised_context_ignores_a_positive_affine_map() -> None:
    block = CaSE(64)
    _perturb(block, 3)
    x = torch.rand(5, 64, 4, 4) * torch.linspace(0, 4, 64).view(1, -1, 1, 1)
    with torch.no_grad():  # equal up to the 1e-5 under the square root
        torch.testing.assert_close(block.gamma_of(3 * x + 2), block.gamma_of(x), atol=1e-4, rtol=0)


def test_only_the_case_blocks_train(net: CaSENetwork) -> None:
    net.train()
    assert not net.backbone.training and all(b.training for b in net.blocks)
    with net.context():
        out = net(torch.randn(5, 3, 16, 16))
    out.sum().backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None for p in net.blocks.parameters())
    net.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="CaSE mode"):
        net.set_mode("adaptive")


# -- UpperCaSE: meta-training and the strategy on both engines ----------------------------------

TINY = {"image_size": 16, "images_per_class": 12, "classes": (10, 5, 5)}
CFG = CaSEMetaConfig(episodes=4, k_shot=1, n_query=3, head_steps=5, tasks_per_step=2,
                     checkpoint_every=2)  # fmt: skip


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(2)
    return create_backbone("conv4", in_channels=3, image_size=16).eval()


@pytest.fixture(scope="module")
def trained(backbone, tmp_path_factory) -> CaSEBlocks:
    base = load_dataset("synthetic", "train", **TINY)
    return meta_train_case(backbone, base, CFG, tmp_path_factory.mktemp("case"), progress=False)


def test_meta_training_resumes_to_the_uninterrupted_blocks(
    backbone, trained, tmp_path, monkeypatch
) -> None:
    base = load_dataset("synthetic", "train", **TINY)
    real = case_meta._episode

    def killed_at_third(net, batch, cfg, e):
        if e == 2:
            raise KeyboardInterrupt
        return real(net, batch, cfg, e)

    monkeypatch.setattr(case_meta, "_episode", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        meta_train_case(backbone, base, CFG, tmp_path, progress=False)
    assert torch.load(tmp_path / "state.pt", weights_only=True)["done"] == 2
    monkeypatch.setattr(case_meta, "_episode", real)
    with pytest.raises(ValueError, match=r"config\.episodes"):  # other settings: refused
        meta_train_case(backbone, base, replace(CFG, episodes=6), tmp_path, progress=False)
    resumed = meta_train_case(backbone, base, CFG, tmp_path, progress=False)
    a = torch.load(resumed.path, weights_only=True)["blocks"]
    b = torch.load(trained.path, weights_only=True)["blocks"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert resumed.record["curve"] == trained.record["curve"]
    assert any(float(v.abs().max()) > 0 for k, v in b.items() if k.endswith("l3.weight"))
    again = meta_train_case(backbone, base, CFG, trained.path.parent, progress=False)
    assert again.sha256 == trained.sha256  # a finished run is loaded, not redone
    assert all(p.requires_grad for p in backbone.parameters())  # the caller's backbone untouched


@pytest.mark.parametrize("shot", [1, 5])
def test_uppercase_batched_equals_sequential(backbone, trained, shot) -> None:
    test = load_dataset("synthetic", "test", **TINY)
    t = sample_episodes(test, 5, shot, 3, 3, seed=shot).tensors(test)
    strategy = uppercase(trained.reference, 4, steps=7)
    replicas = [Replica(strategy, e, seed=10 + e) for e in range(3)]
    tensors = (t.support_images, t.support_labels, t.query_images)
    batched = finetune_batched(backbone, replicas, *tensors, 5, progress=False, record=[0, 3, 7])
    for e in range(3):
        seq = finetune_sequential(
            backbone, strategy, t.support_images[e], t.support_labels[e], t.query_images[e], 5,
            seed=10 + e, record=[0, 3, 7],
        )  # fmt: skip
        torch.testing.assert_close(batched.logits[e], seq.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched.recorded[e], seq.recorded, atol=1e-4, rtol=1e-4)
        assert torch.equal(seq.recorded[0], torch.zeros_like(seq.recorded[0]))  # zero head
        assert torch.equal(seq.recorded[-1], seq.logits)  # a point at the last step: the end


def test_fresh_blocks_make_uppercase_a_head_on_frozen_features(backbone, tmp_path) -> None:
    """Zero-initialised CaSE blocks are the identity: the head is fitted on the plain features."""
    fresh = CaSENetwork(copy.deepcopy(backbone))
    path = tmp_path / "fresh.pt"
    torch.save({"blocks": fresh.blocks.state_dict()}, path)
    reference = f"{path}#{hashlib.sha256(path.read_bytes()).hexdigest()}"
    test = load_dataset("synthetic", "test", **TINY)
    t = sample_episodes(test, 5, 1, 3, 1, seed=0).tensors(test)
    got = finetune_sequential(
        backbone, uppercase(reference, 4, steps=6), t.support_images[0], t.support_labels[0],
        t.query_images[0], 5, seed=3,
    ).logits  # fmt: skip
    with torch.no_grad():
        s = backbone(normalize(t.support_images[0]))
        q = backbone(normalize(t.query_images[0]))
    head, _ = fit_head_sequential(s, t.support_labels[0], 5, 6, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, head(q).detach(), atol=1e-5, rtol=1e-5)


def test_uppercase_strategies_are_checked(trained) -> None:
    good = uppercase(trained.reference, 4)
    assert good.path == "case" and not good.unimplemented() and good.steps == 500
    assert replace(good, steps=None).unimplemented()
    assert replace(good, optimizer="sgd").unimplemented()
    assert replace(good, scheme=Scheme((0, 0, 0, 0.1), 0)).unimplemented()
    assert Strategy(Scheme((0,) * 4), classifier="zero-linear").unimplemented()
    assert Strategy(Scheme((0,) * 4), optimizer="adam").unimplemented()
    with pytest.raises(ValueError, match="sha256"):
        load_case(trained.reference[:-64] + "0" * 64)
