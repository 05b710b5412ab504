"""SpotTune: the batched engine equals the sequential reference (torch.optim.SGD), the gates'
straight-through gradient, and the forced gates' limits (linear probe, full fine-tune)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ptx_utils.data.episodes import sample_episodes
from ptx_utils.finetuning import (
    Attachment,
    FinetuneConfig,
    Replica,
    Scheme,
    Strategy,
    finetune_batched,
    finetune_sequential,
    full_finetune,
    linear_probe,
    spottune,
)
from ptx_utils.finetuning.spottune import (
    SpotTuneSpec,
    build_net,
    gate_penalty,
    gumbel_noise,
    policy_parameters,
    spottune_sequential,
    straight_through,
)
from ptx_utils.finetuning.spottune_batched import spottune_batched
from ptx_utils.models import create_backbone

TOL = {"atol": 1e-4, "rtol": 1e-4}
CFG = FinetuneConfig(head="cosine", passes=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _forced(value: int, lr: float = 0.01) -> Strategy:
    return Strategy(
        Scheme((0,) * 4, 0.01), attachments=(Attachment("spottune", lr, {"force": value}),)
    )


def _both(backbone, strategies, eb, cfg=CFG, vectorize="auto"):
    replicas = [Replica(s, e, seed=10 + e) for s in strategies for e in range(2)]
    res = finetune_batched(
        backbone, replicas, eb.support_images, eb.support_labels, eb.query_images, 5, cfg,
        progress=False, vectorize=vectorize,
    )  # fmt: skip
    assert not bool(res.diverged.any())
    refs = []
    for i, r in enumerate(replicas):
        e = r.episode
        ref = finetune_sequential(
            backbone, r.strategy, eb.support_images[e], eb.support_labels[e], eb.query_images[e],
            5, cfg, seed=r.seed,
        )  # fmt: skip
        torch.testing.assert_close(res.logits[i], ref.logits, **TOL, msg=str(r.strategy))
        refs.append(ref.logits)
    return res, replicas, refs


@pytest.mark.parametrize("shot", [1, 5])
def test_spottune_variants_equal_sequential(conv4, tiny_episodes, shot) -> None:
    strategies = [
        spottune(4),
        spottune(4, inference="argmax"),
        spottune(4, lr=0.05, policy_lr=1.0, global_k=2),
        spottune(4, global_k=1, inference="argmax"),
    ]
    _both(conv4, strategies, tiny_episodes[shot])


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_spottune_vmap_loop_augment_and_record(conv4, tiny_episodes, vectorize) -> None:
    cfg = FinetuneConfig(head="linear", passes=2, augment=True)
    eb = tiny_episodes[1]
    res, replicas, _ = _both(conv4, [spottune(4)], eb, cfg, vectorize)
    rec = finetune_batched(
        conv4, replicas, eb.support_images, eb.support_labels, eb.query_images, 5, cfg,
        progress=False, vectorize=vectorize, record=[0, 1],
    )  # fmt: skip
    torch.testing.assert_close(rec.logits, res.logits)  # recording changes nothing
    r = replicas[0]
    seq = finetune_sequential(
        conv4, r.strategy, eb.support_images[0], eb.support_labels[0], eb.query_images[0], 5,
        cfg, seed=r.seed, record=[0, 1],
    )  # fmt: skip
    torch.testing.assert_close(rec.recorded[0], seq.recorded, **TOL)


def test_auto_loops_on_large_cpu_images(monkeypatch) -> None:
    """``vectorize="auto"`` decides on the copies' own convolution weights (4-d), not on the
    replicas stacked on them: at >= 40 x 40 pixels on a CPU it loops, as the other engine."""
    import ptx_utils.finetuning.spottune_batched as engine

    chose: list[bool] = []

    def spy(*args):
        chose.append(engine_loop(*args))
        return chose[-1]

    engine_loop = engine.loop_replicas
    monkeypatch.setattr(engine, "loop_replicas", spy)
    backbone = create_backbone("conv4", in_channels=1, image_size=40).eval()
    gen = torch.Generator().manual_seed(0)
    support = torch.randint(0, 255, (1, 5, 1, 40, 40), generator=gen, dtype=torch.uint8)
    query = torch.randint(0, 255, (1, 5, 1, 40, 40), generator=gen, dtype=torch.uint8)
    labels = torch.arange(5)[None]
    cfg = FinetuneConfig(passes=1)
    out, _, _ = spottune_batched(backbone, [spottune(4)], [0], [3], support, labels, query, 5, cfg)
    assert chose == [True]
    ref = spottune_sequential(backbone, spottune(4), support[0], labels[0], query[0], 5, cfg, 3)
    torch.testing.assert_close(out[0], ref[0], **TOL)


def test_inference_modes_share_training_and_report_decisions(conv4, tiny_episodes) -> None:
    eb = tiny_episodes[1]
    pair = [spottune(4), spottune(4, inference="argmax")]
    out, div, decisions = spottune_batched(
        conv4, pair, [0, 0], [3, 3], eb.support_images, eb.support_labels, eb.query_images, 5, CFG
    )
    assert out.shape == (2, 1, 15, 5) and decisions.shape == (2, 15, 4) and not div.any()
    assert set(decisions.unique().tolist()) <= {0.0, 1.0}
    ref = spottune_sequential(
        conv4, pair[1], eb.support_images[0], eb.support_labels[0], eb.query_images[0], 5, CFG, 3
    )
    torch.testing.assert_close(out[1], ref[0], **TOL)
    torch.testing.assert_close(decisions[1], ref[2])


def test_gate_forced_to_0_is_the_linear_probe_and_to_1_full_finetune(conv4, tiny_episodes) -> None:
    eb = tiny_episodes[5]
    args = (eb.support_images[0], eb.support_labels[0], eb.query_images[0], 5, CFG)
    probe = finetune_sequential(conv4, linear_probe(4), *args, seed=10).logits
    full = finetune_sequential(conv4, full_finetune(4, lr=0.05), *args, seed=10).logits
    torch.testing.assert_close(finetune_sequential(conv4, _forced(0), *args, seed=10).logits, probe)
    forced1 = finetune_sequential(conv4, _forced(1, lr=0.05), *args, seed=10).logits
    torch.testing.assert_close(forced1, full, **TOL)
    assert not torch.allclose(probe, full, atol=1e-3)  # the two limits differ
    res, _, _ = _both(conv4, [_forced(0), _forced(1, lr=0.05)], eb)
    torch.testing.assert_close(res.logits[0], probe, **TOL)


def test_straight_through_forward_is_hard_backward_is_soft() -> None:
    logits = torch.tensor([[0.3, -0.2], [-1.0, 2.0], [0.5, 0.5]], requires_grad=True)
    noise = torch.tensor([[0.0, 0.0], [3.5, 0.0], [0.0, 0.1]])
    d = straight_through(logits, noise, tau=5.0)
    assert d.tolist() == [0.0, 0.0, 1.0]  # argmax of logits + noise, per row
    weights = torch.tensor([1.0, 2.0, -3.0])
    (d * weights).sum().backward()
    soft = F.softmax((logits.detach() + noise) / 5.0, -1)
    # d/dl of softmax_1((l + g) / τ): (p1 (1 − p1) / τ) · (−1, +1)
    expected = (weights * soft[:, 0] * soft[:, 1] / 5.0)[:, None] * torch.tensor([-1.0, 1.0])
    torch.testing.assert_close(logits.grad, expected)
    assert straight_through(logits, None, 5.0).tolist() == [0.0, 1.0, 0.0]  # argmax, no noise


def test_gumbel_noise_is_the_replicas_own_and_penalty_pulls_to_k() -> None:
    a = gumbel_noise((4, 2), torch.Generator().manual_seed(1))
    b = gumbel_noise((4, 2), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    spec = SpotTuneSpec(0.01, global_k=2)
    at_k = torch.tensor([[-9.0, 9.0]] * 2 + [[9.0, -9.0]] * 2)  # two blocks surely tuned
    assert float(gate_penalty(at_k, spec)) < 1e-6
    assert float(gate_penalty(torch.zeros(4, 2), SpotTuneSpec(0.01, global_k=4))) == 5.0
    assert float(gate_penalty(torch.zeros(4, 2), SpotTuneSpec(0.01))) == 0.0  # per-image policy


def test_nothing_trains_when_every_rate_is_zero(conv4, tiny_episodes) -> None:
    frozen = Strategy(
        Scheme((0,) * 4, 0.0), attachments=(Attachment("spottune", 0.0, {"policy_lr": 0.0}),)
    )
    _both(conv4, [frozen], tiny_episodes[1])  # both engines run it, and agree


def test_policy_size_and_spec_errors(conv4) -> None:
    net = build_net(conv4, SpotTuneSpec.of(spottune(4)), 5, CFG)
    assert policy_parameters(net) == 64 * 8 + 8  # Linear(64 -> 2 x 4 blocks)
    assert (
        policy_parameters(build_net(conv4, SpotTuneSpec.of(spottune(4, global_k=1)), 5, CFG)) == 8
    )
    bad = Strategy(Scheme((0,) * 4), attachments=(Attachment("spottune", 0.01, {"tua": 5}),))
    with pytest.raises(ValueError, match="unknown spottune option"):
        SpotTuneSpec.of(bad)
    with pytest.raises(ValueError, match="inference"):
        SpotTuneSpec.of(spottune(4, inference="mode"))
    with pytest.raises(ValueError, match="bn_mode='eval'"):
        build_net(conv4, SpotTuneSpec.of(spottune(4)), 5, FinetuneConfig(bn_mode="train"))
    with pytest.raises(ValueError, match="has 4 blocks"):
        build_net(conv4, SpotTuneSpec.of(spottune(4, global_k=5)), 5, CFG)
    with pytest.raises(ValueError, match="global_k must be"):
        SpotTuneSpec.of(spottune(4, global_k=True))
    trained = Strategy(Scheme((0, 0, 0, 0.1)), attachments=(Attachment("spottune", 0.01),))
    with pytest.raises(NotImplementedError, match="spottune with trained layers"):
        trained.protocol(CFG)
    assert spottune(4).path == "spottune" and not spottune(4).unimplemented()


def test_harness_trains_the_inference_pair_once_and_routing_matches(
    conv4, synthetic_test, tmp_path
) -> None:
    from ptx_utils.core.runtime import Runtime
    from ptx_utils.evaluation import evaluate_strategies
    from ptx_utils.evaluation.routing import routing_summary, spottune_routing

    eps = sample_episodes(synthetic_test, 5, 1, 3, 2, seed=1)
    named = {"linear probe": linear_probe(4), "SpotTune": spottune(4)}
    named["SpotTune (argmax)"] = spottune(4, inference="argmax")
    runtime = Runtime(progress=False)
    plain = evaluate_strategies(conv4, named, synthetic_test, eps, CFG, runtime).rows
    saved = evaluate_strategies(
        conv4, named, synthetic_test, eps, CFG, runtime, checkpoint_dir=tmp_path
    ).rows
    assert len(list(tmp_path.glob("*.json"))) == 3  # one file per strategy, the pair included
    again = evaluate_strategies(
        conv4, named, synthetic_test, eps, CFG, runtime, checkpoint_dir=tmp_path
    )
    for rows in (saved, again.rows):
        torch.testing.assert_close(
            torch.tensor(rows["accuracy"].to_numpy()), torch.tensor(plain["accuracy"].to_numpy())
        )
    spot = {k: v for k, v in named.items() if k != "linear probe"}
    routing = spottune_routing(conv4, spot, synthetic_test, eps, CFG, runtime)
    mine = routing.groupby(["strategy", "episode"], sort=False)["accuracy"].first().to_numpy()
    harness = plain[plain["strategy"] != "linear probe"]["accuracy"].to_numpy()
    torch.testing.assert_close(torch.tensor(mine), torch.tensor(harness))
    table = routing_summary(routing)
    assert len(table) == 8 and table["mean"].between(0, 1).all()
    with pytest.raises(ValueError, match="not a SpotTune strategy"):
        spottune_routing(conv4, {"lp": linear_probe(4)}, synthetic_test, eps, CFG, runtime)


def test_routing_resumes_from_saved_chunks(conv4, synthetic_test, tmp_path, monkeypatch) -> None:
    from ptx_utils.core.runtime import Runtime
    from ptx_utils.evaluation import routing as routing_module

    monkeypatch.setattr(routing_module, "ROUTING_CHUNK", 2)
    eps = sample_episodes(synthetic_test, 5, 1, 3, 3, seed=1)
    spot = {"SpotTune": spottune(4), "SpotTune (argmax)": spottune(4, inference="argmax")}
    runtime = Runtime(progress=False)
    plain = routing_module.spottune_routing(conv4, spot, synthetic_test, eps, CFG, runtime)
    saved = routing_module.spottune_routing(
        conv4, spot, synthetic_test, eps, CFG, runtime, checkpoint_dir=tmp_path
    )
    assert len(list(tmp_path.glob("routing-*.json"))) == 2  # one pair, chunks 0-1 and 2
    calls = []
    route = routing_module._route_chunk
    monkeypatch.setattr(
        routing_module, "_route_chunk", lambda *a, **k: calls.append(a[3]) or route(*a, **k)
    )
    next(tmp_path.glob("routing-*.00002-00002.json")).unlink()  # interrupted before that save
    resumed = routing_module.spottune_routing(
        conv4, spot, synthetic_test, eps, CFG, runtime, checkpoint_dir=tmp_path
    )
    assert calls == [[2]]  # only the unsaved chunk trained again
    assert list(dict.fromkeys(plain["strategy"])) == list(spot)
    assert (plain["episode"].groupby(plain["strategy"]).is_monotonic_increasing).all()
    for rows in (saved, resumed):
        pd.testing.assert_frame_equal(
            rows.drop(columns="seconds"), plain.drop(columns="seconds"), check_exact=False
        )
    other = Runtime(progress=False, seed=1)  # other settings: nothing reused
    routing_module.spottune_routing(
        conv4, spot, synthetic_test, eps, CFG, other, checkpoint_dir=tmp_path
    )
    assert calls == [[2], [0, 1], [2]]


def test_meta_trained_policy_resumes_exactly_and_loads(
    conv4, tiny_episodes, tmp_path, monkeypatch
) -> None:
    from ptx_utils.data import load_dataset
    from ptx_utils.finetuning import spottune_meta as meta

    base = load_dataset("synthetic", "train", image_size=16, images_per_class=10)
    cfg = meta.MetaPolicyConfig(episodes=4, inner_passes=1, n_query=2, checkpoint_every=2)
    whole = meta.meta_train_policy(conv4, base, cfg, tmp_path / "whole", progress=False)
    assert [c["episodes"] for c in whole.record["curve"]] == [2, 4]
    real = meta._episode

    def stop_at_3(*args):
        if args[-1] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(meta, "_episode", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        meta.meta_train_policy(conv4, base, cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(meta, "_episode", real)
    resumed = meta.meta_train_policy(conv4, base, cfg, tmp_path / "cut", progress=False)
    state = {k: torch.load(p.path, weights_only=True)["policy"] for k, p in
             (("whole", whole), ("cut", resumed))}  # fmt: skip
    for name in state["whole"]:
        torch.testing.assert_close(state["cut"][name], state["whole"][name], rtol=0, atol=0)
    assert resumed.record["curve"] == whole.record["curve"]
    assert float(state["whole"]["weight"].abs().sum()) > 0  # the outer steps moved it
    assert meta.meta_train_policy(conv4, base, cfg, tmp_path / "whole").sha256 == whole.sha256
    with pytest.raises(ValueError, match=r"other config\.checkpoint_every, config\.episodes"):
        other = meta.MetaPolicyConfig(episodes=5, inner_passes=1, n_query=2)
        meta.meta_train_policy(conv4, base, other, tmp_path / "whole", progress=False)

    loaded = spottune(4, policy=whole.reference)
    assert loaded.name == "SpotTune meta" and not loaded.unimplemented()
    assert dict(loaded.attachments[0].options)["policy_lr"] == 0.0  # a loaded policy stays fixed
    # loaded and new policies in one call: each replica starts from its own
    mixed = [loaded, spottune(4, inference="argmax")]
    _both(
        conv4, [*mixed, spottune(4, policy=whole.reference, inference="argmax")], tiny_episodes[1]
    )
    other = create_backbone("conv4", in_channels=3, image_size=16)
    with pytest.raises(ValueError, match="meta-trained on another backbone"):
        build_net(other, SpotTuneSpec.of(loaded), 5, CFG)
    with pytest.raises(ValueError, match="does not match its sha256"):
        build_net(conv4, SpotTuneSpec.of(spottune(4, policy=f"{whole.path}#{'0' * 64}")), 5, CFG)
    with pytest.raises(FileNotFoundError, match="meta-train one"):
        build_net(conv4, SpotTuneSpec.of(spottune(4, policy=f"nowhere.pt#{'0' * 64}")), 5, CFG)
