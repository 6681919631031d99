"""The coloured-digits datasets with ground-truth mechanisms (kdci_ray.cgn.data)."""

from __future__ import annotations

import pytest
import torch

from kdci_ray.cgn.composition import compose
from kdci_ray.cgn.data import (
    BG_PALETTE,
    FG_PALETTE,
    VARIANTS,
    MechanismData,
    make_split,
    textures,
)
from kdci_ray.data.digits import load_digits

FIELDS = ("images", "labels", "masks", "foregrounds", "backgrounds", "fg_labels", "bg_labels")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module", params=VARIANTS)
def splits(request) -> dict[str, MechanismData]:
    return {split: make_split(request.param, split) for split in ("train", "test", "oracle")}


def _nearest(colors: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    return torch.cdist(colors, palette).argmin(1)


def _unmix(data: MechanismData) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (foreground, background) colour read from the image alone and its mask: the
    background is the mean of the (near-)empty pixels, the foreground the least-squares solution
    of ``x - b = m * (f - b)``."""
    x, m = data.images.flatten(2), data.masks.flatten(2)
    empty = (m < 0.05).float()
    b = (x * empty).sum(2) / empty.sum(2)
    f = b + (m * (x - b[:, :, None])).sum(2) / (m * m).sum(2)
    return f, b


def _nearest_centroid_accuracy(train: torch.Tensor, y_train: torch.Tensor,
                               test: torch.Tensor, y_test: torch.Tensor) -> float:
    centroids = torch.stack([train[y_train == c].mean(0) for c in range(10)])
    return (_nearest(test, centroids) == y_test).float().mean().item()


def test_images_are_the_composition_of_the_mechanisms(splits, digits):
    for split, data in splits.items():
        n = len(digits.y_test if split == "test" else digits.y_train)
        assert len(data) == n
        assert torch.equal(data.images, compose(data.masks, data.foregrounds, data.backgrounds))
        assert data.images.shape == data.foregrounds.shape == data.backgrounds.shape \
            == (n, 3, 16, 16)
        assert data.masks.shape == (n, 1, 16, 16)
        for name in ("images", "masks", "foregrounds", "backgrounds"):
            t = getattr(data, name)
            assert t.dtype == torch.float32 and t.min() >= 0.0 and t.max() <= 1.0, name
        for name in ("labels", "fg_labels", "bg_labels"):
            t = getattr(data, name)
            assert t.shape == (n,) and t.dtype == torch.int64 and 0 <= t.min() <= t.max() < 10


def test_masks_are_the_digit_strokes_and_splits_are_disjoint(splits, digits):
    assert torch.equal(splits["train"].masks, digits.x_train.float() / 255)
    assert torch.equal(splits["oracle"].masks, splits["train"].masks)
    assert torch.equal(splits["test"].masks, digits.x_test.float() / 255)
    assert torch.equal(splits["test"].labels, digits.y_test)
    train = {bytes(x.numpy()) for x in digits.x_train}
    assert not any(bytes(x.numpy()) in train for x in digits.x_test)


def test_biased_train_ties_every_mechanism_to_the_digit(splits):
    data = splits["train"]
    assert torch.equal(data.fg_labels, data.labels)
    assert torch.equal(data.bg_labels, data.labels)


def test_partial_bias_ties_about_that_fraction():
    data = make_split("colored", "train", bias=0.5, copies=2)
    # tied with probability 0.5, otherwise uniform (which agrees 1 time in 10): 0.55 expected
    for labels in (data.fg_labels, data.bg_labels):
        assert abs((labels == data.labels).float().mean().item() - 0.55) < 0.05
    both = (data.fg_labels == data.labels) & (data.bg_labels == data.labels)
    assert abs(both.float().mean().item() - 0.505) < 0.05


@pytest.mark.parametrize("split", ["test", "oracle"])
def test_unbiased_splits_draw_texture_labels_independently(split):
    data = make_split("colored", split, copies=3)
    for a, b in ((data.fg_labels, data.labels), (data.bg_labels, data.labels),
                 (data.fg_labels, data.bg_labels)):
        assert abs((a == b).float().mean().item() - 0.1) < 0.03
    counts = torch.bincount(data.fg_labels * 10 + data.bg_labels, minlength=100)
    assert counts.min() > 0  # every (fg, bg) pair occurs
    assert torch.bincount(data.fg_labels, minlength=10).min() > 0.07 * len(data)


@pytest.mark.parametrize("variant", ["colored", "double_colored"])
def test_palette_readout_recovers_the_texture_labels(variant):
    data = make_split(variant, "test", copies=2)
    f, b = _unmix(data)
    assert (_nearest(f, FG_PALETTE) == data.fg_labels).float().mean() >= 0.95
    if variant == "colored":
        assert torch.count_nonzero(data.backgrounds) == 0
        assert b.max() < 0.02  # black, up to a faint stroke halo in the empty pixels
    else:
        assert (_nearest(b, BG_PALETTE) == data.bg_labels).float().mean() >= 0.95


def test_palettes_are_fixed_distinct_and_apart():
    for palette in (FG_PALETTE, BG_PALETTE):
        d = torch.cdist(palette, palette) + 10 * torch.eye(10)
        assert d.min() > 0.25
    assert torch.cdist(FG_PALETTE, BG_PALETTE).min() > 0.25
    labels = torch.arange(10).repeat(200)
    means = []
    for seed in (0, 1):
        fg, bg = textures("double_colored", labels, labels, 16, torch.Generator().manual_seed(seed))
        means.append(torch.stack([fg[labels == c].mean((0, 2, 3)) for c in range(10)]))
        assert torch.allclose(bg[labels == 3].mean((0, 2, 3)), BG_PALETTE[3], atol=0.02)
    assert torch.allclose(means[0], means[1], atol=0.02)  # a function of the class, not the call


@pytest.mark.parametrize("variant", VARIANTS)
def test_seed_fixes_everything_and_changes_the_noise(variant):
    a = make_split(variant, "train", seed=3, bias=0.7)
    b = make_split(variant, "train", seed=3, bias=0.7)
    c = make_split(variant, "train", seed=4, bias=0.7)
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.foregrounds, c.foregrounds)
    assert not torch.equal(a.fg_labels, c.fg_labels)
    assert torch.equal(a.masks, c.masks)


def test_copies_repeat_digits_with_fresh_colours():
    one = make_split("double_colored", "test")
    three = make_split("double_colored", "test", copies=3)
    n = len(one)
    assert len(three) == 3 * n
    assert torch.equal(three.masks, one.masks.repeat(3, 1, 1, 1))
    assert torch.equal(three.labels, one.labels.repeat(3))
    first, second = three.backgrounds[:n], three.backgrounds[n:2 * n]
    assert (first - second).abs().amax((1, 2, 3)).min() > 0  # every copy recoloured


def test_wildlife_textures_are_class_specific():
    labels = torch.arange(10).repeat_interleave(20)
    fg, bg = textures("wildlife", labels, labels, 16, torch.Generator().manual_seed(0))
    same = (labels[:, None] == labels[None]) & ~torch.eye(len(labels), dtype=torch.bool)
    different = labels[:, None] != labels[None]
    for texture in (fg, bg):
        d = torch.cdist(texture.flatten(1), texture.flatten(1))
        assert d[different].mean() > 1.5 * d[same].mean()
        assert d[same].min() > 0  # per-image phase / blobs
    assert not torch.allclose(fg.mean((2, 3)), bg.mean((2, 3)), atol=0.05)


def test_wildlife_foreground_has_spatial_structure():
    data = make_split("wildlife", "test")
    spread = data.foregrounds.flatten(2).std(2).amax(1)  # per image, strongest channel
    assert spread.min() > 0.1
    flat = make_split("colored", "test")
    assert flat.foregrounds.flatten(2).std(2).max() == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(variant="mnist", split="train"), "mnist.*colored"),
    (dict(variant="colored", split="val"), "val.*oracle"),
    (dict(variant="colored", split="train", bias=1.5), "bias.*1.5"),
    (dict(variant="colored", split="train", bias=-0.1), "bias.*-0.1"),
    (dict(variant="colored", split="train", copies=0), "copies.*0"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_split(**kwargs)


def test_textures_refuses_an_unknown_variant():
    labels = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="stripes.*wildlife"):
        textures("stripes", labels, labels, 16, torch.Generator())


def test_mean_colour_is_a_shortcut_only_in_the_biased_split(splits):
    train, test = splits["train"], splits["test"]
    x_train, x_test = train.images.mean((2, 3)), test.images.mean((2, 3))
    assert _nearest_centroid_accuracy(x_train, train.labels, x_train, train.labels) >= 0.9
    assert _nearest_centroid_accuracy(x_train, train.labels, x_test, test.labels) <= 0.3
