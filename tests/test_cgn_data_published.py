"""The published CGN-MNIST datasets rebuilt at 32x32 (``kdci_ray.cgn.data_published``) and the
shape-domain-gap probe (``kdci_ray.cgn.shape_gap``).

The Wildlife test with the authors' textures reads ``../shared/data/cgn_mnist/textures`` beside
the repository and skips when it is absent; the others build their own texture files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdci_ray.cgn.composition import compose
from kdci_ray.cgn.data_published import (
    IMAGE_SIZE,
    TEXTURE_PAD,
    TEXTURE_SIZE,
    load_textures,
    make_published_split,
    random_crops,
)
from kdci_ray.cgn.shape_gap import shape_domain_gap
from kdci_ray.data.digits import load_digits

TEXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cgn_mnist" / "textures"
needs_textures = pytest.mark.skipif(
    not (TEXTURES / "object").is_dir(),
    reason=f"the CGN authors' Wildlife MNIST textures are not at {TEXTURES} (read-only data "
           f"beside the repository, ../shared/data/cgn_mnist/textures); this test needs them")

# The source's double-coloured palette, written out again here (README of the shared data).
PALETTE = torch.tensor([
    (0, 100, 0), (0, 0, 139), (176, 48, 96), (255, 69, 0), (255, 255, 0),
    (222, 184, 135), (0, 255, 0), (0, 255, 255), (255, 0, 255), (100, 149, 237),
], dtype=torch.float32) / 255
MEASURED_COLORED_DIGIT = torch.tensor([
    (0.78, 0.11, 0.32), (0.08, 0.46, 0.47), (0.90, 0.84, 0.16), (0.06, 0.36, 0.76),
    (0.90, 0.52, 0.22), (0.57, 0.21, 0.67), (0.25, 0.88, 0.72), (0.95, 0.82, 0.81),
    (0.80, 0.87, 0.22), (0.62, 0.14, 0.11)])


def _colors(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the mean RGB inside and outside the mask."""
    inside = (images * masks).sum((2, 3)) / masks.sum((2, 3))
    outside = (images * (1 - masks)).sum((2, 3)) / (1 - masks).sum((2, 3))
    return inside, outside


@pytest.fixture(scope="module")
def double_train():
    return make_published_split("double_colored", "train", seed=0, bias=1.0)


def test_masks_are_binary_and_images_are_the_composition(double_train) -> None:
    data = double_train
    assert data.images.shape == (len(data), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert data.masks.shape == (len(data), 1, IMAGE_SIZE, IMAGE_SIZE)
    assert set(data.masks.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(data.images, compose(data.masks, data.foregrounds, data.backgrounds))
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    # our digits, upsampled into a 22 px box centred in 32x32, binarised at 0.3
    digits = load_digits(image_size=22)
    boxed = torch.zeros(len(data), 1, IMAGE_SIZE, IMAGE_SIZE)
    boxed[:, :, 5:27, 5:27] = digits.x_train.float() / 255
    assert torch.equal(data.masks, (boxed > 0.3).float())
    assert torch.equal(data.labels, digits.y_train)
    assert float(data.masks[:, :, :5].sum() + data.masks[:, :, 27:].sum()) == 0  # the margin
    # the published recipe on request: the digit fills the image, binarised at 0.1
    recipe = make_published_split("double_colored", "train", digit_box=32, binarise_at=0.1)
    full = load_digits(image_size=IMAGE_SIZE)
    assert torch.equal(recipe.masks, (full.x_train.float() / 255 > 0.1).float())
    with pytest.raises(ValueError, match="digit_box must be in"):
        make_published_split("double_colored", "train", digit_box=40)


def test_double_colored_train_uses_the_palette_with_the_digit_shifted_by_six(double_train):
    data = double_train
    assert torch.equal(data.fg_labels, data.labels) and torch.equal(data.bg_labels, data.labels)
    inside, outside = _colors(data.images, data.masks)
    digit_expected = PALETTE[(data.labels - 6) % 10]
    background_expected = PALETTE[data.labels]
    assert (inside - digit_expected).abs().max() < 0.05  # jitter std 0.01: 5 sigma
    assert (outside - background_expected).abs().max() < 0.05
    # Each image is flat: every pixel in the mask has the image's digit colour.
    flat = data.foregrounds - data.foregrounds[:, :, :1, :1]
    assert flat.abs().max() == 0
    # Jitter std 0.01, per image and colour, on channels away from the clamp at 0 and 1.
    residual = data.backgrounds[:, :, 0, 0] - background_expected
    interior = (background_expected > 0.1) & (background_expected < 0.9)
    assert 0.008 < residual[interior].std() < 0.012
    assert residual.abs().max() > 0  # jitter is drawn


def test_colored_is_the_measured_teacher_colour_on_black() -> None:
    data = make_published_split("colored", "train", seed=0, bias=1.0)
    assert data.backgrounds.abs().max() == 0
    assert torch.equal(data.images, data.masks * data.foregrounds)
    colors = data.foregrounds[:, :, 0, 0]
    for c in range(10):
        mean = colors[data.labels == c].mean(0)
        assert (mean - MEASURED_COLORED_DIGIT[c]).abs().max() < 0.06, (c, mean)
    residual = colors - MEASURED_COLORED_DIGIT[data.labels]
    interior = (MEASURED_COLORED_DIGIT[data.labels] > 0.3) & (MEASURED_COLORED_DIGIT[data.labels]
                                                              < 0.7)
    assert abs(residual[interior].std() - math.sqrt(0.02)) < 0.02


def test_test_and_oracle_labels_are_independent_of_the_digit() -> None:
    test = make_published_split("double_colored", "test", seed=0, copies=5)
    assert len(test) == 5 * len(load_digits(image_size=8).y_test)
    assert 0.07 < (test.fg_labels == test.labels).float().mean() < 0.13
    assert 0.07 < (test.bg_labels == test.labels).float().mean() < 0.13
    assert 0.07 < (test.fg_labels == test.bg_labels).float().mean() < 0.13
    oracle = make_published_split("double_colored", "oracle", seed=0, copies=2)
    train = make_published_split("double_colored", "train", seed=0)
    assert torch.equal(oracle.masks[:len(train)], train.masks)
    assert 0.06 < (oracle.fg_labels == oracle.labels).float().mean() < 0.14


def test_train_bias_sets_the_share_of_aligned_labels() -> None:
    data = make_published_split("colored", "train", seed=1, copies=2, bias=0.5)
    assert 0.50 < (data.fg_labels == data.labels).float().mean() < 0.60  # 0.5 + 0.5 / 10


def test_determinism_by_seed() -> None:
    a = make_published_split("double_colored", "train", seed=3, bias=0.8)
    b = make_published_split("double_colored", "train", seed=3, bias=0.8)
    c = make_published_split("double_colored", "train", seed=4, bias=0.8)
    assert torch.equal(a.images, b.images) and torch.equal(a.fg_labels, b.fg_labels)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.fg_labels, c.fg_labels)


def _write_textures(root: Path, skip_object_class: int | None = None) -> list[tuple[int, ...]]:
    """One flat JPEG per class in object/ and background/, each of its own colour."""
    from PIL import Image

    colors = [(20 * c + 10, 250 - 20 * c, 60 + 15 * c) for c in range(10)]
    for part, shift in (("object", 0), ("background", 3)):
        (root / part).mkdir(parents=True)
        for c in range(10):
            if part == "object" and c == skip_object_class:
                continue
            color = colors[(c + shift) % 10]
            Image.new("RGB", (40 + c, 30), color).save(root / part / f"{c}_flat_{c:04d}.jpg")
    return colors


def test_wildlife_with_synthetic_textures_pastes_the_class_textures(tmp_path: Path) -> None:
    colors = torch.tensor(_write_textures(tmp_path), dtype=torch.float32) / 255
    objects, backgrounds = load_textures(tmp_path)
    assert objects.shape == backgrounds.shape == (10, 3, TEXTURE_SIZE, TEXTURE_SIZE)
    data = make_published_split("wildlife", "test", seed=0, textures=tmp_path)
    assert torch.equal(data.images, compose(data.masks, data.foregrounds, data.backgrounds))
    fg = data.foregrounds.mean((2, 3))
    bg = data.backgrounds.mean((2, 3))
    assert (fg - colors[data.fg_labels]).abs().max() < 3 / 255
    assert (bg - colors[(data.bg_labels + 3) % 10]).abs().max() < 3 / 255


def _crop_distances(textures: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """(K, C): the smallest squared distance of crop k to any 32x32 window of padded texture c."""
    padded = F.pad(textures, (TEXTURE_PAD,) * 4, mode="reflect")
    window_energy = F.conv2d(padded ** 2, torch.ones(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    cross = F.conv2d(padded, crops)  # (C, K, h, w)
    distance = window_energy - 2 * cross + (crops ** 2).sum((1, 2, 3))[None, :, None, None]
    return distance.flatten(2).min(2).values.T


def test_random_crops_are_windows_of_the_reflect_padded_class_texture() -> None:
    generator = torch.Generator().manual_seed(0)
    textures = torch.rand(10, 3, IMAGE_SIZE + 2, IMAGE_SIZE + 2, generator=generator)
    labels = torch.arange(200) % 10
    crops = random_crops(textures, labels, generator)
    assert crops.shape == (200, 3, IMAGE_SIZE, IMAGE_SIZE)
    distance = _crop_distances(textures, crops)  # offsets 0..8: many crops reach the padding
    assert (distance[torch.arange(200), labels] < 0.05).all()
    assert len({tuple(c[0, 0, :2].tolist()) for c in crops}) > 20  # offsets vary


@needs_textures
def test_wildlife_crops_come_from_the_class_texture() -> None:
    objects, backgrounds = load_textures(TEXTURES)
    assert 0.0 <= objects.min() and objects.max() <= 1.0
    data = make_published_split("wildlife", "train", seed=0, bias=1.0, textures=TEXTURES)
    assert torch.equal(data.fg_labels, data.labels)
    picks = torch.tensor([0, 1, 500, 1000])
    for textures, crops, labels in ((objects, data.foregrounds, data.fg_labels),
                                    (backgrounds, data.backgrounds, data.bg_labels)):
        distance = _crop_distances(textures, crops[picks])
        exact = distance < 0.05  # float32 rounding; other windows are >> 1 away
        assert exact[torch.arange(len(picks)), labels[picks]].all()
        assert exact.sum(1).eq(1).all()  # no other class's texture has that window


def test_wildlife_without_textures_names_the_setting() -> None:
    with pytest.raises(ValueError, match="data.textures"):
        make_published_split("wildlife", "train")


def test_missing_textures_directory_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere.*mnists/data/textures"):
        load_textures(missing)
    with pytest.raises(FileNotFoundError, match="no folder"):
        load_textures(tmp_path)


def test_textures_with_a_class_missing_name_it(tmp_path: Path) -> None:
    _write_textures(tmp_path, skip_object_class=3)
    with pytest.raises(FileNotFoundError) as error:
        make_published_split("wildlife", "train", textures=tmp_path)
    message = str(error.value)
    assert "object/3_*.jpg" in message and str(tmp_path) in message
    assert "object/4_*.jpg" not in message and "background/3" not in message
    assert "mnists/data/textures" in message


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="variant"):
        make_published_split("svhn", "train")
    with pytest.raises(ValueError, match="split"):
        make_published_split("colored", "val")


# ----------------------------------------------------------------------------- shape gap

SHAPE_OPTIONS = dict(steps=60, batch_size=32, lr=0.1, arch="tiny_cnn")


@pytest.fixture(scope="module")
def small_masks():
    """Binary 8x8 digit masks (small, so that the classifiers train in seconds)."""
    digits = load_digits(image_size=8)
    binary = lambda x: (x.float() / 255 > 0.3).float()  # noqa: E731
    return (binary(digits.x_train), digits.y_train, binary(digits.x_test), digits.y_test)


def test_shape_gap_is_near_zero_when_the_teacher_draws_our_digits(small_masks) -> None:
    train, train_labels, test, test_labels = small_masks
    result = shape_domain_gap(train, train_labels, train, train_labels, test, test_labels,
                              **SHAPE_OPTIONS)
    assert result["shape_acc_digits"] > 0.6
    assert abs(result["shape_gap"]) < 0.1
    assert result["shape_gap"] == result["shape_acc_digits"] - result[
        "shape_acc_teacher_to_digits"]
    assert result["shape_acc_digits_to_teacher"] > 0.6


def test_shape_gap_is_large_when_the_teacher_draws_noise(small_masks) -> None:
    train, train_labels, test, test_labels = small_masks
    noise = torch.rand(train.shape, generator=torch.Generator().manual_seed(0))
    result = shape_domain_gap(noise, train_labels, train, train_labels, test, test_labels,
                              **SHAPE_OPTIONS)
    assert result["shape_acc_teacher_to_digits"] < 0.25
    assert result["shape_acc_digits_to_teacher"] < 0.25
    assert result["shape_gap"] > 0.35


def test_shape_gap_rejects_masks_of_different_sizes(small_masks) -> None:
    train, train_labels, test, test_labels = small_masks
    big = F.interpolate(train, size=16)
    with pytest.raises(ValueError, match="one size"):
        shape_domain_gap(big, train_labels, train, train_labels, test, test_labels, steps=1)
