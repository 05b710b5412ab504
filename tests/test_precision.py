"""The ``precision`` setting: resolution, the bf16 engine path, and what results record.

fp32 stays the reference (the batched-vs-sequential tests run in fp32 at 1e-4). bf16 is not
expected to equal it bit for bit; these tests check it runs everywhere fp32 does, stays close on
short runs, and still flags a diverging replica. The statistical equality over 600 Omniglot
episodes is a benchmark: ``benchmarks/bench_precision.py``.
"""

from __future__ import annotations

import pytest
import torch

from ptx_utils.core import device as dev
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.finetuning.batched import Replica, finetune_batched
from ptx_utils.finetuning.fixed import bn_affine, full_finetune, last_k, linear_probe
from ptx_utils.finetuning.protocol import FinetuneConfig
from ptx_utils.finetuning.scheme import Scheme
from ptx_utils.finetuning.sequential import finetune_sequential
from ptx_utils.models import create_backbone
from ptx_utils.models.features import extract_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_resolution_and_refusal(monkeypatch) -> None:
    assert dev.resolve_precision("fp32", "cpu") == "fp32"
    assert dev.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(dev, "cpu_bf16", lambda: None)
    assert dev.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(dev, "cpu_bf16", lambda: "amx_bf16")
    assert dev.resolve_precision("auto", "cpu") == "bf16"
    record = dev.precision_record("auto", "cpu")
    assert record == {
        "precision": "bf16",
        "precision_asked": "auto",
        "memory_format": "channels_last",
        "cpu_bf16": "amx_bf16",
    }
    with pytest.raises(ValueError, match="precision must be one of"):
        dev.resolve_precision("fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        Runtime(precision="half")


def test_cpu_flag_detection_reads_cpuinfo(tmp_path, monkeypatch) -> None:
    dev.cpu_bf16.cache_clear()
    try:
        value = dev.cpu_bf16()
        assert value in (None, "amx_bf16", "avx512_bf16", "onednn_bf16")
    finally:
        dev.cpu_bf16.cache_clear()


@pytest.fixture(scope="module")
def setup(synthetic_test: FewShotDataset):
    torch.manual_seed(0)
    model = create_backbone("conv4", in_channels=3, image_size=16)
    eb = sample_episodes(synthetic_test, 5, 1, 4, 2, seed=3).tensors(synthetic_test)
    return model, eb


def _run(model, eb, replicas, cfg, precision):
    return finetune_batched(
        model, replicas, eb.support_images, eb.support_labels, eb.query_images, 5, cfg,
        progress=False, precision=precision,
    )  # fmt: skip


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_bf16_engine_runs_every_kind_of_scheme_close_to_fp32(setup, bn_mode) -> None:
    model, eb = setup
    cfg = FinetuneConfig(passes=3, bn_mode=bn_mode, head="cosine")
    schemes = [linear_probe(4), last_k(4, 1), full_finetune(4, 0.003), bn_affine(4, 0.01)]
    replicas = [Replica(s, e, seed=e) for s in schemes for e in range(2)]
    fp32 = _run(model, eb, replicas, cfg, "fp32")
    bf16 = _run(model, eb, replicas, cfg, "bf16")
    assert bf16.logits.dtype == torch.float32 and not bool(bf16.diverged.any())
    # bf16 keeps ~3 significant digits: logits agree to a few hundredths, not to 1e-4.
    torch.testing.assert_close(bf16.logits, fp32.logits, atol=0.05, rtol=0.05)
    assert not torch.equal(bf16.logits, fp32.logits)  # it did run in another precision
    seq = finetune_sequential(
        model, schemes[2], eb.support_images[0], eb.support_labels[0], eb.query_images[0], 5,
        cfg, seed=0, precision="bf16",
    )  # fmt: skip
    torch.testing.assert_close(seq.logits, bf16.logits[4], atol=0.05, rtol=0.05)


def test_bf16_flags_a_diverging_replica(setup) -> None:
    model, eb = setup
    bad = Scheme((1.0,) * 4, head_lr=1.0)
    replicas = [Replica(linear_probe(4), 0, 1), Replica(bad, 0, 2), Replica(bad, 1, 3)]
    res = _run(model, eb, replicas, FinetuneConfig(passes=5), "bf16")
    assert res.diverged.tolist() == [False, True, True]
    assert bool(res.logits[1:].isnan().all()) and bool(res.logits[0].isfinite().all())


def test_frozen_features_in_bf16_are_close(setup, synthetic_test) -> None:
    model, _ = setup
    images = synthetic_test.images[:32]
    fp32 = extract_features(model, images, torch.device("cpu"))
    bf16 = extract_features(model, images, torch.device("cpu"), precision="bf16")
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0.05)


def test_runtime_record_and_evaluation_meta(setup, synthetic_test) -> None:
    from ptx_utils.evaluation import evaluate_strategies

    model, _ = setup
    episodes = sample_episodes(synthetic_test, 5, 1, 2, 2, seed=0)
    runtime = Runtime(progress=False, precision="bf16", device="cpu")
    assert runtime.record()["precision"] == "bf16"
    ev = evaluate_strategies(
        model, {"probe": linear_probe(4)}, synthetic_test, episodes, FinetuneConfig(passes=1),
        runtime,
    )  # fmt: skip
    assert ev.meta["precision"] == "bf16"
