"""Nearest centroid, logistic regression, the channel importance transform and AdaBN: both engines.

Every batched path equals the sequential reference (fp32, 1e-4); the transform's values are the
paper's formula; logistic regression converges (gradient norm) with two different solvers that
agree.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ptx_utils.data import FewShotDataset
from ptx_utils.data.augment import normalize
from ptx_utils.data.episodes import EpisodeBatch, sample_episodes
from ptx_utils.finetuning import (
    FinetuneConfig,
    Replica,
    Scheme,
    Strategy,
    finetune_batched,
    finetune_sequential,
    last_k,
    linear_probe,
    logistic_regression,
    nearest_centroid,
    with_adabn,
    with_channel_importance,
    with_prototype_head,
)
from ptx_utils.finetuning.bn_stats import episode_statistics
from ptx_utils.finetuning.closed_form import (
    fit_logistic_regression,
    logistic_regression_reference,
    nearest_centroid_logits,
    primal_gradient_norm,
)
from ptx_utils.finetuning.feature_transform import channel_importance
from ptx_utils.finetuning.prototype_init import support_prototypes
from ptx_utils.models import Backbone
from ptx_utils.models.features import nearest_centroid_accuracy

TOL = {"atol": 1e-4, "rtol": 1e-4}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def episodes(synthetic_test: FewShotDataset) -> dict[int, EpisodeBatch]:
    return {
        shot: sample_episodes(synthetic_test, 5, shot, 4, 3, seed=2).tensors(synthetic_test)
        for shot in (1, 5)
    }


def _check(backbone: Backbone, strategies: list[Strategy], eb: EpisodeBatch, cfg: FinetuneConfig):
    replicas = [Replica(s, e, seed=3 * i + e) for i, s in enumerate(strategies) for e in range(3)]
    res = finetune_batched(
        backbone, replicas, eb.support_images, eb.support_labels, eb.query_images, 5, cfg,
        progress=False,
    )  # fmt: skip
    assert not bool(res.diverged.any())
    for i, r in enumerate(replicas):
        e = r.episode
        ref = finetune_sequential(
            backbone, r.strategy, eb.support_images[e], eb.support_labels[e], eb.query_images[e],
            5, cfg, r.seed,
        )  # fmt: skip
        torch.testing.assert_close(res.logits[i], ref.logits, **TOL, msg=f"{r.strategy}")
    return res


# -- the channel importance transform --------------------------------------------------------


def test_channel_importance_values() -> None:
    x = torch.tensor([0.0, 1e-3, 0.1, 1.0, 10.0], dtype=torch.float64)

    def psi(v: float, k: float = 1.3) -> float:  # the authors' ψ, with their 1e-5
        return 1.0 / math.log(1.0 / (v + 1e-5) + 1.0) ** k

    expected = [psi(v) - psi(0.0) for v in x.tolist()]
    torch.testing.assert_close(channel_importance(x), torch.tensor(expected, dtype=x.dtype))
    assert float(channel_importance(torch.tensor(0.0))) == 0.0
    assert abs(psi(0.0) - 0.0417) < 1e-4  # the constant the code's two branches cancel at 0
    # φ(1) ≈ 1 / ln(2)^1.3 − ψ(0) = 1.61037 − 0.04173
    assert abs(float(channel_importance(torch.tensor(1.0, dtype=torch.float64))) - 1.56865) < 1e-4
    # odd extension; k = 1 is ln(1 + 1/x)^-1 (less ψ(0))
    torch.testing.assert_close(channel_importance(-x), -channel_importance(x))
    k1 = float(channel_importance(torch.tensor(2.0, dtype=torch.float64), k=1.0))
    assert abs(k1 - (1 / math.log(1.5) - psi(0.0, 1.0))) < 1e-4
    with pytest.raises(ValueError, match="k must be > 0"):
        channel_importance(x, k=0)


def test_channel_importance_monotone_and_concave() -> None:
    """Increasing on [0, ∞); concave on (0, x*] (x* ≈ 0.344 at k = 1.3), everywhere at k = 1."""
    x = torch.linspace(1e-4, 0.33, 4000, dtype=torch.float64)
    y = channel_importance(x)
    assert bool((y.diff() > 0).all())
    assert bool((y.diff().diff() < 0).all())  # second differences: concave below x*
    wide = torch.logspace(-4, 3, 4000, dtype=torch.float64)
    assert bool((channel_importance(wide).diff() > 0).all())
    uniform = torch.linspace(1e-4, 50.0, 4000, dtype=torch.float64)
    assert bool((channel_importance(uniform, k=1.0).diff().diff() < 0).all())
    beyond = torch.linspace(0.36, 5.0, 2000, dtype=torch.float64)
    assert bool((channel_importance(beyond).diff().diff() > 0).all())  # convex beyond x*


def test_channel_importance_option_checked() -> None:
    with pytest.raises(ValueError, match="reads frozen features"):
        with_channel_importance(last_k(4, 1, 0.01))
    with pytest.raises(ValueError, match="takes options"):
        Strategy(
            Scheme((0,) * 4), feature_transform="channel-importance", transform_options={"q": 1}
        )
    with pytest.raises(ValueError, match="takes options"):
        Strategy(Scheme((0,) * 4), transform_options={"k": 1.3})
    with pytest.raises(ValueError, match="k must be > 0"):
        Strategy(Scheme((0,) * 4), feature_transform="channel-importance",
                 transform_options={"k": -1})  # fmt: skip


# -- logistic regression -----------------------------------------------------------------------


@pytest.mark.parametrize(("shot", "dim"), [(1, 64), (5, 64), (5, 200)])
def test_logistic_regression_converges_and_matches_lbfgs(shot: int, dim: int) -> None:
    gen = torch.Generator().manual_seed(shot * dim)
    n = 5 * shot
    x = F.normalize(torch.rand(4, n, dim, generator=gen) ** 3, dim=-1)
    y = torch.arange(5).repeat_interleave(shot).expand(4, n).contiguous()
    fit = fit_logistic_regression(x, y, 5)
    assert bool((fit.grad_norm < 1e-8).all()), fit.grad_norm
    assert fit.iterations < 30
    q = F.normalize(torch.rand(4, 7, dim, generator=gen) ** 3, dim=-1)
    for e in range(4):
        ref = logistic_regression_reference(x[e], y[e], 5)
        assert float(ref.grad_norm) < 1e-5
        torch.testing.assert_close(fit.logits(q)[e : e + 1], ref.logits(q[e : e + 1]), **TOL)
    torch.testing.assert_close(fit.bias.sum(1), torch.zeros(4, dtype=torch.float64))
    # stationary point: recomputed gradient norm is what the fit reported
    torch.testing.assert_close(primal_gradient_norm(x, y, fit.weight, fit.bias), fit.grad_norm)


def test_logistic_regression_fits_separable_support_and_regularises() -> None:
    gen = torch.Generator().manual_seed(0)
    x = F.normalize(torch.rand(2, 10, 32, generator=gen), dim=-1)
    y = torch.arange(5).repeat(2).expand(2, 10).contiguous()
    fit = fit_logistic_regression(x, y, 5)
    assert bool((fit.logits(x).argmax(-1) == y).all())  # the support set is fitted
    strong = fit_logistic_regression(x, y, 5, c=1e-3)
    assert float(strong.weight.norm()) < float(fit.weight.norm())  # a smaller C shrinks W
    with pytest.raises(ValueError, match="C > 0"):
        fit_logistic_regression(x, y, 5, c=0)


# -- the strategies on both engines --------------------------------------------------------------


@pytest.mark.parametrize("shot", [1, 5])
def test_closed_form_strategies_equal_sequential(conv4, episodes, shot) -> None:
    strategies = [
        nearest_centroid(4, "euclidean"),
        nearest_centroid(4, "cosine"),
        logistic_regression(4),
        with_channel_importance(nearest_centroid(4, "cosine")),
        with_channel_importance(logistic_regression(4)),
        with_adabn(nearest_centroid(4)),
        with_adabn(logistic_regression(4), transductive=True),
    ]
    _check(conv4, strategies, episodes[shot], FinetuneConfig(passes=2))


def test_nearest_centroid_is_the_kits_probe(conv4, synthetic_test) -> None:
    """The NCC strategy's accuracy equals the pre-training probe's on the same episodes."""
    eps = sample_episodes(synthetic_test, 5, 1, 4, 4, seed=5)
    eb = eps.tensors(synthetic_test)
    for metric in ("euclidean", "cosine"):
        res = finetune_batched(
            conv4, [Replica(nearest_centroid(4, metric), e) for e in range(4)],
            eb.support_images, eb.support_labels, eb.query_images, 5, progress=False,
        )  # fmt: skip
        acc = (res.logits.argmax(-1) == eb.query_labels).double().mean(1).numpy()
        probe = nearest_centroid_accuracy(conv4, synthetic_test, eps, torch.device("cpu"), metric)
        assert acc.tolist() == pytest.approx(probe.tolist())


def test_nearest_centroid_logits_unsorted_labels() -> None:
    s = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 3.0]]])
    y = torch.tensor([[1, 0, 1]])
    logits = nearest_centroid_logits(s, y, torch.tensor([[[0.0, 2.0]]]), 2, "euclidean")
    assert logits.tolist() == [[[-5.0, 0.0]]]


@pytest.mark.parametrize("shot", [1, 5])
def test_trained_strategies_with_cit_and_adabn_equal_sequential(conv4, episodes, shot) -> None:
    strategies = [
        with_channel_importance(linear_probe(4)),
        with_adabn(linear_probe(4)),
        with_adabn(last_k(4, 1, 0.01)),
        with_adabn(Strategy(Scheme((0, 0, 0.01, 0.1)), classifier="cosine"), transductive=True),
        with_channel_importance(with_adabn(linear_probe(4))),
        with_channel_importance(Strategy(Scheme((0,) * 4), classifier="cosine")),
        linear_probe(4),
    ]
    _check(conv4, strategies, episodes[shot], FinetuneConfig(passes=3))


def test_adabn_with_bn_train_mode_and_augmentation(conv4, episodes) -> None:
    strategies = [with_adabn(last_k(4, 1, 0.01)), with_adabn(linear_probe(4)), last_k(4, 2, 0.01)]
    _check(conv4, strategies, episodes[5], FinetuneConfig(passes=1, bn_mode="train"))
    _check(conv4, strategies[:2], episodes[1], FinetuneConfig(passes=2, augment=True))


def test_adabn_statistics_are_the_support_batch(conv4, episodes) -> None:
    images = episodes[5].support_images[0]
    stats = episode_statistics(conv4, images)
    assert "block1.bn.running_mean" in stats and "block4.bn.num_batches_tracked" in stats
    x = conv4.block1.conv(normalize(images))  # type: ignore[operator]
    torch.testing.assert_close(stats["block1.bn.running_mean"], x.mean((0, 2, 3)))
    torch.testing.assert_close(
        stats["block1.bn.running_var"], x.var((0, 2, 3)), rtol=1e-4, atol=1e-5
    )
    assert not torch.allclose(stats["block1.bn.running_mean"], conv4.block1.bn.running_mean)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="M >= 2"):
        episode_statistics(conv4, images[:1])


def test_adabn_changes_logits_and_leaves_backbone(conv4, episodes) -> None:
    eb = episodes[1]
    before = {k: v.clone() for k, v in conv4.state_dict().items()}
    args = (eb.support_images[0], eb.support_labels[0], eb.query_images[0], 5)
    plain = finetune_sequential(conv4, nearest_centroid(4), *args)
    ada = finetune_sequential(conv4, with_adabn(nearest_centroid(4)), *args)
    trans = finetune_sequential(conv4, with_adabn(nearest_centroid(4), True), *args)
    assert not torch.allclose(plain.logits, ada.logits)
    assert not torch.allclose(ada.logits, trans.logits)
    for k, v in conv4.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_closed_form_with_trained_layers_refused(conv4, episodes) -> None:
    eb = episodes[1]
    bad = Strategy(Scheme((0, 0, 0, 0.1)), classifier="ncc-cosine")
    with pytest.raises(NotImplementedError, match="with trained layers"):
        finetune_sequential(conv4, bad, eb.support_images[0], eb.support_labels[0],
                            eb.query_images[0], 5)  # fmt: skip
    with pytest.raises(NotImplementedError, match="with trained layers"):
        finetune_batched(conv4, [Replica(bad, 0)], eb.support_images, eb.support_labels,
                         eb.query_images, 5, progress=False)  # fmt: skip


def test_strategy_names_and_round_trip() -> None:
    for s in (
        nearest_centroid(4, "euclidean"),
        with_adabn(logistic_regression(4), transductive=True),
        with_channel_importance(linear_probe(4), k=1.0),
    ):
        assert Strategy.from_dict(s.to_dict()) == s
        assert not s.unimplemented()
    assert with_adabn(linear_probe(4), True).name == "linear probe + AdaBN (transductive)"
    assert "bn support+query" in str(with_adabn(linear_probe(4), True))


# -- a head initialised from the support prototypes ------------------------------------------


def test_prototype_heads_equal_sequential(conv4, episodes) -> None:
    """5-shot, so each prototype is a mean of five support features."""
    strategies = [
        with_prototype_head(linear_probe(4, 0.01)),
        with_prototype_head(Strategy(Scheme((0, 0, 0.01, 0.1))), head="linear"),
        with_prototype_head(with_adabn(last_k(4, 1, 0.01))),
        with_prototype_head(with_channel_importance(linear_probe(4, 0.01)), head="linear"),
        linear_probe(4, 0.01),
    ]
    _check(conv4, strategies, episodes[5], FinetuneConfig(head="cosine", passes=2))


@pytest.mark.parametrize("transductive", [False, True])
def test_prototype_heads_start_at_nearest_centroid(conv4, episodes, transductive) -> None:
    """With no update the cosine prototype head is cosine nearest centroid times the head's
    scale (2); the linear one (Proto-MAML's 2c, -‖c‖²) ranks classes as Euclidean NCC."""
    eb = episodes[5]
    cfg = FinetuneConfig(passes=0)
    pairs = [("cosine", "cosine"), ("linear", "euclidean")]
    for head, metric in pairs:
        proto = with_adabn(with_prototype_head(linear_probe(4), head), transductive)
        ncc = with_adabn(nearest_centroid(4, metric), transductive)
        reps = [Replica(s, e, seed=e) for s in (proto, ncc) for e in range(3)]
        res = finetune_batched(
            conv4, reps, eb.support_images, eb.support_labels, eb.query_images, 5, cfg,
            progress=False,
        )  # fmt: skip
        mine, theirs = res.logits[:3], res.logits[3:]
        if head == "cosine":
            torch.testing.assert_close(mine, 2 * theirs, **TOL)
        else:  # -‖x - c‖² + ‖x‖²: the same order per query
            shift = mine - theirs
            torch.testing.assert_close(shift, shift[..., :1].expand_as(shift), **TOL)
        assert torch.equal(mine.argmax(-1), theirs.argmax(-1))


def test_prototype_head_needs_every_class_and_an_sgd_strategy(conv4) -> None:
    with pytest.raises(ValueError, match="cover every class"):
        support_prototypes(
            conv4, torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.tensor([0, 2]), 3
        )
    with pytest.raises(ValueError, match="has none"):
        with_prototype_head(nearest_centroid(4))
    with pytest.raises(ValueError, match="'cosine' or 'linear'"):
        with_prototype_head(linear_probe(4), head="prototype")
    s = with_prototype_head(linear_probe(4))
    assert Strategy.from_dict(s.to_dict()) == s
    assert s.protocol(FinetuneConfig(head="linear")).head == "cosine"
