"""Tests for kdci_ray.cluster: the k-means backends behind ``fit_kmeans``."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
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
from kdci_ray.cluster.base import check_input, pca_components, summarize
from kdci_ray.cluster.sklearn_backend import choose_algorithm

SKLEARN_ALGORITHMS = ("full", "minibatch")


def blobs(sizes=(20, 30, 25, 15), dim: int = 5, spread: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(len(sizes), dim))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


def cluster_means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Independent per-cluster means in float64 (zeros for an empty cluster)."""
    x64 = x.astype(np.float64)
    return np.stack([x64[labels == j].mean(0) if (labels == j).any() else np.zeros(x.shape[1])
                     for j in range(k)])


@pytest.fixture
def no_cuml(monkeypatch):
    """Make cuML and cuPy unimportable whatever is installed."""
    monkeypatch.setitem(sys.modules, "cuml", None)
    monkeypatch.setitem(sys.modules, "cupy", None)


# ----------------------------------------------------------------------------- sklearn


@pytest.mark.parametrize("algorithm", SKLEARN_ALGORITHMS)
def test_sklearn_recovers_blobs_without_pca(algorithm: str) -> None:
    x, truth = blobs()
    res = fit_kmeans(x, 4, pca_dim=10, seed=0, algorithm=algorithm)  # pca_dim >= D: raw space
    assert res.backend == "sklearn" and res.algorithm == algorithm
    assert res.pca_dim == x.shape[1]
    assert res.labels.shape == (len(x),) and res.labels.dtype == np.int64
    assert adjusted_rand_score(truth, res.labels) == 1.0
    assert res.centers.shape == (4, x.shape[1])
    # independent inertia: squared distances to the mean of each found cluster, in float64
    x64 = x.astype(np.float64)
    means = cluster_means(x, res.labels, 4)
    inertia = float(((x64 - means[res.labels]) ** 2).sum())
    assert res.inertia == pytest.approx(inertia, rel=1e-4)
    assert np.allclose(res.centers, means, atol=1e-4)
    # each sample's label is its nearest centre
    dist = ((x64[:, None, :] - res.centers[None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(dist.argmin(1), res.labels)


@pytest.mark.parametrize("algorithm", SKLEARN_ALGORITHMS)
def test_sklearn_recovers_many_gaussian_blobs(algorithm: str) -> None:
    sizes = tuple(np.random.default_rng(5).integers(40, 160, size=12))
    x, truth = blobs(sizes=sizes, dim=20, spread=1.0, seed=5)
    res = fit_kmeans(x, 12, pca_dim=8, seed=0, algorithm=algorithm)
    assert res.algorithm == algorithm and res.pca_dim == 8
    assert adjusted_rand_score(truth, res.labels) > 0.99
    assert np.allclose(np.sort(res.proportions), np.sort(np.array(sizes) / sum(sizes)),
                       atol=1e-6)


@pytest.mark.parametrize("algorithm", SKLEARN_ALGORITHMS)
def test_prototypes_and_proportions_in_the_original_space(algorithm: str) -> None:
    x, truth = blobs(dim=100)  # N = 90, D = 100, clustered in 3 PCA dimensions
    res = fit_kmeans(x, 4, pca_dim=3, seed=2, algorithm=algorithm)
    assert res.pca_dim == 3 and res.centers.shape == (4, 3)
    assert adjusted_rand_score(truth, res.labels) == 1.0
    assert res.prototypes.shape == (4, 100) and res.prototypes.dtype == np.float32
    assert np.allclose(res.prototypes, cluster_means(x, res.labels, 4), atol=1e-5)
    assert res.proportions.shape == (4,) and res.proportions.dtype == np.float32
    assert float(res.proportions.sum()) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(res.proportions, np.bincount(res.labels, minlength=4) / len(x))
    assert res.n_empty == 0 and res.k == 4


@pytest.mark.parametrize(("pca_dim", "dims"), [(2, 2), (0, 64), (200, 90)])
def test_sklearn_with_pca(pca_dim: int, dims: int) -> None:
    x, truth = blobs(dim=100)  # N = 90 samples, D = 100 features
    res = fit_kmeans(x, 4, pca_dim=pca_dim, seed=1)
    assert res.pca_dim == dims
    assert res.centers.shape == (4, dims)
    assert adjusted_rand_score(truth, res.labels) == 1.0
    assert res.inertia >= 0.0


@pytest.mark.parametrize("algorithm", SKLEARN_ALGORITHMS)
def test_sklearn_same_seed_same_result(algorithm: str) -> None:
    x, _ = blobs(sizes=(200, 300, 250, 150), spread=6.0)  # overlapping: initialisation matters
    a = fit_kmeans(x, 6, seed=3, algorithm=algorithm)
    b = fit_kmeans(x, 6, seed=3, algorithm=algorithm)
    assert np.array_equal(a.labels, b.labels) and a.inertia == b.inertia
    assert np.array_equal(a.centers, b.centers) and np.array_equal(a.prototypes, b.prototypes)
    c = fit_kmeans(x, 6, seed=4, algorithm=algorithm)
    assert not np.array_equal(a.centers, c.centers)  # the seed is used


@pytest.mark.parametrize("algorithm", SKLEARN_ALGORITHMS)
@pytest.mark.parametrize("pca_dim", [0, 3])
def test_callers_features_are_left_untouched(algorithm: str, pca_dim: int) -> None:
    x, _ = blobs(sizes=(200, 300, 250, 150), dim=6)
    before = x.copy()
    res = fit_kmeans(x, 4, pca_dim=pca_dim, algorithm=algorithm)
    assert res.pca_dim == (6 if pca_dim == 0 else 3)
    assert np.array_equal(x, before)


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


def test_minibatch_is_polished_by_full_data_lloyd(monkeypatch) -> None:
    seen: dict = {}
    real_mb, real_km = sklearn_backend.MiniBatchKMeans, sklearn_backend.KMeans

    def spy(name, real):
        def make(**kwargs):
            seen[name] = kwargs
            return real(**kwargs)
        return make

    monkeypatch.setattr(sklearn_backend, "MiniBatchKMeans", spy("mb", real_mb))
    monkeypatch.setattr(sklearn_backend, "KMeans", spy("km", real_km))
    x, truth = blobs(sizes=(600, 500, 700, 400))
    res = fit_kmeans(x, 4, seed=7, n_init=2, algorithm="minibatch")
    assert res.algorithm == "minibatch" and adjusted_rand_score(truth, res.labels) == 1.0
    mb = seen["mb"]
    assert mb["init"] == "k-means++" and mb["n_init"] == 2 and mb["random_state"] == 7
    assert mb["batch_size"] == min(sklearn_backend.MB_BATCH, len(x))
    assert mb["init_size"] == len(x)  # capped at N
    km = seen["km"]
    assert km["n_init"] == 1 and km["max_iter"] == sklearn_backend.polish_iters(len(x), 4, 5)
    assert isinstance(km["init"], np.ndarray) and km["init"].shape == (4, x.shape[1])


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


# ----------------------------------------------------------------------------- empty clusters


@pytest.mark.parametrize("algorithm", SKLEARN_ALGORITHMS)
def test_empty_clusters_get_zero_share_and_zero_prototype(algorithm: str) -> None:
    # 3 distinct rows, each repeated many times, and K = 5: two clusters must stay empty
    distinct = np.array([[0.0, 0.0, 1.0], [5.0, 5.0, 0.0], [-4.0, 2.0, 3.0]], dtype=np.float32)
    reps = np.array([50, 120, 30])
    x = np.repeat(distinct, reps, axis=0)
    x = x[np.random.default_rng(0).permutation(len(x))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's ConvergenceWarning is handled, not spammed
        res = fit_kmeans(x, 5, seed=0, algorithm=algorithm)
    assert res.n_empty == 2
    empty = res.proportions == 0
    assert empty.sum() == 2
    assert np.all(res.prototypes[empty] == 0.0)
    assert float(res.proportions.sum()) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(np.sort(res.proportions[~empty]), np.sort(reps / reps.sum()))
    # the non-empty prototypes are exactly the distinct rows
    got = res.prototypes[~empty]
    assert np.allclose(got[np.lexsort(got.T)], distinct[np.lexsort(distinct.T)])
    assert res.inertia == pytest.approx(0.0, abs=1e-6)
    assert set(np.unique(res.labels)) == set(np.flatnonzero(~empty))


def test_summarize_handles_empty_clusters() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]], dtype=np.float32)
    prototypes, proportions = summarize(x, np.array([0, 0, 2]), 4)
    assert np.allclose(prototypes, [[2.0, 3.0], [0.0, 0.0], [10.0, 0.0], [0.0, 0.0]])
    assert np.allclose(proportions, [2 / 3, 0.0, 1 / 3, 0.0])
    assert prototypes.dtype == np.float32 and proportions.dtype == np.float32


def test_summarize_matches_per_cluster_means_across_chunks() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 7)).astype(np.float32)
    labels = rng.integers(0, 9, size=1000)
    labels[labels == 4] = 5  # cluster 4 empty
    prototypes, proportions = summarize(x, labels, 10, chunk=128)
    assert np.allclose(prototypes, cluster_means(x, labels, 10), atol=1e-6)
    assert np.allclose(proportions, np.bincount(labels, minlength=10) / 1000)
    assert proportions[4] == 0 and proportions[9] == 0


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
