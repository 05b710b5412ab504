"""Strategies: identity, JSON round-trip (from a scheme's dict too), checks, what engines refuse."""

from __future__ import annotations

import json

import pytest
import torch

from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.finetuning import (
    Attachment,
    FinetuneConfig,
    Replica,
    Scheme,
    Strategy,
    as_strategy,
    check_strategies,
    finetune_batched,
    finetune_sequential,
    last_k,
    linear_probe,
)
from ptx_utils.models import create_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ADAPTERS = Strategy(
    Scheme((0, 0, 0, 0)),
    classifier="ncc-cosine",
    optimizer="adadelta",
    attachments=(
        Attachment("residual-adapter", 0.5, {"init": 1e-4}),
        Attachment("pre-classifier", 1.0),
    ),
    steps=40,
    name="TSA",
)
CASE = Strategy(
    Scheme((0, 0, 0, 0), head_lr=0),
    classifier="zero-linear",
    optimizer="adam",
    attachments=(Attachment("case"),),
    loads=("case.pt#sha256",),
    steps=500,
    name="CaSE",
)
#: Feature normalisation's strategy: a differently pre-trained backbone named in ``loads`` —
#: planned (today the FN backbone is passed as the backbone itself).
FN = Strategy(Scheme((0.01,) * 4), loads=("fn_backbone.pt#sha256",), name="FN")
CHANNEL_IMPORTANCE = Strategy(
    Scheme((0, 0, 0, 0)),
    feature_transform="channel-importance",
    transform_options={"k": 1.3},
    name="channel importance",
)


def test_a_default_strategy_reads_as_its_scheme() -> None:
    s = last_k(4, 1)
    assert str(s) == str(s.scheme) == "0 0 0 0.01 | head 0.01"
    assert s.name == "last-1 0.01" and s.lrs == (0, 0, 0, 0.01) and s.head_lr == 0.01
    assert as_strategy(s.scheme) == s and as_strategy(s) is s


def test_identity_ignores_the_name_and_hashes() -> None:
    a = Strategy(Scheme((0, 0.1)), classifier="cosine", name="a")
    b = Strategy(Scheme((0, 0.1), name="other"), classifier="cosine")
    assert a == b and len({a, b}) == 1
    assert a != Strategy(Scheme((0, 0.1)))
    assert str(a) == "0 0.1 | head 0.01 | cosine"


@pytest.mark.parametrize("strategy", [linear_probe(4), ADAPTERS, CHANNEL_IMPORTANCE])
def test_json_round_trip(strategy: Strategy) -> None:
    back = Strategy.from_dict(json.loads(json.dumps(strategy.to_dict())))
    assert back == strategy and back.name == strategy.name and hash(back) == hash(strategy)


def test_a_bare_scheme_dict_loads_as_a_strategy() -> None:
    saved = Scheme((0, 0, 0.1, 1.0), name="searched").to_dict()
    assert Strategy.from_dict(saved) == Strategy(Scheme((0, 0, 0.1, 1.0)))


def test_bad_values_name_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="classifier must be one of"):
        Strategy(Scheme((0,)), classifier="svm")
    with pytest.raises(ValueError, match="unknown strategy field"):
        Strategy.from_dict({"scheme": {"lrs": [0]}, "lr": 1})
    with pytest.raises(TypeError, match="must be a Scheme"):
        Strategy((0, 0.1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attachment kind must be one of"):
        Attachment("lora")


def test_check_strategies_names_the_offender() -> None:
    layers = ["block1", "block2"]
    out = check_strategies({"lp": linear_probe(2), "mine": Scheme((0, 0.1))}, layers)
    assert all(isinstance(s, Strategy) for s in out.values())
    with pytest.raises(ValueError, match=r"strategy 'bad': scheme .* has 3 learning rates"):
        check_strategies({"bad": Scheme((0, 0, 0))}, layers)
    with pytest.raises(TypeError, match="strategy 'x'"):
        check_strategies({"x": "0 0"}, layers)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="need at least one"):
        check_strategies({}, layers)


def test_the_protocol_takes_the_strategy_classifier_and_bn_mode() -> None:
    cfg = FinetuneConfig(head="linear", bn_mode="eval")
    assert linear_probe(2).protocol(cfg) is cfg
    s = Strategy(Scheme((0, 0.1)), classifier="cosine", bn_stats="train")
    assert s.protocol(cfg) == FinetuneConfig(head="cosine", bn_mode="train")


def test_both_engines_refuse_what_they_do_not_implement(synthetic_test: FewShotDataset) -> None:
    torch.manual_seed(0)
    bb = create_backbone("conv4", image_size=16)
    eb = sample_episodes(synthetic_test, 5, 1, 2, 1, seed=0).tensors(synthetic_test)
    assert ADAPTERS.unimplemented() == []  # TSA: tests/test_adapters.py
    assert CASE.unimplemented() == []  # UpperCaSE: tests/test_case.py
    assert FN.unimplemented() == ["meta-trained parts (loads)"]
    assert str(CHANNEL_IMPORTANCE).endswith("| channel-importance k=1.3")
    assert CHANNEL_IMPORTANCE.unimplemented() == []  # implemented (tests/test_frozen_strategies)
    with pytest.raises(NotImplementedError, match=r"docs/strategies\.md"):
        finetune_sequential(bb, FN, eb.support_images[0], eb.support_labels[0],
                            eb.query_images[0], 5)  # fmt: skip
    with pytest.raises(NotImplementedError, match="meta-trained parts"):
        finetune_batched(bb, [Replica(FN, 0)], eb.support_images, eb.support_labels,
                         eb.query_images, 5, progress=False)  # fmt: skip
