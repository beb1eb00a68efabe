"""The architecture registry and the feature taps: builds, key layouts, attention levels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from argd.core.architectures import ARCHITECTURES, build_model
from argd.core.errors import InvalidModel
from argd.core.features import (
    FeatureTap,
    auto_feature_layers,
    default_node_weights,
    resolve_feature_layers,
)
from argd.core.spec import ModelSpec


def _spec(architecture: str, **kwargs: object) -> ModelSpec:
    values: dict[str, object] = {"num_classes": 7, "in_channels": 1, "image_size": 16}
    values.update(kwargs)
    return ModelSpec(architecture=architecture, **values)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_builds_runs_and_reloads_strictly(architecture: str) -> None:
    spec = _spec(architecture)
    model = build_model(spec).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 16, 16))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    info = ARCHITECTURES[architecture]
    assert info.node_weights is None or len(info.node_weights) == len(info.feature_layers or [])
    # A second, independently initialised copy takes the first one's tensors strictly and then agrees.
    clone = build_model(spec).eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(clone(torch.ones(1, 1, 16, 16)), model(torch.ones(1, 1, 16, 16)))


# Exact counts and spot-checked shapes of torchvision's and the reference codes' layouts (3 channels, 10
# classes, the non-small stems where it matters).
LAYOUTS = [
    ("wrn-16-1", {}, 82, {"block2.layer.0.convShortcut.weight": (32, 16, 1, 1), "bn1.running_var": (64,)}),
    ("wrn-16-2", {}, 83, {"block1.layer.0.convShortcut.weight": (32, 16, 1, 1), "fc.weight": (10, 128)}),
    ("wrn-40-2", {}, 227, {"block3.layer.5.conv2.weight": (128, 128, 3, 3)}),
    (
        "preact-resnet18",
        {},
        102,
        {
            "layer2.0.shortcut.0.weight": (128, 64, 1, 1),
            "layer4.1.bn2.weight": (512,),
            "linear.weight": (10, 512),
        },
    ),
    (
        "resnet18",
        {"small_input": False},
        122,
        {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 3, 3), "fc.weight": (10, 512)},
    ),
    (
        "resnet18",
        {"small_input": True},
        122,
        {"conv1.weight": (64, 3, 3, 3), "layer2.0.downsample.1.bias": (128,)},
    ),
    ("resnet34", {}, 218, {"layer3.5.bn2.running_mean": (256,)}),
    (
        "resnet50",
        {"small_input": False},
        320,
        {"layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer4.2.conv3.weight": (2048, 512, 1, 1)},
    ),
    (
        "vgg11-bn",
        {"small_input": False},
        62,
        {
            "features.25.weight": (512, 512, 3, 3),
            "features.26.running_var": (512,),
            "classifier.0.weight": (4096, 25088),
        },
    ),
    (
        "vgg16-bn",
        {"small_input": True},
        97,
        {
            "features.40.weight": (512, 512, 3, 3),
            "classifier.0.weight": (512, 512),
            "classifier.6.weight": (10, 512),
        },
    ),
    (
        "mobilenet-v2",
        {},
        314,
        {
            "features.0.0.weight": (32, 3, 3, 3),
            "features.1.conv.1.weight": (16, 32, 1, 1),
            "features.2.conv.0.0.weight": (96, 16, 1, 1),
            "features.17.conv.2.weight": (320, 960, 1, 1),
            "features.18.1.running_mean": (1280,),
            "classifier.1.weight": (10, 1280),
        },
    ),
    ("small-cnn", {}, 20, {"stage1.0.weight": (16, 3, 3, 3), "fc.weight": (10, 64)}),
]


@pytest.mark.parametrize(("architecture", "arch_kwargs", "count", "shapes"), LAYOUTS)
def test_state_dict_layouts(
    architecture: str, arch_kwargs: dict, count: int, shapes: dict[str, tuple[int, ...]]
) -> None:
    spec = _spec(architecture, num_classes=10, in_channels=3, image_size=32, arch_kwargs=arch_kwargs)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        state = build_model(spec).state_dict()
    assert len(state) == count
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key


def test_torchvision_parameter_counts_at_imagenet_settings() -> None:
    """Published torchvision sizes (1000 classes, 224 px heads): the same modules, not just the same names."""
    expected = {
        "resnet18": 11_689_512,
        "resnet50": 25_557_032,
        "mobilenet-v2": 3_504_872,
        "vgg11-bn": 132_868_840,
        "vgg16-bn": 138_365_992,
    }
    for architecture, params in expected.items():
        spec = ModelSpec(
            architecture=architecture,
            num_classes=1000,
            in_channels=3,
            image_size=224,
            arch_kwargs={"small_input": False},
        )
        with torch.device("meta"):
            assert sum(p.numel() for p in build_model(spec).parameters()) == params, architecture


def test_wrn_16_1_matches_the_reference_size() -> None:
    model = build_model(_spec("wrn-16-1", num_classes=10, in_channels=3, image_size=32))
    assert sum(p.numel() for p in model.parameters()) == 175_066  # counted in the released NAD checkpoint
    assert not hasattr(model.block1.layer[0], "convShortcut") or model.block1.layer[0].convShortcut is None


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(InvalidModel) as caught:
        build_model(_spec("resnet1000"))
    assert "resnet1000" in caught.value.message
    assert "wrn-16-1" in caught.value.message and "mobilenet-v2" in caught.value.message
    assert caught.value.code == "invalid_model"


def test_unknown_arch_kwarg_lists_the_allowed_ones() -> None:
    with pytest.raises(InvalidModel) as caught:
        build_model(_spec("resnet18", arch_kwargs={"depth": 3}))
    assert "depth" in caught.value.message and "small_input" in caught.value.message
    assert caught.value.details["allowed"] == ["small_input"]


def test_arch_kwarg_of_wrong_type_is_refused() -> None:
    with pytest.raises(InvalidModel, match="must be bool"):
        build_model(_spec("resnet18", arch_kwargs={"small_input": 1}))
    with pytest.raises(InvalidModel, match="width"):
        build_model(_spec("small-cnn", arch_kwargs={"width": 0}))


def test_small_input_switches_the_stem_and_defaults_by_image_size() -> None:
    small = build_model(_spec("resnet18", image_size=32))
    large = build_model(_spec("resnet18", image_size=96))
    forced = build_model(_spec("resnet18", image_size=32, arch_kwargs={"small_input": False}))
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, nn.MaxPool2d)
    assert forced.conv1.kernel_size == (7, 7)
    assert build_model(_spec("mobilenet-v2", image_size=32)).features[0][0].stride == (1, 1)
    assert build_model(_spec("mobilenet-v2", image_size=96)).features[0][0].stride == (2, 2)


def test_wideresnet_takes_inputs_that_are_not_32_px() -> None:
    model = build_model(_spec("wrn-16-1", image_size=28)).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 1, 28, 28)).shape == (3, 7)


# ----------------------------------------------------------------------------------------------- features


def test_feature_tap_records_outputs_in_layer_order_and_removes_hooks() -> None:
    model = build_model(_spec("small-cnn")).eval()
    with FeatureTap(model, ["stage3", "stage1"]) as tap:
        model(torch.rand(2, 1, 16, 16))
        deep, shallow = tap.features
        assert deep.shape == (2, 64, 4, 4)
        assert shallow.shape == (2, 16, 16, 16)
        assert tap.features[0] is deep  # reading twice gives the same tensors
    assert not model.stage1._forward_hooks and not model.stage3._forward_hooks


def test_feature_tap_keeps_the_autograd_graph() -> None:
    model = build_model(_spec("small-cnn"))
    with FeatureTap(model, ["stage2"]) as tap:
        model(torch.rand(2, 1, 16, 16))
        tap.features[0].pow(2).mean().backward()
    assert model.stage1[0].weight.grad is not None and model.stage1[0].weight.grad.abs().sum() > 0


def test_feature_tap_removes_hooks_after_an_exception() -> None:
    model = build_model(_spec("small-cnn"))
    with pytest.raises(RuntimeError), FeatureTap(model, ["stage1"]):
        model(torch.rand(2, 3, 16, 16))  # wrong channel count
    assert not model.stage1._forward_hooks


def test_feature_tap_unknown_layer_and_no_forward() -> None:
    model = build_model(_spec("small-cnn"))
    with pytest.raises(InvalidModel, match="block9"):
        FeatureTap(model, ["stage1", "block9"])
    with FeatureTap(model, ["stage1"]) as tap, pytest.raises(InvalidModel, match="no output"):
        _ = tap.features


def test_resolve_uses_registry_levels_and_reference_weights(wrn_spec: ModelSpec) -> None:
    model = build_model(wrn_spec)
    assert resolve_feature_layers(model, wrn_spec) == ["block1", "block2", "block3"]
    assert default_node_weights(wrn_spec, 3) == [2000.0, 5000.0, 2000.0]
    assert default_node_weights(_spec("resnet18"), 3) == [2000.0, 2000.0, 2000.0]


def test_resolve_drops_default_levels_that_shrink_to_1x1() -> None:
    # ImageNet stem on 32 px: layer2 is 4x4, layer3 2x2, layer4 1x1 (a constant attention map).
    spec = _spec("resnet18", image_size=32, arch_kwargs={"small_input": False})
    assert resolve_feature_layers(build_model(spec), spec) == ["layer2", "layer3"]


def test_resolve_validates_explicit_layers() -> None:
    spec = _spec("small-cnn", feature_layers=["stage2", "stage3"])
    model = build_model(spec)
    assert resolve_feature_layers(model, spec) == ["stage2", "stage3"]
    assert default_node_weights(spec, 2) == [2000.0, 2000.0]
    with pytest.raises(InvalidModel, match="nope"):
        resolve_feature_layers(model, _spec("small-cnn", feature_layers=["nope"]))
    with pytest.raises(InvalidModel, match="4-D"):
        resolve_feature_layers(model, _spec("small-cnn", feature_layers=["fc"]))
    with pytest.raises(InvalidModel, match="1x1"):
        resolve_feature_layers(model, _spec("small-cnn", feature_layers=["pool"]))


@pytest.mark.parametrize(
    ("architecture", "image_size", "expected"),
    [
        ("small-cnn", 16, ["stage1", "stage2", "stage3"]),
        ("resnet18", 32, ["layer1", "layer2", "layer3", "layer4"]),
        ("preact-resnet18", 32, ["layer1", "layer2", "layer3", "layer4"]),
        ("wrn-16-1", 32, ["block1", "block2", "relu"]),
        ("vgg11-bn", 32, ["features.2", "features.6", "features.13", "features.20", "features.27"]),
        ("mobilenet-v2", 32, ["features.1", "features.3", "features.6", "features.13", "features"]),
    ],
)
def test_auto_feature_layers_picks_stage_outputs(
    architecture: str, image_size: int, expected: list[str]
) -> None:
    model = build_model(_spec(architecture, image_size=image_size))
    assert auto_feature_layers(model, 1, image_size) == expected


def test_auto_detection_is_the_default_without_registry_levels_and_leaves_bn_alone() -> None:
    spec = _spec("vgg11-bn", image_size=28)
    model = build_model(spec).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    levels = resolve_feature_layers(model, spec)
    assert levels == [
        "features.2",
        "features.6",
        "features.13",
        "features.20",
    ]  # 28, 14, 7, 3 px; 1 px left out
    assert model.training  # the probe restores the mode
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    with FeatureTap(model, levels) as tap:
        model(torch.rand(2, 1, 28, 28))
        assert [f.shape[-1] for f in tap.features] == [28, 14, 7, 3]
