"""Tests for kdci_ray.cluster: which k-means backend (sklearn | cuML) and algorithm (full |
mini-batch) ``fit_kmeans`` runs, and the inputs it refuses.

What the clustering finds: test_cluster.py."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from kmeans_blobs import SKLEARN_ALGORITHMS, blobs
from sklearn.metrics import adjusted_rand_score

import kdci_ray.cluster
from kdci_ray.cluster import (
    ALGORITHMS,
    BACKENDS,
    cuml_backend,
    fit_kmeans,
    resolve_backend,
    sklearn_backend,
)
from kdci_ray.cluster.base import check_input, pca_components
from kdci_ray.cluster.sklearn_backend import choose_algorithm


@pytest.fixture
def no_cuml(monkeypatch):
    """Make cuML and cuPy unimportable whatever is installed."""
    monkeypatch.setitem(sys.modules, "cuml", None)
    monkeypatch.setitem(sys.modules, "cupy", None)


# ----------------------------------------------------------------------------- algorithm


def test_algorithms_listed() -> None:
    assert ALGORITHMS == ("auto", "full", "minibatch")


@pytest.mark.parametrize(
    ("n", "k", "want"),
    [
        (1_000, 8, "full"),
        (65_536, 128, "full"),  # N * K = 2**23
        (65_537, 128, "minibatch"),
        (600_000, 128, "minibatch"),
        (1_000_000, 8, "full"),  # small K: full k-means is cheap
        (16_384, 4096, "full"),  # too few samples for mini-batches
        (16_385, 4096, "minibatch"),
    ],
)
def test_auto_algorithm_rule(n: int, k: int, want: str) -> None:
    assert choose_algorithm(n, k, "auto") == want
    assert choose_algorithm(n, k, "full") == "full"
    assert choose_algorithm(n, k, "minibatch") == "minibatch"


@pytest.mark.parametrize(
    ("n", "k", "d", "want"),
    [(600_000, 128, 64, 15), (600_000, 128, 10, 55), (70_000, 128, 64, 60),
     (10_000_000, 128, 64, 10)],
)
def test_polish_budget(n: int, k: int, d: int, want: int) -> None:
    assert sklearn_backend.polish_iters(n, k, d) == want


def test_auto_algorithm_is_recorded(monkeypatch) -> None:
    x, truth = blobs(sizes=(200, 300, 250, 150))
    assert fit_kmeans(x, 4, algorithm="auto").algorithm == "full"
    monkeypatch.setattr(sklearn_backend, "AUTO_FULL_MAX_WORK", 100)
    monkeypatch.setattr(sklearn_backend, "MB_BATCH", 64)  # so that N > 4 * MB_BATCH
    res = fit_kmeans(x, 4, algorithm="auto")
    assert res.algorithm == "minibatch"
    assert adjusted_rand_score(truth, res.labels) == 1.0


@pytest.mark.parametrize("name", ["lloyd", "elkan", "FULL", ""])
def test_unknown_algorithm(name: str) -> None:
    x, _ = blobs()
    with pytest.raises(ValueError, match=r"unknown k-means algorithm.*minibatch"):
        fit_kmeans(x, 4, algorithm=name)
    with pytest.raises(ValueError, match="unknown k-means algorithm"):
        resolve_backend("auto", name)


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
    assert res.backend == "sklearn" and res.algorithm == "full"
    assert adjusted_rand_score(truth, res.labels) == 1.0


def test_auto_prefers_cuml_when_available(monkeypatch) -> None:
    monkeypatch.setattr(cuml_backend, "available", lambda: True)
    assert resolve_backend("auto") == "cuml"  # size unknown: counted as large
    assert resolve_backend("auto", "full") == "cuml"
    assert resolve_backend("auto", "minibatch") == "sklearn"  # cuML has no mini-batch k-means
    monkeypatch.setattr(cuml_backend, "available", lambda: False)
    assert resolve_backend("auto") == "sklearn"
    assert resolve_backend("sklearn") == "sklearn" and resolve_backend("cuml") == "cuml"


@pytest.mark.parametrize(("n", "k", "want"), [
    (1024, 8, "sklearn"),  # a per-round refresh of the synthesis methods
    (8191, 128, "sklearn"),  # N * K just below CUML_MIN_WORK
    (8192, 128, "cuml"),  # N * K = CUML_MIN_WORK
    (65535, 8, "sklearn"),
    (65536, 8, "cuml"),  # N = CUML_MIN_SAMPLES, whatever K
    (600_000, 128, "cuml"),  # a build-once dictionary of the sampling-based methods
])
def test_auto_chooses_by_problem_size(monkeypatch, n: int, k: int, want: str) -> None:
    monkeypatch.setattr(cuml_backend, "available", lambda: True)
    assert resolve_backend("auto", "auto", n, k) == want
    assert resolve_backend("auto", "minibatch", n, k) == "sklearn"
    assert resolve_backend("cuml", "auto", n, k) == "cuml"  # an explicit choice stands
    assert resolve_backend("sklearn", "auto", n, k) == "sklearn"
    monkeypatch.setattr(cuml_backend, "available", lambda: False)
    assert resolve_backend("auto", "auto", n, k) == "sklearn"


def test_fit_kmeans_auto_runs_sklearn_on_a_small_problem(monkeypatch) -> None:
    """``auto`` with cuML "available" does not call cuML for a tiny refresh (1024 x 10, K = 8)."""
    monkeypatch.setattr(cuml_backend, "available", lambda: True)

    def no_gpu(*args, **kwargs):
        raise AssertionError("cuML called for a small problem")

    monkeypatch.setattr(cuml_backend, "fit", no_gpu)
    x = np.random.default_rng(0).normal(size=(1024, 10)).astype(np.float32)
    assert fit_kmeans(x, 8, backend="auto").backend == "sklearn"
    calls = []
    monkeypatch.setattr(cuml_backend, "fit", lambda *a, **kw: calls.append(a[0].shape))
    fit_kmeans(np.zeros((65536, 2), np.float32), 8, backend="auto")
    assert calls == [(65536, 2)]


def test_cuml_backend_without_cuml_names_the_gpu_extra(no_cuml) -> None:
    x, _ = blobs()
    with pytest.raises(RuntimeError) as info:
        fit_kmeans(x, 4, backend="cuml")
    msg = str(info.value)
    assert "gpu" in msg and ".[gpu]" in msg
    assert "sklearn" in msg  # says what to use instead


def test_cuml_backend_rejects_minibatch() -> None:
    x, _ = blobs()
    with pytest.raises(ValueError, match=r"full k-means only.*backend='sklearn'"):
        fit_kmeans(x, 4, backend="cuml", algorithm="minibatch")


def test_cuml_matches_sklearn_on_gpu(monkeypatch) -> None:
    pytest.importorskip("cuml")
    if not cuml_backend.available():
        pytest.skip("cuML is installed but no GPU is visible")
    x, truth = blobs(sizes=(200, 300, 250, 150), dim=20, spread=0.5)
    gpu = fit_kmeans(x, 4, pca_dim=8, seed=0, backend="cuml")
    cpu = fit_kmeans(x, 4, pca_dim=8, seed=0, backend="sklearn")
    assert gpu.backend == "cuml" and gpu.algorithm == "full" and gpu.pca_dim == 8
    assert gpu.labels.dtype == np.int64 and gpu.centers.shape == (4, 8)
    assert adjusted_rand_score(truth, gpu.labels) == 1.0
    assert adjusted_rand_score(cpu.labels, gpu.labels) == 1.0
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-3)
    # same partition, so the same prototypes and proportions up to the cluster order
    order = [int(np.bincount(gpu.labels[cpu.labels == j]).argmax()) for j in range(4)]
    assert np.allclose(gpu.prototypes[order], cpu.prototypes, atol=1e-4)
    assert np.allclose(gpu.proportions[order], cpu.proportions)
    assert fit_kmeans(x, 4, backend="auto").backend == "sklearn"  # small: below the threshold
    monkeypatch.setattr(kdci_ray.cluster, "CUML_MIN_SAMPLES", len(x))
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
    with pytest.raises(ValueError, match=r"K must be >= 1"):
        check_input(np.zeros((5, 2)), 0)


@pytest.mark.parametrize(
    ("x", "k", "match"),
    [
        (np.zeros(5), 2, r"\(N, D\).*shape \(5,\).*reshape"),
        (np.zeros((2, 3, 4)), 2, r"\(N, D\).*shape \(2, 3, 4\)"),
        (np.zeros((0, 3)), 1, r"N=0.*non-empty"),
        (np.zeros((5, 0)), 2, r"D=0.*logits"),
        (np.zeros((5, 2)), 6, r"K=6 is larger than.*N=5.*lower kdci.k"),
    ],
)
@pytest.mark.parametrize("algorithm", SKLEARN_ALGORITHMS)
def test_bad_inputs_raise_one_clear_error(x, k: int, match: str, algorithm: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_kmeans(x, k, algorithm=algorithm)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_features_are_rejected(bad: float) -> None:
    x, _ = blobs()
    x[3, 1] = bad
    with pytest.raises(ValueError, match=r"1 of 90 feature rows contain NaN or inf.*check"):
        fit_kmeans(x, 4)


def test_check_input_counts_nonfinite_rows() -> None:
    x = np.zeros((10, 3), dtype=np.float32)
    x[2, 0] = np.nan
    x[2, 1] = np.inf
    x[7, 2] = -np.inf
    with pytest.raises(ValueError, match="2 of 10 feature rows"):
        fit_kmeans(x, 2)
