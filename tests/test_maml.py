"""MAML: the batched inner loop equals a per-task loop, accuracy at several step counts from one
run, meta-training resumes exactly, and its checkpoint serves the kit's eval-mode strategies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ptx_utils.core.runtime import Runtime
from ptx_utils.data import FewShotDataset, load_dataset
from ptx_utils.data.augment import normalize
from ptx_utils.data.episodes import EpisodeSetting, sample_episodes
from ptx_utils.evaluation import evaluate_steps, evaluate_strategies
from ptx_utils.finetuning import (
    FinetuneConfig,
    Replica,
    Scheme,
    Strategy,
    finetune_batched,
    maml,
)
from ptx_utils.finetuning.maml_adapt import maml_net, maml_reference
from ptx_utils.finetuning.sequential import finetune_sequential
from ptx_utils.models import create_backbone, create_head
from ptx_utils.models.checkpoint import load_backbone, load_checkpoint
from ptx_utils.pretraining import PretrainConfig, pretrain
from ptx_utils.pretraining.maml import (
    InnerLoop,
    MamlNet,
    Tasks,
    adapt,
    adapted_logits,
    maml_params,
    meta_gradients,
    meta_gradients_loop,
)
from ptx_utils.steps import domain_shift
from ptx_utils.steps.transfer import transfer_strategies

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"image_size": 16, "images_per_class": 20, "classes": (10, 5, 5)}
QUIET = Runtime(progress=False, precision="fp32")


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
    logits = adapted_logits(net, params, tasks, at, lr=0.5)
    assert logits.shape == (3, 3, 10, 5)
    looped = adapted_logits(net, params, tasks, at, 0.5, vectorize=False)
    torch.testing.assert_close(logits, looped, atol=1e-5, rtol=1e-5)
    for j, steps in enumerate(at):  # each count equals a run of exactly that many steps
        for t in range(3):
            fast = adapt(net, params, xs[t], ys[t], steps, 0.5)
            want = functional_call(net, fast, (xq[t],))
            torch.testing.assert_close(logits[t, j], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="counts >= 0"):
        adapted_logits(net, params, tasks, [-1], 0.5)


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


# -- MAML at test time, through the Strategy abstraction and both engines ------------------------


@pytest.fixture(scope="module")
def maml_run(tiny, tmp_path_factory) -> tuple[str, object]:
    """A tiny MAML checkpoint (5-way head) and the backbone the kit reads from it."""
    out = tmp_path_factory.mktemp("maml")
    pretrain(_cfg(epochs=1), *tiny, out)
    backbone, _ = load_backbone(out / "best.pt")
    return maml_reference(out / "best.pt"), backbone.eval()


@pytest.fixture(scope="module")
def test_episodes() -> tuple[FewShotDataset, object]:
    test = load_dataset("synthetic", "test", **TINY)
    return test, sample_episodes(test, 5, 2, 3, 3, seed=1)


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_maml_strategy_batched_equals_sequential(maml_run, test_episodes, vectorize) -> None:
    reference, backbone = maml_run
    test, episodes = test_episodes
    t = episodes.tensors(test)
    tensors = (t.support_images, t.support_labels, t.query_images)
    strategy = maml(reference, 4, lr=0.2, steps=3)
    replicas = [Replica(strategy, e, seed=e) for e in range(len(episodes))]
    batched = finetune_batched(
        backbone, replicas, *tensors, 5, progress=False, vectorize=vectorize, record=[0, 1]
    )
    for e in range(len(episodes)):
        seq = finetune_sequential(
            backbone, strategy, t.support_images[e], t.support_labels[e], t.query_images[e], 5,
            record=[0, 1],
        )  # fmt: skip
        torch.testing.assert_close(batched.logits[e], seq.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched.recorded[e], seq.recorded, atol=1e-4, rtol=1e-4)
    assert not batched.diverged.any()
    # 0 steps: the meta-trained network as it is, batch statistics of the queries
    net, params = maml_net(reference, 5, torch.device("cpu"))
    want = functional_call(net, params, (normalize(t.query_images[0]),))
    torch.testing.assert_close(batched.recorded[0, 0], want, atol=1e-4, rtol=1e-4)


def test_maml_through_the_harness_and_at_several_step_counts(maml_run, test_episodes) -> None:
    reference, backbone = maml_run
    test, episodes = test_episodes
    named = {"MAML 4": maml(reference, 4, lr=0.2, steps=4)}
    rows = evaluate_strategies(backbone, named, test, episodes, runtime=QUIET).rows
    assert list(rows["strategy"]) == ["MAML 4"] * 3 and rows["accuracy"].between(0, 1).all()
    steps = evaluate_steps(backbone, named, test, episodes, passes=(0, 2, 4), runtime=QUIET)
    at4 = steps[steps["passes"] == 4].sort_values("episode")["accuracy"].to_numpy()
    assert at4 == pytest.approx(rows.sort_values("episode")["accuracy"].to_numpy())


def test_maml_strategies_are_checked(maml_run, tiny, tmp_path: Path) -> None:
    reference, _ = maml_run
    baseline = _cfg(epochs=1).__dict__ | {"method": "baseline", "epoch_images": 32}
    pretrain(PretrainConfig.from_dict(baseline), *tiny, tmp_path)
    baseline_checkpoint = tmp_path / "best.pt"
    rates, ref = Scheme((0.1,) * 4, 0.1), (reference,)
    bad = {
        "per-layer rates": Strategy(Scheme((0.0, 0.1, 0.1, 0.1), 0.1), "maml", loads=ref, steps=2),
        "no steps": Strategy(rates, "maml", loads=ref),
        "no checkpoint": Strategy(rates, "maml", steps=2),
        "AdaBN": Strategy(rates, "maml", loads=ref, steps=2, bn_stats="support"),
    }
    for what, strategy in bad.items():
        assert strategy.unimplemented(), what
    with pytest.raises(ValueError, match="sha256"):
        maml_net(reference[:-64] + "0" * 64, 5, torch.device("cpu"))
    with pytest.raises(ValueError, match="3-way"):
        maml_net(reference, 3, torch.device("cpu"))
    with pytest.raises(ValueError, match="not a MAML checkpoint"):
        maml_net(maml_reference(baseline_checkpoint), 5, torch.device("cpu"))


def test_notebook_03_adds_maml_rows_for_a_maml_backbone(maml_run, tiny, tmp_path: Path) -> None:
    reference, _ = maml_run
    path = reference.rpartition("#")[0]
    named = transfer_strategies(Scheme((0.0,) * 4), pretrained=path)
    assert list(named)[-2:] == ["MAML (2 steps)", "MAML (100 steps)"]
    assert named["MAML (2 steps)"] == maml(reference, 4, lr=0.1, steps=2)
    pretrain(
        PretrainConfig.from_dict(_cfg(epochs=1).__dict__ | {"method": "protonet"}), *tiny, tmp_path
    )
    assert len(transfer_strategies(Scheme((0.0,) * 4), pretrained=tmp_path / "best.pt")) == 5


def test_saved_rows_follow_a_moved_checkpoint(maml_run, test_episodes, tmp_path) -> None:
    """A run directory moved elsewhere: its MAML checkpoint has another path, the same hash,
    so the rows saved for it are reused, not refused."""
    reference, backbone = maml_run
    test, episodes = test_episodes
    saved = tmp_path / "transfer"
    first = evaluate_strategies(
        backbone, {"MAML": maml(reference, 4, lr=0.2, steps=2)}, test, episodes,
        runtime=QUIET, checkpoint_dir=saved,
    ).rows  # fmt: skip
    moved = tmp_path / "moved.pt"
    moved.write_bytes(Path(reference.rpartition("#")[0]).read_bytes())
    stamps = {p: p.stat().st_mtime_ns for p in saved.iterdir()}
    again = evaluate_strategies(
        backbone, {"MAML": maml(maml_reference(moved), 4, lr=0.2, steps=2)}, test, episodes,
        runtime=QUIET, checkpoint_dir=saved,
    ).rows  # fmt: skip
    assert again.equals(first) and {p: p.stat().st_mtime_ns for p in saved.iterdir()} == stamps
    with pytest.raises(ValueError, match="other settings"):  # another step count: refused
        evaluate_strategies(
            backbone, {"MAML": maml(reference, 4, lr=0.2, steps=3)}, test, episodes,
            runtime=QUIET, checkpoint_dir=saved,
        )  # fmt: skip


def test_notebook_04_adds_maml_rows_for_a_maml_backbone(maml_run, tmp_path: Path) -> None:
    reference, backbone = maml_run
    targets = domain_shift.shift_targets("synthetic", [1.0], [], "val", "test", 3, 16)
    result = domain_shift.run_domain_shift(
        backbone, targets, val=EpisodeSetting(5, 1, 2, 2), test=EpisodeSetting(5, 1, 2, 2),
        settings={"population": 2, "generations": 1, "top_k": 1},
        cfg=FinetuneConfig(head="cosine", passes=1), run_dir=tmp_path, runtime=QUIET,
        pretrained=reference.rpartition("#")[0],
    )  # fmt: skip
    strategies = list(result.summary["strategy"])
    assert strategies[-2:] == ["MAML (2 steps)", "MAML (100 steps)"] and len(strategies) == 7
    assert result.summary["n"].eq(2).all() and result.summary["mean"].between(0, 1).all()
    record = json.loads((tmp_path / "results" / "domain_shift_provenance.json").read_text())
    sha = reference.rpartition("#")[2]
    assert record["meta_learned"] == {f"MAML ({n} steps)": [f"#{sha}"] for n in (2, 100)}
    with pytest.raises(ValueError, match="has 5 outputs but the episodes are 3-way"):
        domain_shift.run_domain_shift(
            backbone, targets, val=EpisodeSetting(3, 1, 2, 2), test=EpisodeSetting(3, 1, 2, 2),
            settings={"population": 2, "generations": 1, "top_k": 1},
            cfg=FinetuneConfig(head="cosine", passes=1), run_dir=tmp_path / "3way",
            runtime=QUIET, pretrained=reference.rpartition("#")[0],
        )  # fmt: skip
    assert not (tmp_path / "3way").exists()  # refused before any work
