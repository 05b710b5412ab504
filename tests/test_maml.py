"""MAML: the batched inner loop equals a per-task loop, accuracy at several step counts from one
run, meta-training resumes exactly, and its checkpoint serves the kit's eval-mode strategies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ptx_utils.data import FewShotDataset, load_dataset
from ptx_utils.models import create_backbone, create_head
from ptx_utils.models.checkpoint import load_backbone, load_checkpoint
from ptx_utils.pretraining import PretrainConfig, pretrain
from ptx_utils.pretraining.maml import (
    InnerLoop,
    MamlNet,
    Tasks,
    adapt,
    adapted_accuracy,
    maml_params,
    meta_gradients,
    meta_gradients_loop,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"image_size": 16, "images_per_class": 20, "classes": (10, 5, 5)}


@pytest.fixture(scope="module")
def net_and_tasks() -> tuple[MamlNet, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1, image_size=16)
    head = create_head("linear", backbone.out_dim, 5)
    t, shot, query = 3, 1, 2
    xs, xq = torch.randn(t, 5 * shot, 1, 16, 16), torch.randn(t, 5 * query, 1, 16, 16)
    ys = torch.arange(5).repeat_interleave(shot).expand(t, -1)
    yq = torch.arange(5).repeat_interleave(query).expand(t, -1)
    return MamlNet(backbone, head), maml_params(backbone, head), Tasks(xs, ys, xq, yq)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("second_order", [False, True])
def test_batched_meta_gradient_equals_the_per_task_loop(net_and_tasks, second_order) -> None:
    net, params, tasks = net_and_tasks
    inner = InnerLoop(steps=2, lr=0.1, second_order=second_order)
    batched = meta_gradients(net, params, tasks, inner)
    looped = meta_gradients_loop(net, params, tasks, inner)
    assert _max_diff(batched[0], looped[0]) < 1e-4
    torch.testing.assert_close(batched[1], looped[1], atol=1e-5, rtol=1e-5)  # query losses
    assert torch.equal(batched[2], looped[2])  # query accuracies


def test_first_order_is_the_query_gradient_at_the_adapted_weights(net_and_tasks) -> None:
    """FOMAML's meta-gradient of one task is the query loss's gradient at the adapted weights;
    the second-order one differs from it (the inner gradients are differentiated)."""
    net, params, (xs, ys, xq, yq) = net_and_tasks
    one = Tasks(xs[:1], ys[:1], xq[:1], yq[:1])
    first, _, _ = meta_gradients(net, params, one, InnerLoop(2, 0.1))
    fast = {
        k: v.detach().requires_grad_(True)
        for k, v in adapt(net, params, xs[0], ys[0], 2, 0.1).items()
    }
    loss = F.cross_entropy(functional_call(net, fast, (xq[0],)), yq[0])
    direct = dict(zip(fast, torch.autograd.grad(loss, list(fast.values())), strict=True))
    assert _max_diff(first, direct) < 1e-5
    second, _, _ = meta_gradients(net, params, one, InnerLoop(2, 0.1, second_order=True))
    assert _max_diff(first, second) > 1e-3


def test_accuracy_at_several_step_counts_from_one_run(net_and_tasks) -> None:
    net, params, (xs, ys, xq, yq) = net_and_tasks
    at = [3, 0, 1]
    tasks = Tasks(xs, ys, xq, yq)
    acc = adapted_accuracy(net, params, tasks, at, lr=0.5)
    assert acc.shape == (3, 3)
    assert torch.equal(acc, adapted_accuracy(net, params, tasks, at, 0.5, vectorize=False))
    for j, steps in enumerate(at):  # each column equals a run of exactly that many steps
        for t in range(3):
            fast = adapt(net, params, xs[t], ys[t], steps, 0.5)
            pred = functional_call(net, fast, (xq[t],)).argmax(1)
            assert float(acc[t, j]) == pytest.approx(float((pred == yq[t]).float().mean()))
    with pytest.raises(ValueError, match="counts >= 0"):
        adapted_accuracy(net, params, tasks, [-1], 0.5)


def test_batch_norm_normalises_by_the_batch(net_and_tasks) -> None:
    """No running statistics: every forward, train or eval mode, is a train-mode forward of
    the original modules (batch statistics)."""
    net, params, (xs, _, _, _) = net_and_tasks
    assert all(getattr(m, "running_mean", None) is None for m in net.backbone.modules())
    torch.manual_seed(0)  # the fixture's initial weights again, with running statistics
    backbone = create_backbone("conv4", in_channels=1, image_size=16)
    head = create_head("linear", backbone.out_dim, 5)
    with torch.no_grad():
        for name, p in maml_params(backbone, head).items():
            p.copy_(params[name])
    want = head(backbone.train()(xs[0]))
    for mode in (True, False):
        got = functional_call(net.train(mode), params, (xs[0],))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny() -> tuple[FewShotDataset, FewShotDataset]:
    return load_dataset("synthetic", "train", **TINY), load_dataset("synthetic", "val", **TINY)


def _cfg(**kw: object) -> PretrainConfig:
    base = {
        "method": "maml", "epochs": 3, "episodes_per_epoch": 6, "meta_batch": 3,
        "train_shot": 1, "train_query": 3, "inner_steps": 2, "inner_lr": 0.1,
        "val_episodes": 4, "val_shot": 1, "val_query": 3, "device": "cpu", "seed": 3,
    }  # fmt: skip
    return PretrainConfig.from_dict({**base, **kw})


@pytest.mark.parametrize("second_order", [False, True])
def test_meta_training_resumes_to_the_uninterrupted_weights(tiny, tmp_path: Path, second_order):
    cfg = _cfg(second_order=second_order)
    straight = pretrain(cfg, *tiny, tmp_path / "straight")
    pretrain(cfg, *tiny, tmp_path / "resumed", until_epoch=1)
    resumed = pretrain(cfg, *tiny, tmp_path / "resumed")
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for part in ("backbone", "head"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history]
    assert all(0 <= h["val_acc"] <= 1 for h in straight.history)
    meta = a["meta"]
    assert meta["method"] == "maml" and meta["provenance"]["precision"] == "fp32"
    assert a["head"]["weight"].shape == (5, 64)  # train_way outputs, not the base classes


def test_checkpoint_carries_running_statistics_for_eval_mode(tiny, tmp_path: Path) -> None:
    pretrain(_cfg(epochs=1), *tiny, tmp_path)
    backbone, _ = load_backbone(tmp_path / "best.pt")
    bn = backbone.block1.bn
    assert int(bn.num_batches_tracked) == 1 and float(bn.running_var.min()) > 0
    backbone.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.isfinite(backbone(x)).all()


def test_maml_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="fp32"):
        _cfg(precision="bf16")
    with pytest.raises(ValueError, match="val_way"):
        _cfg(val_way=3)
    with pytest.raises(ValueError, match="inner_steps"):
        _cfg(inner_steps=0)
    with pytest.raises(ValueError, match="vectorize"):
        _cfg(vectorize="gpu")
