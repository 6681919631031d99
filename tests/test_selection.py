"""Teacher-driven selection of an open-world pool: criteria, ties, the on-disk cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdci_ray.data.photos import EmbeddedPhotoPool
from kdci_ray.data.pool_format import TensorPool
from kdci_ray.data.selection import file_sha1, select, selection_key

# Logits [a_i, 0, 0]: for a >= 0 confidence grows with a and entropy shrinks with it.
A = [0.5, 3.0, 0.0, 2.0, 5.0, 1.0, 4.0, 0.0]


class Teacher:
    """Reads the index encoded in each image and returns its known logits; counts calls."""

    def __init__(self, a: list[float]) -> None:
        self.logits = torch.zeros(len(a), 3)
        self.logits[:, 0] = torch.tensor(a)
        self.calls = 0
        self.seen: list[int] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8
        self.calls += 1
        idx = images[:, 0, 0, 0].long()
        self.seen.extend(idx.tolist())
        return self.logits[idx]


def _pool(n: int) -> TensorPool:
    return TensorPool(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2)
                      .contiguous())


def test_criteria_pick_expected_indices() -> None:
    pool, teacher = _pool(len(A)), Teacher(A)
    conf = select(pool, teacher, 3, "confidence", None, batch_size=3)
    assert conf.dtype == np.int64 and conf.tolist() == [1, 4, 6]  # a = 3, 5, 4
    assert teacher.calls == 3 and teacher.seen == list(range(len(A)))  # once, in batches
    assert select(pool, teacher, 3, "entropy", None).tolist() == [0, 2, 7]  # a = 0.5, 0, 0
    # Ties (indices 2 and 7 are uniform) go to the lower index.
    assert select(pool, teacher, 1, "entropy", None).tolist() == [2]
    tied = Teacher([1.0, 2.0, 2.0, 2.0, 0.0])
    assert select(_pool(5), tied, 2, "confidence", None, batch_size=2).tolist() == [1, 2]
    assert select(pool, teacher, len(A), "confidence", None).tolist() == list(range(len(A)))


def test_invalid_arguments() -> None:
    pool, teacher = _pool(4), Teacher(A[:4])
    with pytest.raises(ValueError, match=r"n=5.*4"):
        select(pool, teacher, 5, "confidence", None)
    with pytest.raises(ValueError, match="positive"):
        select(pool, teacher, 0, "confidence", None)
    with pytest.raises(ValueError, match="confidence, entropy"):
        select(pool, teacher, 2, "margin", None)
    assert teacher.calls == 0


def test_cache_reuse_and_invalidation(tmp_path: Path) -> None:
    pool, teacher = _pool(len(A)), Teacher(A)
    cache = tmp_path / "selections"
    first = select(pool, teacher, 3, "confidence", cache, key_extra="teacher-abc", batch_size=4)
    assert teacher.calls == 2
    key = selection_key("confidence", 3, pool.fingerprint, "teacher-abc")
    assert len(key) == 20
    assert sorted(p.name for p in cache.iterdir()) == [f"{key}.json", f"{key}.npy"]
    record = json.loads((cache / f"{key}.json").read_text())
    assert record["criterion"] == "confidence" and record["n"] == 3
    assert record["fingerprint"] == pool.fingerprint and record["key_extra"] == "teacher-abc"
    assert record["pool_length"] == len(A) and record["created"]
    assert np.load(cache / f"{key}.npy").tolist() == first.tolist()

    again = select(pool, teacher, 3, "confidence", cache, key_extra="teacher-abc", batch_size=4)
    assert teacher.calls == 2 and again.tolist() == first.tolist()  # cache hit
    select(pool, teacher, 4, "confidence", cache, key_extra="teacher-abc", batch_size=4)
    assert teacher.calls == 4  # different n
    select(pool, teacher, 3, "confidence", cache, key_extra="teacher-xyz", batch_size=4)
    assert teacher.calls == 6  # different teacher
    select(pool, teacher, 3, "entropy", cache, key_extra="teacher-abc", batch_size=4)
    assert teacher.calls == 8  # different criterion
    assert len(list(cache.glob("*.npy"))) == 4 and not list(cache.glob("*.tmp"))

    (cache / f"{key}.npy").write_bytes(b"half a file")  # unreadable entry: recomputed
    assert select(pool, teacher, 3, "confidence", cache, key_extra="teacher-abc").tolist() == [
        1, 4, 6]
    assert teacher.calls == 9
    assert np.load(cache / f"{key}.npy").tolist() == [1, 4, 6]


def test_select_on_embedded_pool(tmp_path: Path) -> None:
    pool = EmbeddedPhotoPool(300, 1, 8, seed=0)

    def brightness(images: torch.Tensor) -> torch.Tensor:
        m = images.float().mean(dim=(1, 2, 3)) / 32.0
        return torch.stack([m, torch.zeros_like(m)], dim=1)

    picked = select(pool, brightness, 50, "confidence", tmp_path, batch_size=64)
    assert len(picked) == 50 and np.all(np.diff(picked) > 0)
    means = pool.get(np.arange(300)).float().mean(dim=(1, 2, 3)).numpy()
    rest = np.setdiff1d(np.arange(300), picked)
    assert means[picked].min() >= means[rest].max()


def test_file_sha1(tmp_path: Path) -> None:
    blob = np.random.default_rng(0).bytes(10_000)
    path = tmp_path / "teacher.pt"
    path.write_bytes(blob)
    assert file_sha1(path, chunk_size=777) == hashlib.sha1(blob).hexdigest()
    assert file_sha1(path) == hashlib.sha1(blob).hexdigest()
