"""Tests for kdci_ray.cluster: what the sklearn k-means backend finds (labels, centres, inertia,
prototypes and proportions in the original space, seeds, empty clusters).

Backend and algorithm choice and input checks: test_cluster_backends.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from kmeans_blobs import SKLEARN_ALGORITHMS, blobs, cluster_means
from sklearn.metrics import adjusted_rand_score

from kdci_ray.cluster import fit_kmeans, sklearn_backend
from kdci_ray.cluster.base import summarize

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
