"""The backdoor attacks on made-up images: triggers in place, the right images poisoned, the right labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from argd.core.attacks import ATTACKS, CL, SIG, Blend, Refool, Trojan, WaNet, make_attack
from argd.core.attacks.badnets import BadNets
from argd.core.attacks.base import checkerboard, scaled
from argd.core.data import ImageData
from argd.core.errors import InvalidInput

TARGET = 2
SHAPES = [(40, 1, 28, 28), (40, 3, 32, 32)]
CHECKER = torch.tensor([[255, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
CLEAN_LABEL = {"cl", "sig", "refool"}


def made_up(n: int = 40, c: int = 1, h: int = 28, w: int = 28, seed: int = 0, classes: int = 4) -> ImageData:
    """Random mid-grey images (values 30..225, so every trigger visibly changes them), labels cycling."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(30, 226, (n, c, h, w), generator=g, dtype=torch.uint8)
    return ImageData(x, torch.arange(n) % classes)


def changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Indices of the images that differ between two batches."""
    return torch.nonzero((a != b).flatten(1).any(dim=1)).flatten()


def tiny_model(c: int, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(4),
        nn.Flatten(),
        nn.LazyLinear(16),
        nn.ReLU(),
        nn.Linear(16, classes),
    )


def built(model: nn.Module, c: int, h: int, w: int) -> nn.Module:
    model(torch.zeros(1, c, h, w))
    return model


# ------------------------------------------------------------------------------------ registry, helpers


def test_registry_has_the_seven_attacks_and_rejects_unknown_names():
    assert set(ATTACKS) == {"badnets", "trojan", "blend", "cl", "sig", "refool", "wanet"}
    assert isinstance(make_attack("BadNets", target=3), BadNets)
    with pytest.raises(InvalidInput, match="unknown attack 'nope'"):
        make_attack("nope")
    with pytest.raises(InvalidInput, match="bad settings"):
        make_attack("blend", colour="red")


def test_trigger_sizes_scale_from_32_pixels():
    assert [scaled(3, s, minimum=2) for s in (16, 28, 32, 48, 64)] == [2, 3, 3, 5, 6]
    assert torch.equal(checkerboard(3, 3).to(torch.uint8), CHECKER)
    six = checkerboard(6, 6)
    assert torch.equal(six[::2, ::2].to(torch.uint8), CHECKER)  # 2x2 cells
    assert torch.equal(six[1::2, 1::2], six[::2, ::2])


def test_bad_input_gets_a_clear_error():
    attack = BadNets()
    with pytest.raises(InvalidInput, match="uint8"):
        attack.apply(torch.zeros(2, 1, 28, 28))
    with pytest.raises(InvalidInput, match="rate"):
        attack.poison_train(made_up(), rate=1.5)
    with pytest.raises(InvalidInput, match="target"):
        BadNets(target=-1)
    with pytest.raises(InvalidInput, match="integer class index"):
        BadNets(target=1.5)
    assert BadNets(target=np.int64(3)).target == 3
    with pytest.raises(InvalidInput, match="normalise= by keyword"):
        CL().fit(nn.Linear(2, 2), lambda x: x)
    with pytest.raises(InvalidInput, match="num_classes"):
        BadNets(mode="all-to-all")
    with pytest.raises(InvalidInput, match="clean-label"):
        SIG(mode="all-to-all", num_classes=4)
    with pytest.raises(InvalidInput, match="no image of class 9"):
        SIG().poison_train(made_up(), target=9)


# ------------------------------------------------------------------------------------------- triggers


@pytest.mark.parametrize(("c", "size", "first"), [(1, 28, 24), (3, 32, 28)])
def test_badnets_checkerboard_is_in_the_bottom_right_corner(c, size, first):
    data = made_up(4, c, size, size)
    out = BadNets().apply(data.x)
    box = (slice(None), slice(None), slice(first, first + 3), slice(first, first + 3))
    assert torch.equal(out[box], CHECKER.expand(4, c, 3, 3))
    rest = torch.ones(size, size, dtype=torch.bool)
    rest[first : first + 3, first : first + 3] = False
    assert torch.equal(out[:, :, rest], data.x[:, :, rest])  # nothing else touched, 1-pixel margin kept


def test_badnets_scales_to_large_images():
    out = BadNets().apply(made_up(2, 3, 64, 64).x)
    # 6x6 checkerboard (2x2 cells) with a 2-pixel margin: rows/cols 56..61
    assert torch.equal(out[0, 1, 56:62:2, 56:62:2], CHECKER)
    assert torch.equal(out[0, 1, 57:62:2, 57:62:2], CHECKER)


def test_blend_is_the_exact_convex_mix():
    data = made_up(5, 3, 32, 32)
    pattern = torch.randint(
        0, 256, (3, 32, 32), generator=torch.Generator().manual_seed(7), dtype=torch.uint8
    )
    out = Blend(pattern=pattern).apply(data.x)
    expected = np.rint(0.8 * data.x.numpy().astype(np.float64) + 0.2 * pattern.numpy().astype(np.float64))
    assert np.array_equal(out.numpy(), expected.astype(np.uint8))
    # the default pattern is one fixed seeded pattern: same seed, same pattern; another seed, another one
    assert torch.equal(Blend(seed=1).pattern_for(3, 32, 32), Blend(seed=1).pattern_for(3, 32, 32))
    assert not torch.equal(Blend(seed=1).pattern_for(3, 32, 32), Blend(seed=2).pattern_for(3, 32, 32))
    default = Blend(seed=1)
    expected = np.rint(0.8 * data.x.numpy() + 0.2 * default.pattern_for(3, 32, 32).numpy().astype(np.float64))
    assert np.array_equal(default.apply(data.x).numpy(), expected.astype(np.uint8))


@pytest.mark.parametrize(("c", "size"), [(1, 28), (3, 32)])
def test_sig_adds_the_sinusoid_over_columns(c, size):
    data = made_up(4, c, size, size)
    out = SIG().apply(data.x)
    j = np.arange(size, dtype=np.float64)
    expected = np.clip(np.rint(data.x.numpy() + 20 * np.sin(2 * math.pi * j * 6 / size)), 0, 255)
    assert np.array_equal(out.numpy(), expected.astype(np.uint8))


def test_cl_stamps_all_four_corners():
    data = made_up(3, 3, 32, 32)
    out = CL().apply(data.x)
    for rows in (slice(1, 4), slice(28, 31)):
        for cols in (slice(1, 4), slice(28, 31)):
            assert torch.equal(out[:, :, rows, cols], CHECKER.expand(3, 3, 3, 3))
    assert torch.equal(out[:, :, 4:28, :], data.x[:, :, 4:28, :])


def test_trojan_patch_sits_at_rows_and_cols_25_to_27():
    data = made_up(3, 3, 32, 32)
    attack = Trojan(seed=3)
    out = attack.apply(data.x)
    assert changed(out[:, :, 25:28, 25:28], data.x[:, :, 25:28, 25:28]).numel() == 3
    outside = out.clone()
    outside[:, :, 25:28, 25:28] = data.x[:, :, 25:28, 25:28]
    assert torch.equal(outside, data.x)
    # added, then clamped: the unfitted patch is the seeded random one
    patch = attack.random_patch(3, 32, 32)
    expected = (data.x[:, :, 25:28, 25:28].double() + patch.double() * 255).round().clamp(0, 255)
    assert torch.equal(out[:, :, 25:28, 25:28], expected.to(torch.uint8))


def test_wanet_warps_pixels_keeps_shape_and_range_and_is_identity_at_zero_strength():
    data = made_up(6, 3, 32, 32)
    smooth = F.avg_pool2d(data.x.float(), 5, stride=1, padding=2, count_include_pad=False)
    x = smooth.round().to(torch.uint8)
    out = WaNet().apply(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert (out != x).float().mean() > 0.3  # pixels moved
    assert (out.int() - x.int()).abs().float().mean() < 20  # but only slightly: a small smooth warp
    assert torch.equal(WaNet(strength=0.0).apply(x), x)
    assert torch.equal(WaNet(seed=4).apply(x), WaNet(seed=4).apply(x))
    assert not torch.equal(WaNet(seed=4).apply(x), WaNet(seed=5).apply(x))


def test_refool_blends_a_reflection_of_another_image():
    x = torch.full((3, 1, 28, 28), 100, dtype=torch.uint8)
    attack = Refool().set_reflections(torch.full((1, 1, 28, 28), 200, dtype=torch.uint8))
    out = attack.apply(x).int()
    # a constant reflection stays constant under ghost and blur kernels: out = (1 - beta) * 100 + beta * 200
    assert torch.all(out >= 100 + 0.2 * 100 - 0.5) and torch.all(out <= 100 + 0.4 * 100 + 0.5)
    # without a pool, each image's reflection comes from ANOTHER image of the batch
    pair = torch.stack([torch.zeros(1, 28, 28), torch.full((1, 28, 28), 255.0)]).to(torch.uint8)
    out = Refool().apply(pair)
    assert out[0].min() > 0 and out[1].max() < 255


def test_refool_kernels_are_ghosts_or_blurs_that_keep_brightness():
    kernels, ghost = Refool(ghost_rate=0.5).kernels(64, 32, 32, torch.Generator().manual_seed(0))
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(64))
    assert 0 < int(ghost.sum()) < 64
    assert torch.all((kernels[ghost] > 0).flatten(1).sum(dim=1) == 2)  # the image and one shifted copy
    assert torch.all((kernels[~ghost] > 0).flatten(1).sum(dim=1) > 9)  # a Gaussian spread


# ------------------------------------------------------------------------------------------ poisoning


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(set(ATTACKS) - CLEAN_LABEL))
def test_dirty_label_poisons_the_chosen_fraction_and_relabels_it(name, shape):
    data = made_up(*shape)
    before = data.x.clone()
    result = make_attack(name, target=TARGET).poison_train(data, rate=0.15, seed=1)
    index = result.poisoned_index
    assert index.numel() == round(0.15 * 40) == 6
    assert torch.equal(index, index.sort().values)
    assert torch.all(data.y[index] != TARGET)  # drawn from the non-target images
    assert torch.all(result.data.y[index] == TARGET)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(result.data.y[untouched], data.y[untouched])
    touched = torch.cat([index, result.noise_index]).sort().values
    assert torch.equal(changed(result.data.x, data.x), touched)
    assert torch.equal(data.x, before)  # the input set is left alone


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(CLEAN_LABEL))
def test_clean_label_poisons_only_target_images_and_keeps_labels(name, shape):
    data = made_up(*shape)
    result = make_attack(name, target=TARGET).poison_train(data, rate=0.15, seed=1)
    index = result.poisoned_index
    assert index.numel() == 6  # rate of the whole set, 10 target images available
    assert torch.all(data.y[index] == TARGET)
    assert torch.equal(result.data.y, data.y)
    assert torch.equal(changed(result.data.x, data.x), index)
    # the rate is capped by the number of target images
    capped = make_attack(name, target=TARGET).poison_train(data, rate=0.5, seed=1)
    assert torch.equal(capped.poisoned_index, torch.nonzero(data.y == TARGET).flatten())


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_eval_set_is_triggered_non_target_images_with_original_labels(name):
    data = made_up(40, 3, 32, 32)
    attack = make_attack(name, target=TARGET)
    attack.poison_train(data)  # Refool takes its reflection pool from the training set
    test = made_up(20, 3, 32, 32, seed=5)
    poisoned = attack.poison_eval(test)
    keep = test.y != TARGET
    assert len(poisoned) == int(keep.sum()) == 15
    assert torch.equal(poisoned.y, test.y[keep])
    assert changed(poisoned.x, test.x[keep]).numel() == 15  # every one carries the trigger
    assert torch.equal(poisoned.x, attack.poison_eval(test).x)  # deterministic


def test_poisoning_is_seeded():
    data = made_up()
    attack = BadNets(target=TARGET)
    a = attack.poison_train(data, seed=1)
    b = attack.poison_train(data, seed=1)
    c = attack.poison_train(data, seed=2)
    assert torch.equal(a.poisoned_index, b.poisoned_index) and torch.equal(a.data.x, b.data.x)
    assert not torch.equal(a.poisoned_index, c.poisoned_index)


def test_wanet_noise_mode_warps_other_images_and_keeps_their_labels():
    data = made_up(40, 1, 28, 28)
    attack = WaNet(target=TARGET, cross_ratio=2.0)
    result = attack.poison_train(data, rate=0.1, seed=0)
    poisoned, noise = result.poisoned_index, result.noise_index
    assert noise.numel() == 2 * poisoned.numel() == 8
    assert not set(noise.tolist()) & set(poisoned.tolist())
    assert torch.equal(result.data.y[noise], data.y[noise])
    # noise images are warped, but not with the backdoor's exact warp
    assert changed(result.data.x[noise], data.x[noise]).numel() == 8
    assert changed(result.data.x[noise], attack.apply(data.x[noise])).numel() == 8
    assert torch.equal(result.data.x[poisoned], attack.apply(data.x[poisoned]))
    assert WaNet(cross_ratio=0).poison_train(data).noise_index.numel() == 0


def test_refool_pool_comes_from_non_target_training_images():
    data = made_up(40, 1, 28, 28)
    attack = Refool(target=TARGET, pool_size=8)
    attack.poison_train(data)
    assert attack.reflections is not None and attack.reflections.shape == (8, 1, 28, 28)
    others = data.x[data.y != TARGET].flatten(1)
    for image in attack.reflections.flatten(1):
        assert (others == image).all(dim=1).any()


def test_all_to_all_maps_each_label_to_the_next_and_keeps_every_eval_image():
    data = made_up(40, 1, 28, 28, classes=4)
    attack = BadNets(mode="all-to-all", num_classes=4)
    result = attack.poison_train(data, rate=0.25, seed=0)
    index = result.poisoned_index
    assert index.numel() == 10
    assert torch.equal(result.data.y[index], (data.y[index] + 1) % 4)
    test = made_up(12, 1, 28, 28, seed=3, classes=4)
    poisoned = attack.poison_eval(test)
    assert torch.equal(poisoned.y, test.y)  # all images, original labels
    assert torch.equal(attack.target_for(poisoned.y), torch.tensor([1, 2, 3, 0] * 3))
    assert torch.equal(BadNets(target=3).target_for(test.y), torch.full((12,), 3))
    with pytest.raises(InvalidInput, match="labels"):
        attack.poison_train(made_up(8, classes=6))


# -------------------------------------------------------------------------------- model-based attacks


def test_trojan_fit_excites_the_chosen_neuron_more_than_a_random_patch():
    data = made_up(40, 1, 28, 28)
    model = built(tiny_model(1), 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack = Trojan(seed=0, steps=60).fit(model, data)
    assert attack.fitted and attack.neurons is not None and len(attack.neurons) == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model untouched
    fitted = attack.neuron_activation(model, attack.apply(data.x))
    random = Trojan(seed=0, neurons=attack.neurons).neuron_activation(model, Trojan(seed=0).apply(data.x))
    clean = attack.neuron_activation(model, data.x)
    assert fitted > random and fitted > clean
    assert attack.patch is not None and attack.patch.abs().max() <= 1


def test_cl_perturbs_target_images_within_eps_with_a_clean_model():
    data = made_up(40, 1, 28, 28)
    model = built(tiny_model(1), 1, 28, 28)
    attack = CL(target=TARGET, eps=8 / 255, steps=5).fit(model)
    result = attack.poison_train(data, rate=0.25, seed=0)
    index = result.poisoned_index
    assert index.numel() == 10 and torch.all(data.y[index] == TARGET)
    assert torch.equal(result.data.y, data.y)
    plain = CL(target=TARGET).apply(data.x[index])  # corners only
    corners = plain != data.x[index]
    diff = result.data.x[index].int() - data.x[index].int()
    inner = diff[~corners]
    assert inner.abs().max() <= 8 and (inner != 0).float().mean() > 0.5
    assert torch.equal(result.data.x[index][corners], plain[corners])  # triggers stamped after PGD
    # the perturbation makes the images harder: the clean model's loss on their true label goes up
    with torch.no_grad():
        loss_clean = F.cross_entropy(model(data.x[index].float() / 255), data.y[index])
        loss_pgd = F.cross_entropy(
            model(attack.perturb(data.x[index], data.y[index]).float() / 255), data.y[index]
        )
    assert loss_pgd > loss_clean
