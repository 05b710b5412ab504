"""Model zoo: layer tables, output sizes, config round-trip, heads, registry errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from ptx_utils.models import (
    Backbone,
    CosineHead,
    LinearHead,
    PrototypeHead,
    create_backbone,
    create_head,
    list_backbones,
    register_backbone,
)

BACKBONES = ["conv4", "conv6", "resnet10", "resnet12", "resnet18"]
RESNETS = ["resnet10", "resnet12", "resnet18"]
# (name, kwargs) for every registered backbone, both granularities for ResNets.
CASES = [("conv4", {}), ("conv6", {})] + [
    (name, {"granularity": g}) for name in RESNETS for g in ("block", "conv")
]
CASE_IDS = [f"{n}-{kw.get('granularity', 'block')}" for n, kw in CASES]


def _resnet_layers(blocks: list[int], granularity: str) -> list[str]:
    """Expected layer names of a torchvision-style ResNet with ``blocks`` per stage."""
    names = ["stem"]
    for stage, n in enumerate(blocks, start=1):
        for j in range(n):
            prefix = f"layer{stage}.{j}"
            if granularity == "block":
                names.append(prefix)
            else:
                names += [f"{prefix}_conv1", f"{prefix}_conv2"]
                if stage > 1 and j == 0:
                    names.append(f"{prefix}_shortcut")
    return names


EXPECTED_LAYERS = {
    ("conv4", "block"): [f"block{i}" for i in range(1, 5)],
    ("conv6", "block"): [f"block{i}" for i in range(1, 7)],
    ("resnet10", "block"): _resnet_layers([1, 1, 1, 1], "block"),
    ("resnet10", "conv"): _resnet_layers([1, 1, 1, 1], "conv"),
    ("resnet18", "block"): _resnet_layers([2, 2, 2, 2], "block"),
    ("resnet18", "conv"): _resnet_layers([2, 2, 2, 2], "conv"),
    ("resnet12", "block"): [f"block{i}" for i in range(1, 5)],
    ("resnet12", "conv"): [
        f"block{i}_{part}" for i in range(1, 5) for part in ("conv1", "conv2", "conv3", "shortcut")
    ],
}
EXPECTED_COUNTS = {
    ("resnet10", "block"): 5,
    ("resnet10", "conv"): 12,  # stem + 4 blocks * 2 convs + 3 shortcuts
    ("resnet18", "block"): 9,
    ("resnet18", "conv"): 20,  # stem + 8 blocks * 2 convs + 3 shortcuts
    ("resnet12", "block"): 4,
    ("resnet12", "conv"): 16,  # 4 blocks * (3 convs + shortcut)
}
# out_dim by backbone and input size: ConvNets flatten 64 x (S // 16)^2; ResNets pool globally.
OUT_DIMS = {
    "conv4": {28: 64, 32: 256, 84: 1600, 224: 12544},
    "conv6": {28: 64, 32: 256, 84: 1600, 224: 12544},
    "resnet10": dict.fromkeys((28, 32, 84, 224), 512),
    "resnet18": dict.fromkeys((28, 32, 84, 224), 512),
    "resnet12": dict.fromkeys((28, 32, 84, 224), 640),
}
# Parameter counts at 84x84 RGB (ResNet-18 = torchvision's 11,689,512 minus the 1000-way fc).
PARAM_COUNTS = {
    "conv4": 113_088,
    "conv6": 187_200,
    "resnet10": 4_905_792,
    "resnet12": 12_424_320,
    "resnet18": 11_176_512,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def backbone(request: pytest.FixtureRequest) -> Backbone:
    name, kwargs = request.param
    return create_backbone(name, in_channels=3, image_size=32, **kwargs)


def _key(b: Backbone) -> tuple[str, str]:
    return b.name, b.config().get("granularity", "block")


# -- registry ------------------------------------------------------------------------------------


def test_registry_lists_every_backbone_sorted() -> None:
    names = list_backbones()
    assert set(BACKBONES) <= set(names)
    assert names == sorted(names)


def test_unknown_backbone_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'") as err:
        create_backbone("vgg16")
    for name in BACKBONES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", RESNETS)
def test_unknown_granularity_names_the_options(name: str) -> None:
    with pytest.raises(ValueError, match=r"granularity 'stage'.*block, conv"):
        create_backbone(name, granularity="stage")


def test_unknown_backbone_option_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="'conv4' has no option 'granularity'; its options: none"):
        create_backbone("conv4", granularity="conv")
    with pytest.raises(ValueError, match="'resnet12' has no option 'depth'; its options: granul"):
        create_backbone("resnet12", depth=12)


def test_registering_a_name_twice_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("conv4")(lambda **kw: None)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("conv4", {"image_size": 8}, "image_size must be an int >= 16"),
        ("resnet12", {"image_size": 15}, "image_size must be an int >= 16"),
        ("conv4", {"in_channels": 0}, "in_channels must be a positive int"),
        ("resnet18", {"in_channels": 2.0}, "in_channels must be a positive int"),
    ],
)
def test_bad_construction_arguments(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_backbone(name, **kwargs)


# -- layers --------------------------------------------------------------------------------------


def test_layer_names(backbone: Backbone) -> None:
    key = _key(backbone)
    assert backbone.layer_names() == EXPECTED_LAYERS[key]
    if key in EXPECTED_COUNTS:
        assert len(backbone.layer_names()) == EXPECTED_COUNTS[key]
    assert list(backbone.layer_modules()) == backbone.layer_names()


def test_every_parameter_and_buffer_in_exactly_one_layer(backbone: Backbone) -> None:
    layers = set(backbone.layer_names())
    pmap, bmap = backbone.param_layer_map(), backbone.buffer_layer_map()
    assert list(pmap) == [n for n, _ in backbone.named_parameters()]
    assert list(bmap) == [n for n, _ in backbone.named_buffers()]
    assert set(pmap.values()) == layers  # every layer has parameters
    assert set(bmap.values()) == layers  # ... and BN statistics
    # The layer modules hold exactly these tensors, with no overlap between layers.
    seen: list[int] = []
    for modules in backbone.layer_modules().values():
        for m in modules:
            seen += [id(t) for t in (*m.parameters(), *m.buffers())]
    everything = [id(t) for t in (*backbone.parameters(), *backbone.buffers())]
    assert sorted(seen) == sorted(everything)
    assert copy.deepcopy(backbone).param_layer_map() == pmap  # layers are recorded by name
    per_layer = backbone.layer_parameters()
    assert sum(p.numel() for ps in per_layer.values() for p in ps) == sum(
        p.numel() for p in backbone.parameters()
    )


def test_layers_are_listed_in_forward_order(backbone: Backbone) -> None:
    order: list[str] = []
    handles = []
    for layer, modules in backbone.layer_modules().items():
        for m in modules:

            def hook(_m: nn.Module, _args: object, layer: str = layer) -> None:
                if layer not in order:
                    order.append(layer)

            handles.append(m.register_forward_pre_hook(hook))
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(torch.randn(1, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
        backbone.train()
    assert order == backbone.layer_names()


class _Tiny(Backbone):
    """A two-conv backbone whose layer table is given by the test."""

    def __init__(self, layers: dict[str, list[str]]) -> None:
        super().__init__("tiny", 1, 16)
        self.a = nn.Conv2d(1, 2, 3)
        self.b = nn.Conv2d(2, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self._set_layers(layers)


def test_unassigned_or_doubly_assigned_parameters_fail_at_construction() -> None:
    ok = _Tiny({"first": ["a"], "second": ["b", "bn"]})
    assert ok.param_layer_map()["bn.weight"] == "second"
    assert ok.buffer_layer_map()["bn.running_var"] == "second"
    with pytest.raises(RuntimeError, match=r"in no layer: \['bn.bias', 'bn.weight'\]"):
        _Tiny({"first": ["a"], "second": ["b"]})
    with pytest.raises(RuntimeError, match=r"in several: \['a.bias', 'a.weight'\]"):
        _Tiny({"first": ["a"], "second": ["a", "b", "bn"]})
    with pytest.raises(RuntimeError, match="does not exist"):
        _Tiny({"first": ["a", "c"], "second": ["b", "bn"]})


# -- forward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [28, 32, 84, 224])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", BACKBONES)
def test_output_shape(name: str, in_channels: int, size: int) -> None:
    b = create_backbone(name, in_channels=in_channels, image_size=size).eval()
    assert b.out_dim == OUT_DIMS[name][size]
    batch = 1 if size == 224 and name == "resnet12" else 2
    with torch.no_grad():
        y = b(torch.randn(batch, in_channels, size, size))
    assert y.shape == (batch, OUT_DIMS[name][size])
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", BACKBONES)
def test_train_step_reaches_every_parameter(name: str) -> None:
    b = create_backbone(name, in_channels=1, image_size=28)
    b(torch.randn(2, 1, 28, 28)).square().mean().backward()
    assert [n for n, p in b.named_parameters() if p.grad is None] == []
    bns = [m for m in b.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(int(m.num_batches_tracked) == 1 for m in bns)


def test_out_dim_probe_leaves_running_stats_and_mode_alone() -> None:
    b = create_backbone("conv6", image_size=84)
    assert b.training
    for m in b.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 0
            assert torch.equal(m.running_mean, torch.zeros(64))


def test_input_checks() -> None:
    conv = create_backbone("conv4", in_channels=3, image_size=84)
    with pytest.raises(ValueError, match="built for 84x84"):
        conv(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expects images \(B, 3, S, S\)"):
        conv(torch.randn(2, 1, 84, 84))
    with pytest.raises(ValueError, match="add a batch dimension"):
        conv(torch.randn(3, 84, 84))
    resnet = create_backbone("resnet10", image_size=84).eval()
    with torch.no_grad():
        assert resnet(torch.randn(2, 3, 40, 40)).shape == (2, 512)  # global pool: any size


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_channels_last_gives_the_same_features(name: str) -> None:
    b = create_backbone(name, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = b(x)
        got = b.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# -- config and weights ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=CASE_IDS)
def test_config_round_trip(name: str, kwargs: dict) -> None:
    b = create_backbone(name, in_channels=1, image_size=28, **kwargs)
    config = json.loads(json.dumps(b.config()))
    assert config["name"] == name and config["in_channels"] == 1 and config["image_size"] == 28
    assert ("granularity" in config) == name.startswith("resnet")
    rebuilt = create_backbone(**config)
    assert type(rebuilt) is type(b)
    assert rebuilt.layer_names() == b.layer_names()
    assert rebuilt.out_dim == b.out_dim
    shapes = {k: v.shape for k, v in b.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(b.state_dict())


@pytest.mark.parametrize("name", BACKBONES)
def test_parameter_counts(name: str) -> None:
    b = create_backbone(name, in_channels=3, image_size=84)
    assert sum(p.numel() for p in b.parameters()) == PARAM_COUNTS[name]


def test_resnet18_state_dict_matches_torchvision() -> None:
    torchvision = pytest.importorskip("torchvision")
    ours = create_backbone("resnet18", granularity="conv").state_dict()
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    theirs = {k: v for k, v in theirs.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


# -- heads ---------------------------------------------------------------------------------------


def test_linear_head() -> None:
    head = create_head("linear", 16, 5)
    assert isinstance(head, LinearHead)
    assert head(torch.randn(4, 16)).shape == (4, 5)
    assert not head.bias.any()
    with pytest.raises(ValueError, match=r"expects features \(B, 16\)"):
        head(torch.randn(4, 8))


def test_cosine_head_is_bounded_and_scale_invariant() -> None:
    assert CosineHead(8, 200).scale == 2.0
    assert CosineHead(8, 201).scale == 10.0
    head = create_head("cosine", 32, 7, scale=5.0)
    assert isinstance(head, CosineHead) and head.scale == 5.0
    x = 100 * torch.randn(64, 32)
    logits = head(x)
    assert logits.shape == (64, 7)
    assert logits.abs().max() <= 5.0 + 1e-5
    torch.testing.assert_close(head(0.01 * x), logits)
    # A feature equal to a class weight scores +scale for that class; its negation -scale.
    w = head.weight.detach()
    torch.testing.assert_close(head(3 * w[2:3])[0, 2], torch.tensor(5.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(head(-w[2:3])[0, 2], torch.tensor(-5.0), rtol=1e-4, atol=1e-4)


def test_cosine_head_works_with_functional_call() -> None:
    head = CosineHead(4, 3)
    weight = torch.eye(3, 4, requires_grad=True)
    x = torch.tensor([[0.0, 2.0, 0.0, 0.0]])
    logits = torch.func.functional_call(head, {"weight": weight}, (x,))
    torch.testing.assert_close(logits, torch.tensor([[0.0, 2.0, 0.0]]), rtol=1e-4, atol=1e-4)
    logits[0, 1].backward()
    assert weight.grad is not None


def test_prototypes_are_class_means() -> None:
    features = torch.tensor([[0.0, 0.0], [2.0, 4.0], [1.0, 1.0], [3.0, 3.0]])
    labels = torch.tensor([1, 1, 0, 0])
    protos = PrototypeHead.prototypes(features, labels, 2)
    torch.testing.assert_close(protos, torch.tensor([[2.0, 2.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"every class 0\.\.2"):
        PrototypeHead.prototypes(features, labels, 3)  # class 2 has no support example
    with pytest.raises(ValueError, match=r"every class 0\.\.1"):
        PrototypeHead.prototypes(features, torch.tensor([0, 1, 2, 0]), 2)


def test_prototype_head_euclidean_logits() -> None:
    head = PrototypeHead()
    q, p = torch.randn(6, 8), torch.randn(3, 8)
    torch.testing.assert_close(head(q, p), -torch.cdist(q, p).square(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"prototypes must be \(C, 8\)"):
        head(q, torch.randn(3, 5))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_prototype_head_separates_clusters(metric: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n_way, dim = 5, 16
    centres = 10 * torch.eye(n_way, dim) + 1.0  # distinct directions, so cosine separates too
    support_labels = torch.arange(n_way).repeat_interleave(5)
    query_labels = torch.arange(n_way).repeat_interleave(15)
    support = centres[support_labels] + 0.5 * torch.randn(len(support_labels), dim, generator=gen)
    query = centres[query_labels] + 0.5 * torch.randn(len(query_labels), dim, generator=gen)
    head = create_head("prototype", dim, n_way, metric=metric)
    assert isinstance(head, PrototypeHead) and not list(head.parameters())
    logits = head(query, head.prototypes(support, support_labels, n_way))
    assert logits.shape == (len(query_labels), n_way)
    assert torch.equal(logits.argmax(1), query_labels)


def test_unknown_head_kind_and_metric_name_the_options() -> None:
    with pytest.raises(ValueError, match="unknown head kind 'svm'; choose one of: linear, cosine"):
        create_head("svm", 8, 5)
    with pytest.raises(ValueError, match=r"unknown metric 'manhattan'.*euclidean, cosine"):
        PrototypeHead(metric="manhattan")
