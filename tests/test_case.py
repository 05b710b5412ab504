"""CaSE blocks: identity at initialisation, γ from the context set, stored for inference."""

from __future__ import annotations

import pytest
import torch

from ptx_utils.finetuning.case import CaSE, CaSENetwork
from ptx_utils.models import create_backbone

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
