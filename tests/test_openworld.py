"""Open-world pools: embedded photo crops, image folders, downsampled-ImageNet npz batches."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdci_ray.data import npz as npz_mod
from kdci_ray.data.folder import ImageFolderPool
from kdci_ray.data.npz import NpzBatchPool
from kdci_ray.data.photos import EmbeddedPhotoPool
from kdci_ray.data.pool_format import OpenWorldPool
from kdci_ray.data.pool_sources import build_open_world

# --- embedded photo crops -------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [16, 32])
def test_embedded_shapes(channels: int, size: int) -> None:
    pool = EmbeddedPhotoPool(40, channels, size, seed=1)
    assert isinstance(pool, OpenWorldPool) and len(pool) == 40
    x = pool.get([0, 5, 39])
    assert x.dtype == torch.uint8 and x.shape == (3, channels, size, size)
    assert pool.get([]).shape == (0, channels, size, size)
    with pytest.raises(IndexError):
        pool.get([40])


def test_embedded_deterministic_and_seeded() -> None:
    a = EmbeddedPhotoPool(64, 3, 16, seed=3).get([7, 2, 7, 63])
    b = EmbeddedPhotoPool(64, 3, 16, seed=3).get([7, 2, 7, 63])
    assert torch.equal(a, b) and torch.equal(a[0], a[2])
    # A smaller pool with the same seed is a prefix of a larger one.
    big = EmbeddedPhotoPool(5000, 3, 16, seed=3).get([7, 2, 63])
    assert torch.equal(big, a[[0, 1, 3]])
    other = EmbeddedPhotoPool(64, 3, 16, seed=4).get([7, 2, 7, 63])
    assert not torch.equal(a, other)
    fps = {EmbeddedPhotoPool(64, 3, 16, seed=3).fingerprint,
           EmbeddedPhotoPool(64, 3, 16, seed=4).fingerprint,
           EmbeddedPhotoPool(65, 3, 16, seed=3).fingerprint,
           EmbeddedPhotoPool(64, 1, 16, seed=3).fingerprint,
           EmbeddedPhotoPool(64, 3, 32, seed=3).fingerprint,
           EmbeddedPhotoPool(64, 3, 16, seed=3, min_scale=0.2).fingerprint}
    assert len(fps) == 6


def test_embedded_large_pool_is_lazy() -> None:
    start = time.perf_counter()
    pool = EmbeddedPhotoPool(600_000, 3, 32, seed=0)
    idx = np.random.default_rng(0).choice(600_000, size=1000, replace=False)
    x = pool.get(idx)
    elapsed = time.perf_counter() - start
    assert len(pool) == 600_000 and x.shape == (1000, 3, 32, 32)
    assert elapsed < 5.0, f"600k pool + 1000 crops took {elapsed:.1f}s: is it materialised?"
    held = sum(a.nbytes for a in (pool.photo, pool.side, pool.x0, pool.y0, pool.flip))
    assert held < 10 * 600_000  # crop parameters only, a few bytes per image
    # Real photo content: distinct, rarely flat images.
    flat = x.reshape(1000, -1).float()
    assert (flat.std(dim=1) > 4.0).float().mean() > 0.9
    assert len(torch.unique(flat, dim=0)) == 1000


def test_embedded_crops_vary() -> None:
    pool = EmbeddedPhotoPool(2000, 3, 16, seed=0, min_scale=0.1)
    short = 427  # both photographs are 427x640
    assert set(np.unique(pool.photo)) == {0, 1}
    assert 0.3 < pool.flip.mean() < 0.7
    assert pool.side.min() >= round(0.1 * short) and pool.side.max() <= short
    assert pool.side.min() < 0.2 * short and pool.side.max() > 0.9 * short
    assert len(np.unique(pool.x0)) > 100 and len(np.unique(pool.y0)) > 100
    boxes = [pool.crop_box(i) for i in range(200)]
    assert all(0 <= b[1] < b[3] <= 640 and 0 <= b[2] < b[4] <= 427 for b in boxes)
    assert all(b[3] - b[1] == b[4] - b[2] for b in boxes)  # square


def test_embedded_matches_reference_crop_and_flip() -> None:
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    by_name = {Path(f).name: img for f, img in zip(bunch.filenames, bunch.images, strict=True)}
    pool = EmbeddedPhotoPool(400, 3, 32, seed=5)
    gray = EmbeddedPhotoPool(400, 1, 32, seed=5)
    flips = [i for i in range(400) if pool.flip[i] and pool.side[i] > 100][:5]
    plain = [i for i in range(400) if not pool.flip[i] and pool.side[i] > 100][:5]
    assert len(flips) == 5 and len(plain) == 5
    x, g = pool.get(flips + plain), gray.get(flips + plain)
    for j, i in enumerate(flips + plain):
        p, left, top, right, bottom, flipped = pool.crop_box(i)
        photo = Image.fromarray(by_name[pool.names[p]])
        ref = np.asarray(photo.crop((left, top, right, bottom)).resize((32, 32),
                                                                       Image.Resampling.BILINEAR))
        ref = torch.from_numpy(ref.copy()).permute(2, 0, 1).float()
        mirrored = ref.flip(-1)
        got = x[j].float()
        near, far = (mirrored, ref) if flipped else (ref, mirrored)
        assert (got - near).abs().mean() < 4.0
        assert (got - near).abs().mean() < (got - far).abs().mean()
        luma = 0.299 * got[0] + 0.587 * got[1] + 0.114 * got[2]
        assert (g[j, 0].float() - luma).abs().mean() < 2.0


# --- dispatch -------------------------------------------------------------------------------


def test_build_open_world_dispatch(tmp_path: Path) -> None:
    pool = build_open_world("embedded", "", size=10, channels=1, image_size=8, seed=2)
    assert isinstance(pool, EmbeddedPhotoPool) and len(pool) == 10 and pool.seed == 2
    with pytest.raises(ValueError, match="embedded, folder, npz"):
        build_open_world("imagenet", "", size=10, channels=1, image_size=8)
    for source in ("folder", "npz"):
        with pytest.raises(FileNotFoundError, match="pool.path"):
            build_open_world(source, "", size=10, channels=1, image_size=8)
    with pytest.raises(FileNotFoundError, match="npz"):
        build_open_world("npz", str(tmp_path), size=10, channels=1, image_size=8)


# --- image folders --------------------------------------------------------------------------


def _write(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def test_folder_pool(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)  # wide: center crop keeps cols 2..9
    _write(tmp_path / "b" / "x.PNG", rgb, "PNG")
    _write(tmp_path / "a" / "deep" / "y.jpg", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    _write(tmp_path / "c.JPEG", rng.integers(0, 256, (9, 30, 3), dtype=np.uint8), "JPEG")
    _write(tmp_path / "z.bmp", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    _write(tmp_path / "a" / "v.ppm", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "fake.gif").write_bytes(b"GIF89a")

    pool = ImageFolderPool(tmp_path, channels=1, image_size=8)
    assert pool.files == ["a/deep/y.jpg", "a/v.ppm", "b/x.PNG", "c.JPEG", "z.bmp"]
    assert isinstance(pool, OpenWorldPool) and len(pool) == 5
    x = pool.get([2, 0, 4])
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.uint8
    expected = np.asarray(Image.open(tmp_path / "b" / "x.PNG").convert("L"))[:, 2:10]
    assert np.array_equal(x[0, 0].numpy(), expected)
    colour = ImageFolderPool(tmp_path, channels=3, image_size=8).get([2])
    assert np.array_equal(colour[0].permute(1, 2, 0).numpy(), rgb[:, 2:10])
    assert ImageFolderPool(tmp_path, channels=3, image_size=16).get(range(5)).shape == (
        5, 3, 16, 16)

    capped = ImageFolderPool(tmp_path, channels=1, image_size=8, size=2)
    assert capped.files == pool.files[:2] and capped.fingerprint != pool.fingerprint
    before = pool.fingerprint
    assert ImageFolderPool(tmp_path, channels=1, image_size=8).fingerprint == before
    st = os.stat(tmp_path / "z.bmp")
    os.utime(tmp_path / "z.bmp", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert ImageFolderPool(tmp_path, channels=1, image_size=8).fingerprint != before


def test_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        ImageFolderPool(missing, channels=3, image_size=8)
    assert ".jpg" in str(err.value) and ".png" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolderPool(tmp_path / "empty", channels=3, image_size=8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"definitely not a png")
    pool = ImageFolderPool(tmp_path / "bad", channels=3, image_size=8)
    with pytest.raises(ValueError, match="broken.png"):
        pool.get([0])


# --- downsampled-ImageNet npz batches ---------------------------------------------------------


def _batches(root: Path, counts: list[int], side: int = 32, compressed: bool = True,
             seed: int = 0) -> np.ndarray:
    """Write ``train_data_batch_{1..}.npz`` files; returns all rows concatenated."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save = np.savez_compressed if compressed else np.savez
    rows = []
    for k, count in enumerate(counts, start=1):
        data = rng.integers(0, 256, (count, 3 * side * side), dtype=np.uint8)
        save(root / f"train_data_batch_{k}.npz", data=data,
             labels=rng.integers(1, 1001, count))
        rows.append(data)
    return np.concatenate(rows)


def test_npz_pool_round_trip_and_single_file_cache(tmp_path: Path, monkeypatch) -> None:
    rows = _batches(tmp_path, [5, 7])
    loads: list[str] = []
    real = npz_mod._load_data
    pool = NpzBatchPool(tmp_path, channels=3, image_size=32)

    def counting(path: Path) -> np.ndarray:
        assert pool._cache is None, "the previous file must be dropped before the next loads"
        loads.append(path.name)
        return real(path)

    monkeypatch.setattr(npz_mod, "_load_data", counting)
    assert isinstance(pool, OpenWorldPool) and len(pool) == 12 and pool.source_size == 32
    assert loads == []  # construction reads headers only
    order = [5, 0, 11, 4, 6, 1]  # interleaved across the file boundary (4 | 5)
    x = pool.get(order)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.uint8
    for j, i in enumerate(order):
        assert np.array_equal(x[j].numpy(), rows[i].reshape(3, 32, 32))
    assert sorted(loads) == ["train_data_batch_1.npz", "train_data_batch_2.npz"]
    held = pool._cache[0]
    pool.get([i for i in range(12) if (i >= 5) == (held == 1)])  # only the file in memory
    assert len(loads) == 2
    monkeypatch.setattr(npz_mod, "_load_data", real)
    gray = NpzBatchPool(tmp_path, channels=1, image_size=32).get([6])
    ref = Image.fromarray(np.ascontiguousarray(rows[6].reshape(3, 32, 32).transpose(1, 2, 0)))
    assert np.array_equal(gray[0, 0].numpy(), np.asarray(ref.convert("L")))


def test_npz_pool_memmap_natural_order_resize_and_cap(tmp_path: Path, monkeypatch) -> None:
    rows = _batches(tmp_path, [3, 2, 4], side=64, compressed=False)
    (tmp_path / "train_data_batch_10.npz").write_bytes(
        (tmp_path / "train_data_batch_3.npz").read_bytes())
    monkeypatch.setattr(npz_mod, "_load_data", lambda p: pytest.fail("stored: no decompression"))
    pool = NpzBatchPool(tmp_path, channels=3, image_size=64)
    assert [m.path.name for m in pool.members][-1] == "train_data_batch_10.npz"
    assert len(pool) == 13 and pool.source_size == 64
    x = pool.get([12, 3, 0])
    for j, i in enumerate([rows[-1], rows[3], rows[0]]):
        assert np.array_equal(x[j].numpy(), i.reshape(3, 64, 64))
    small = NpzBatchPool(tmp_path, channels=1, image_size=32, size=4)
    assert len(small) == 4 and small.get([3, 0]).shape == (2, 1, 32, 32)
    with pytest.raises(IndexError):
        small.get([4])
    assert small.fingerprint != pool.fingerprint


def test_npz_pool_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        NpzBatchPool(tmp_path / "nowhere", channels=3, image_size=32)
    assert "*.npz" in str(err.value) and "'data'" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"\*\.npz"):
        NpzBatchPool(tmp_path, channels=3, image_size=32)
    np.savez(tmp_path / "odd.npz", pixels=np.zeros((2, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="no 'data' array"):
        NpzBatchPool(tmp_path, channels=3, image_size=32)


def test_sobel_edges_marks_a_step_and_zeroes_flat_images() -> None:
    from kdci_ray.data.edges import sobel_edges

    step = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    step[..., 4:] = 200  # a vertical step between columns 3 and 4
    flat = torch.full((1, 1, 8, 8), 90, dtype=torch.uint8)
    out = sobel_edges(torch.cat([step, flat]))
    assert out.dtype == torch.uint8 and out.shape == (2, 1, 8, 8)
    # the step becomes a bright two-pixel line on black, stretched to the full range
    assert (out[0, 0, :, 3:5] == 255).all()
    assert (out[0, 0, :, :3] == 0).all() and (out[0, 0, :, 5:] == 0).all()
    assert (out[1] == 0).all()
    with pytest.raises(ValueError, match="uint8"):
        sobel_edges(torch.zeros(1, 1, 8, 8))


def test_edge_transform_wraps_any_source_and_changes_fingerprint() -> None:
    from kdci_ray.data.edges import EdgePool, sobel_edges

    plain = build_open_world("embedded", "", size=20, channels=1, image_size=16, seed=1)
    edges = build_open_world("embedded", "", size=20, channels=1, image_size=16, seed=1,
                             transform="edges")
    assert isinstance(edges, EdgePool) and isinstance(edges, OpenWorldPool)
    assert len(edges) == 20 and edges.fingerprint != plain.fingerprint
    assert torch.equal(edges.get([3, 7]), sobel_edges(plain.get([3, 7])))
    with pytest.raises(ValueError, match="transform 'sobel'.*none, edges"):
        build_open_world("embedded", "", size=20, channels=1, image_size=8, transform="sobel")
