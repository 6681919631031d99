"""Tests for kdci_ray.data: the embedded digits split and the local CIFAR pickle reader."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from kdci_ray.data import load_dataset, load_digits
from kdci_ray.data.digits import stratified_split

N_DIGITS = 1797


@pytest.fixture(scope="module")
def sk_digits():
    return sk_load_digits()


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits")


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_types(digits16) -> None:
    d = digits16
    assert d.x_train.dtype == torch.uint8 and d.x_test.dtype == torch.uint8
    assert d.y_train.dtype == torch.int64 and d.y_test.dtype == torch.int64
    assert d.x_train.shape[1:] == (1, 16, 16) and d.x_test.shape[1:] == (1, 16, 16)
    assert len(d.x_train) == len(d.y_train) and len(d.x_test) == len(d.y_test)
    assert len(d.x_train) + len(d.x_test) == N_DIGITS
    assert d.num_classes == 10
    assert set(d.y_train.tolist()) == set(range(10)) == set(d.y_test.tolist())
    assert (d.channels, d.image_size) == (1, 16)
    assert len(d.mean) == len(d.std) == 1


def test_digits_split_is_stratified(digits16, sk_digits) -> None:
    total = np.bincount(sk_digits.target, minlength=10)
    n_train = np.bincount(digits16.y_train.numpy(), minlength=10)
    n_test = np.bincount(digits16.y_test.numpy(), minlength=10)
    assert (n_train + n_test == total).all()
    assert np.all(np.abs(n_test - 0.3 * total) <= 1.0)


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_digits_other_test_fraction(sk_digits, fraction: float) -> None:
    d = load_digits(image_size=8, test_fraction=fraction)
    total = np.bincount(sk_digits.target, minlength=10)
    n_test = np.bincount(d.y_test.numpy(), minlength=10)
    assert np.all(np.abs(n_test - fraction * total) <= 1.0)


def _pairs(x: torch.Tensor, y: torch.Tensor) -> Counter:
    return Counter((img.numpy().tobytes(), int(lab)) for img, lab in zip(x, y, strict=True))


def test_digits_size8_keeps_originals_and_partitions_them(sk_digits) -> None:
    d = load_digits(image_size=8)
    assert d.x_train.shape[1:] == (1, 8, 8)
    originals = np.round(sk_digits.images / 16.0 * 255.0).astype(np.uint8)[:, None]
    want = _pairs(torch.from_numpy(originals), torch.from_numpy(sk_digits.target))
    train = _pairs(d.x_train, d.y_train)
    test = _pairs(d.x_test, d.y_test)
    # every (image, label) of the dataset lands in exactly one split, unchanged
    assert train + test == want
    assert sum(train.values()) + sum(test.values()) == N_DIGITS


def test_digits_upsampled_pixels_are_in_range(digits16) -> None:
    x = digits16.x_train
    assert int(x.max()) > 200 and int(x.min()) == 0  # strokes survive bilinear upsampling


def test_digits_deterministic_per_seed() -> None:
    a = load_digits(image_size=8, seed=0)
    b = load_digits(image_size=8, seed=0)
    c = load_digits(image_size=8, seed=1)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert a.x_test.shape == c.x_test.shape  # same class counts
    assert not torch.equal(a.x_test, c.x_test)


def test_stratified_split_indices(sk_digits) -> None:
    labels = sk_digits.target
    train, test = stratified_split(labels, 0.3, seed=5)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    train2, test2 = stratified_split(labels, 0.3, seed=6)
    assert not np.array_equal(test, test2)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_test_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=fraction)


def test_too_small_image_size() -> None:
    with pytest.raises(ValueError, match="image_size"):
        load_digits(image_size=4)


def test_normalize_standardises_train_split(digits16) -> None:
    x = digits16.normalize(digits16.x_train)
    assert x.dtype == torch.float32 and x.shape == digits16.x_train.shape
    assert abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) - 1.0) < 0.05


def test_normalize_formula_and_no_mutation(digits16) -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    before = images.clone()
    out = digits16.normalize(images).flatten()
    (m,), (s,) = digits16.mean, digits16.std
    expected = torch.tensor([(0 - m) / s, (0.2 - m) / s, (1 - m) / s])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(images, before)
    xt, yt = digits16.test_inputs()
    assert torch.allclose(xt, digits16.normalize(digits16.x_test))
    assert torch.equal(yt, digits16.y_test)


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="svhn"):
        load_dataset("svhn")


# ----------------------------------------------------------------------------- CIFAR fakes


def _batch(rng: np.random.Generator, n: int, num_classes: int, label_key: bytes) -> dict:
    batch = {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, num_classes, size=n).tolist(),  # official files: lists
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [(lab + 1) % 20 for lab in batch[label_key]]
    return batch


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def make_cifar10(root: Path, seed: int = 0) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    train = [_batch(rng, 3 + i, 10, b"labels") for i in range(5)]  # sizes 3..7: order shows
    for i, b in enumerate(train, start=1):
        _dump(d / f"data_batch_{i}", b)
    test = _batch(rng, 4, 10, b"labels")
    _dump(d / "test_batch", test)
    return train, test


def make_cifar100(root: Path, seed: int = 1) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    train = _batch(rng, 6, 100, b"fine_labels")
    test = _batch(rng, 5, 100, b"fine_labels")
    _dump(d / "train", train)
    _dump(d / "test", test)
    return train, test


def _expected_images(rows: np.ndarray) -> np.ndarray:
    """Official layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32."""
    out = np.empty((len(rows), 3, 32, 32), dtype=np.uint8)
    for c in range(3):
        for r in range(32):
            start = c * 1024 + r * 32
            out[:, c, r, :] = rows[:, start:start + 32]
    return out


def test_cifar10_round_trip(tmp_path: Path) -> None:
    train, test = make_cifar10(tmp_path)
    # a marked pixel: image 0 of batch 1, blue channel, row 5, column 7
    train[0][b"data"][0, 2 * 1024 + 5 * 32 + 7] = 201
    train[0][b"data"][0, 0] = 13  # red, row 0, col 0
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_1", train[0])

    d = load_dataset("cifar10", root=str(tmp_path))
    rows = np.concatenate([b[b"data"] for b in train])
    labels = np.concatenate([b[b"labels"] for b in train])
    assert d.x_train.dtype == torch.uint8 and d.x_train.shape == (len(rows), 3, 32, 32)
    assert np.array_equal(d.x_train.numpy(), _expected_images(rows))
    assert np.array_equal(d.y_train.numpy(), labels) and d.y_train.dtype == torch.int64
    assert np.array_equal(d.x_test.numpy(), _expected_images(test[b"data"]))
    assert np.array_equal(d.y_test.numpy(), test[b"labels"])
    assert int(d.x_train[0, 2, 5, 7]) == 201 and int(d.x_train[0, 0, 0, 0]) == 13
    assert d.num_classes == 10 and d.name == "cifar10"
    assert (d.channels, d.image_size) == (3, 32)
    assert len(d.mean) == 3 and len(d.std) == 3


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    train, test = make_cifar100(tmp_path)
    d = load_dataset("cifar100", root=str(tmp_path))
    assert d.num_classes == 100
    assert np.array_equal(d.x_train.numpy(), _expected_images(train[b"data"]))
    assert np.array_equal(d.y_train.numpy(), train[b"fine_labels"])
    assert np.array_equal(d.x_test.numpy(), _expected_images(test[b"data"]))
    assert np.array_equal(d.y_test.numpy(), test[b"fine_labels"])


def test_cifar_root_can_be_the_batches_dir(tmp_path: Path) -> None:
    train, _ = make_cifar10(tmp_path)
    d = load_dataset("cifar10", root=str(tmp_path / "cifar-10-batches-py"))
    assert len(d.x_train) == sum(len(b[b"labels"]) for b in train)
    train100, _ = make_cifar100(tmp_path)
    d100 = load_dataset("cifar100", root=str(tmp_path / "cifar-100-python"))
    assert np.array_equal(d100.y_train.numpy(), train100[b"fine_labels"])


def test_cifar_missing_root_names_path_and_files(tmp_path: Path) -> None:
    missing = tmp_path / "no_cifar_here"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", root=str(missing))
    msg = str(info.value)
    assert str(missing.resolve()) in msg
    assert "data_batch_1" in msg and "test_batch" in msg


def test_cifar_incomplete_dir_is_not_found(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_dataset("cifar10", root=str(tmp_path))


def test_cifar_empty_root() -> None:
    with pytest.raises(FileNotFoundError, match="data.root"):
        load_dataset("cifar100", root="")


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_cifar_corrupt_pickle_names_the_file(tmp_path: Path, content: str) -> None:
    make_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if content == "garbage":
        bad.write_bytes(b"this is not a pickle at all")
    else:
        bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", root=str(tmp_path))
    assert str(bad.resolve()) in str(info.value)


def test_cifar_wrong_pixel_count_names_the_file(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    _dump(bad, {b"data": np.zeros((4, 1000), dtype=np.uint8), b"labels": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="test_batch"):
        load_dataset("cifar10", root=str(tmp_path))


def test_cifar_missing_label_key_names_the_file(tmp_path: Path) -> None:
    make_cifar100(tmp_path)
    bad = tmp_path / "cifar-100-python" / "test"
    _dump(bad, {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError) as info:
        load_dataset("cifar100", root=str(tmp_path))
    assert str(bad.resolve()) in str(info.value) and "fine_labels" in str(info.value)


def test_cifar_pickle_that_is_not_a_dict(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="data_batch_2"):
        load_dataset("cifar10", root=str(tmp_path))


def test_cifar_label_count_mismatch(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_5"
    _dump(bad, {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1, 2]})
    with pytest.raises(ValueError, match="data_batch_5"):
        load_dataset("cifar10", root=str(tmp_path))
