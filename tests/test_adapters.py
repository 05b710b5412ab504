"""TSA and LT+NCC: the batched engine equals the sequential reference (torch.optim.Adadelta).

Step counts are where float32 itself is stable on a random backbone: on one 5-shot replica here
the two engines matched at 5e-6 for 5 steps and jumped to 1e-3 at step 8 and 4e-2 at step 10 (in
vmap and in the loop alike), while in float64 both engines agreed to the float32 rounding of the
logits at every step count up to 15 — a ReLU / max-pool tie flipping on a rounding-level
difference, not a drift.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ptx_utils.finetuning import (
    Attachment,
    FinetuneConfig,
    Replica,
    Scheme,
    Strategy,
    finetune_batched,
    finetune_sequential,
    lt_ncc,
    tsa,
    with_adabn,
)
from ptx_utils.finetuning.adapters import (
    ALPHA,
    AdapterSpec,
    adadelta_step,
    attach_residual_adapters,
)
from ptx_utils.models import create_backbone

TOL = {"atol": 1e-4, "rtol": 1e-4}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _check(backbone, strategies, eb, vectorize="auto", chunk_size=None):
    replicas = [Replica(s, e) for s in strategies for e in range(2)]
    res = finetune_batched(
        backbone, replicas, eb.support_images, eb.support_labels, eb.query_images, 5,
        FinetuneConfig(passes=1), chunk_size=chunk_size, progress=False, vectorize=vectorize,
    )  # fmt: skip
    assert not bool(res.diverged.any())
    for i, r in enumerate(replicas):
        e = r.episode
        ref = finetune_sequential(
            backbone, r.strategy, eb.support_images[e], eb.support_labels[e], eb.query_images[e], 5
        )
        torch.testing.assert_close(res.logits[i], ref.logits, **TOL, msg=str(r.strategy))
    return res


@pytest.mark.parametrize("shot", [1, 5])
def test_tsa_and_lt_ncc_equal_sequential(conv4, tiny_episodes, shot) -> None:
    strategies = [
        tsa(4, steps=5),
        lt_ncc(4, steps=10),
        tsa(4, alpha_lr=0.05, beta_lr=0.1, steps=5),  # URL's seen-domain rates
        with_adabn(lt_ncc(4, steps=10)),
    ]
    _check(conv4, strategies, tiny_episodes[shot])


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_tsa_vmap_and_loop_with_adabn(conv4, tiny_episodes, vectorize) -> None:
    _check(conv4, [with_adabn(tsa(4, steps=5), transductive=True)], tiny_episodes[1], vectorize, 1)


def test_tsa_default_steps_and_alpha_only(conv4, tiny_episodes) -> None:
    alpha_only = Strategy(
        Scheme((0,) * 4, 0.0), classifier="ncc-cosine", optimizer="adadelta",
        attachments=(Attachment("residual-adapter", 0.5, {"init": 1e-3}),), steps=5,
    )  # fmt: skip
    _check(conv4, [alpha_only], tiny_episodes[1])
    assert AdapterSpec.of(replace(tsa(4), steps=None)).steps == 40 == tsa(4).steps
    assert AdapterSpec.of(alpha_only) == AdapterSpec(0.5, None, 5, 1e-3)


def test_adapters_change_the_prediction_and_start_near_ncc(conv4, tiny_episodes) -> None:
    eb = tiny_episodes[5]
    args = (eb.support_images[0], eb.support_labels[0], eb.query_images[0], 5)
    start = finetune_sequential(conv4, tsa(4, steps=0), *args).logits
    ncc = finetune_sequential(conv4, Strategy(Scheme((0,) * 4, 0), classifier="ncc-cosine"), *args)
    # α = 1e-4 · I and β = I: 10 × the cosine nearest centroid, before any step
    torch.testing.assert_close(start, 10 * ncc.logits, atol=5e-3, rtol=1e-3)
    trained = finetune_sequential(conv4, tsa(4, steps=20), *args).logits
    assert not torch.allclose(trained, start, atol=1e-3)


def test_attach_residual_adapters_identity_and_names(conv4) -> None:
    import copy

    bb = copy.deepcopy(conv4).eval()
    x = torch.randn(2, 3, 16, 16)
    before = bb(x)
    names = attach_residual_adapters(bb, init=0.0)
    assert names == [f"block{i}.conv.{ALPHA}" for i in range(1, 5)]
    torch.testing.assert_close(bb(x), before)  # α = 0: the backbone's own output
    assert tuple(dict(bb.named_parameters())[names[0]].shape) == (64, 3, 1, 1)
    resnet = create_backbone("resnet12", image_size=16)
    assert len(attach_residual_adapters(resnet)) == 12  # 3 per residual block, none on shortcuts


def test_functional_adadelta_equals_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 4, generator=gen)
    grads = [torch.randn(3, 4, generator=gen) for _ in range(5)]
    ref = p0.clone().requires_grad_(True)
    opt = torch.optim.Adadelta([ref], lr=0.7)
    tp, state = {"w": p0.clone()}, {}
    for g in grads:
        ref.grad = g.clone()
        opt.step()
        adadelta_step(tp, {"w": g}, state, {"w": torch.full((3,), 0.7)}, torch.ones(3, dtype=bool))
    torch.testing.assert_close(tp["w"], ref.detach())


def test_attachment_strategies_refused_where_not_implemented(conv4, tiny_episodes) -> None:
    eb = tiny_episodes[1]
    beta = (Attachment("pre-classifier", 1.0),)
    bad = {
        "sgd": Strategy(Scheme((0,) * 4, 0), classifier="ncc-cosine", attachments=beta),
        "trained layers": Strategy(
            Scheme((0, 0, 0, 0.1), 0),
            classifier="ncc-cosine",
            optimizer="adadelta",
            attachments=beta,
        ),
        "adadelta without": Strategy(Scheme((0,) * 4), optimizer="adadelta"),
    }
    for what, s in bad.items():
        assert s.unimplemented(), what
        with pytest.raises(NotImplementedError):
            finetune_batched(conv4, [Replica(s, 0)], eb.support_images, eb.support_labels,
                             eb.query_images, 5, progress=False)  # fmt: skip
