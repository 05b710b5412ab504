"""Schemes: printing, identity, JSON round-trip, validation; the named fixed strategies."""

from __future__ import annotations

import json

import pytest

from ptx_utils.finetuning.fixed import bn_affine, full_finetune, last_k, linear_probe
from ptx_utils.finetuning.scheme import DEFAULT_LR_ZOO, Scheme, check_lr_zoo
from ptx_utils.models import create_backbone


def test_readable_printing() -> None:
    assert str(Scheme((0, 0, 0.01, 0.1), 0.01)) == "0 0 0.01 0.1 | head 0.01"
    assert str(bn_affine(2)) == "0.01 0.01 | head 0.01 [bn only]"


def test_identity_ignores_the_name_and_hashes() -> None:
    a = Scheme((0, 0.1), name="mine")
    b = Scheme((0.0, 0.1))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert Scheme((0, 0.1)) != Scheme((0, 0.1), head_lr=0.1)
    assert Scheme((0.1, 0.1)) != Scheme((0.1, 0.1), params="bn")


def test_json_round_trip() -> None:
    s = last_k(4, 2, lr=0.1).scheme
    back = Scheme.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and back.name == s.name
    with pytest.raises(ValueError, match="unknown scheme field"):
        Scheme.from_dict({"lrs": [0], "lr": 1})


def test_named_strategies() -> None:
    assert linear_probe(4).lrs == (0, 0, 0, 0) and linear_probe(4).n_trainable_layers == 0
    assert full_finetune(3, 0.1).lrs == (0.1, 0.1, 0.1)
    assert last_k(4, 1).lrs == (0, 0, 0, 0.01) and last_k(4, 1).scheme.frozen_prefix == 3
    assert bn_affine(4).scheme.params == "bn"
    with pytest.raises(ValueError, match=r"k must lie in \[0, 4\]"):
        last_k(4, 5)


def test_validation_against_a_backbone_and_the_zoo() -> None:
    layers = create_backbone("conv4", image_size=28).layer_names()
    Scheme((0, 0, 0.01, 0.1)).check(layers, DEFAULT_LR_ZOO)
    with pytest.raises(ValueError, match=r"has 3 learning rates but the backbone has 4 layers"):
        Scheme((0, 0, 0.1)).check(layers)
    with pytest.raises(ValueError, match=r"outside the lr zoo"):
        Scheme((0, 0, 0.5, 0.1)).check(layers, DEFAULT_LR_ZOO)
    with pytest.raises(ValueError, match="must be >= 0"):
        Scheme((0, -0.1))
    with pytest.raises(ValueError, match="params must be one of"):
        Scheme((0, 0.1), params="weights")


def test_lr_zoo_check_names_what_is_wrong() -> None:
    assert check_lr_zoo([0, 0.1]) == (0.0, 0.1)
    for bad in ([], [0.1, 0.1], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="lr zoo must hold distinct learning rates >= 0"):
            check_lr_zoo(bad)
