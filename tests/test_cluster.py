"""Tests for kdci_ray.cluster: the k-means backends behind ``fit_kmeans``."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from kdci_ray.cluster import BACKENDS, cuml_backend, fit_kmeans, resolve_backend, sklearn_backend
from kdci_ray.cluster.base import check_input, pca_components


def blobs(sizes=(20, 30, 25, 15), dim: int = 5, spread: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(len(sizes), dim))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


@pytest.fixture
def no_cuml(monkeypatch):
    """Make cuML and cuPy unimportable whatever is installed."""
    monkeypatch.setitem(sys.modules, "cuml", None)
    monkeypatch.setitem(sys.modules, "cupy", None)


# ----------------------------------------------------------------------------- sklearn


def test_sklearn_recovers_blobs_without_pca() -> None:
    x, truth = blobs()
    res = fit_kmeans(x, 4, pca_dim=10, seed=0)  # pca_dim >= D: clustering in the raw space
    assert res.backend == "sklearn"
    assert res.pca_dim == x.shape[1]
    assert res.labels.shape == (len(x),) and res.labels.dtype == np.int64
    assert adjusted_rand_score(truth, res.labels) == 1.0
    assert res.centers.shape == (4, x.shape[1])
    # independent inertia: squared distances to the mean of each found cluster, in float64
    x64 = x.astype(np.float64)
    means = np.stack([x64[res.labels == j].mean(0) for j in range(4)])
    inertia = float(((x64 - means[res.labels]) ** 2).sum())
    assert res.inertia == pytest.approx(inertia, rel=1e-4)
    assert np.allclose(res.centers, means, atol=1e-4)
    # each sample's label is its nearest centre
    dist = ((x64[:, None, :] - res.centers[None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(dist.argmin(1), res.labels)


@pytest.mark.parametrize(("pca_dim", "dims"), [(2, 2), (0, 64), (200, 90)])
def test_sklearn_with_pca(pca_dim: int, dims: int) -> None:
    x, truth = blobs(dim=100)  # N = 90 samples, D = 100 features
    res = fit_kmeans(x, 4, pca_dim=pca_dim, seed=1)
    assert res.pca_dim == dims
    assert res.centers.shape == (4, dims)
    assert adjusted_rand_score(truth, res.labels) == 1.0
    assert res.inertia >= 0.0


def test_sklearn_same_seed_same_result() -> None:
    x, _ = blobs(spread=6.0)  # overlapping: initialisation matters
    a = fit_kmeans(x, 6, seed=3)
    b = fit_kmeans(x, 6, seed=3)
    assert np.array_equal(a.labels, b.labels) and a.inertia == b.inertia


def test_sklearn_forwards_kmeans_settings(monkeypatch) -> None:
    seen: dict = {}
    real = sklearn_backend.KMeans

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(sklearn_backend, "KMeans", spy)
    x, _ = blobs()
    fit_kmeans(x, 3, seed=11, n_init=4)
    assert seen == {"n_clusters": 3, "init": "k-means++", "n_init": 4, "random_state": 11}

# ----------------------------------------------------------------------------- backends


def test_backends_listed() -> None:
    assert set(BACKENDS) == {"sklearn", "cuml", "auto"}


@pytest.mark.parametrize("name", ["gpu", "SKLEARN", ""])
def test_unknown_backend(name: str) -> None:
    x, _ = blobs()
    with pytest.raises(ValueError, match="unknown k-means backend"):
        resolve_backend(name)
    with pytest.raises(ValueError, match="sklearn"):
        fit_kmeans(x, 4, backend=name)


def test_auto_without_cuml_is_sklearn(no_cuml) -> None:
    assert cuml_backend.available() is False
    assert resolve_backend("auto") == "sklearn"
    x, truth = blobs()
    res = fit_kmeans(x, 4, backend="auto")
    assert res.backend == "sklearn"
    assert adjusted_rand_score(truth, res.labels) == 1.0


def test_auto_prefers_cuml_when_available(monkeypatch) -> None:
    monkeypatch.setattr(cuml_backend, "available", lambda: True)
    assert resolve_backend("auto") == "cuml"
    monkeypatch.setattr(cuml_backend, "available", lambda: False)
    assert resolve_backend("auto") == "sklearn"
    assert resolve_backend("sklearn") == "sklearn" and resolve_backend("cuml") == "cuml"


def test_cuml_backend_without_cuml_names_the_gpu_extra(no_cuml) -> None:
    x, _ = blobs()
    with pytest.raises(RuntimeError) as info:
        fit_kmeans(x, 4, backend="cuml")
    msg = str(info.value)
    assert "gpu" in msg and ".[gpu]" in msg
    assert "sklearn" in msg  # says what to use instead


def test_cuml_recovers_blobs_on_gpu() -> None:
    pytest.importorskip("cuml")
    if not cuml_backend.available():
        pytest.skip("cuML is installed but no GPU is visible")
    x, truth = blobs()
    res = fit_kmeans(x, 4, pca_dim=10, seed=0, backend="cuml")
    assert res.backend == "cuml" and res.pca_dim == x.shape[1]
    assert adjusted_rand_score(truth, res.labels) == 1.0
    x64 = x.astype(np.float64)
    means = np.stack([x64[res.labels == j].mean(0) for j in range(4)])
    assert res.inertia == pytest.approx(float(((x64 - means[res.labels]) ** 2).sum()), rel=1e-3)
    assert fit_kmeans(x, 4, backend="auto").backend == "cuml"


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("d", "n", "pca_dim", "want"),
    [
        (10, 100, 0, 10),  # 0 = min(D, 64)
        (100, 1000, 0, 64),
        (100, 1000, 16, 16),  # explicit value kept
        (10, 100, 32, 10),  # never more than D
        (100, 20, 0, 20),  # never more than N
        (100, 20, 50, 20),
        (100, 1000, -3, 64),  # negative treated like 0
        (1, 1, 0, 1),
    ],
)
def test_pca_components(d: int, n: int, pca_dim: int, want: int) -> None:
    assert pca_components(d, n, pca_dim) == want


def test_check_input_converts_and_validates() -> None:
    x = check_input(np.arange(12, dtype=np.float64).reshape(4, 3), 2)
    assert x.dtype == np.float32 and x.shape == (4, 3)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        check_input(np.zeros(5), 2)
    with pytest.raises(ValueError, match="K must be >= 1"):
        check_input(np.zeros((5, 2)), 0)
    with pytest.raises(ValueError, match=r"K=6.*N=5"):
        check_input(np.zeros((5, 2)), 6)


def test_check_input_counts_nonfinite_rows() -> None:
    x = np.zeros((10, 3), dtype=np.float32)
    x[2, 0] = np.nan
    x[2, 1] = np.inf
    x[7, 2] = -np.inf
    with pytest.raises(ValueError, match="2 of 10 feature rows"):
        fit_kmeans(x, 2)
