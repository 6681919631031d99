"""K-means backends behind one call: ``fit_kmeans(x, k, backend=..., algorithm=...)``.

Builds the clustering of the KDCI confounder dictionary (Wang et al., CVPR 2024): PCA, then
K-Means++. Backends: ``sklearn`` (CPU), ``cuml`` (GPU, optional extra) and ``auto`` (cuML for
large problems when a GPU and cuML are present, see ``resolve_backend``). Algorithms:
``full`` (Lloyd k-means), ``minibatch`` (sklearn only: mini-batch k-means polished by a few
full-data Lloyd iterations) and ``auto``. The result records which backend and algorithm ran.
"""

from __future__ import annotations

import numpy as np

from kdci_ray.cluster import cuml_backend, sklearn_backend
from kdci_ray.cluster.base import ClusterResult

BACKENDS = ("sklearn", "cuml", "auto")
ALGORITHMS = ("auto", "full", "minibatch")


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown k-means algorithm {algorithm!r} "
                         f"(known: {', '.join(ALGORITHMS)})")


# ``auto`` sends a problem to cuML only from this size on (``N * K`` or ``N``). Below it sklearn's
# full fit takes about a second of one core at most (measured here, Gaussian logits: N = 8192,
# d = 64, K = 128: 1.0-1.2 s; N = 65536, d = 10, K = 8: 0.2-0.8 s; a per-round refresh of the
# synthesis methods, N = 1024, d = 10, K = 8: 20-80 ms), no more than cuML's fixed cost: importing
# cuML and its CUDA libraries once per process (seconds), then per call the handle and the
# host/device copies.
CUML_MIN_WORK = 1 << 20  # N * K (e.g. N = 8192 at K = 128)
CUML_MIN_SAMPLES = 1 << 16  # N, whatever K (PCA and the copies grow with N)


def resolve_backend(backend: str, algorithm: str = "auto", n: int | None = None,
                    k: int | None = None) -> str:
    """The backend that runs: ``auto`` is cuML when a GPU and cuML are present, the algorithm is
    one cuML runs (``auto``/``full``) and the problem is large (``N * K >= CUML_MIN_WORK`` or
    ``N >= CUML_MIN_SAMPLES``; an unknown ``n`` or ``k`` counts as large), otherwise sklearn."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r} (known: {', '.join(BACKENDS)})")
    _check_algorithm(algorithm)
    if backend == "auto":
        large = n is None or k is None or n * k >= CUML_MIN_WORK or n >= CUML_MIN_SAMPLES
        gpu = large and algorithm in cuml_backend.ALGORITHMS and cuml_backend.available()
        return "cuml" if gpu else "sklearn"
    return backend


def fit_kmeans(x: np.ndarray, k: int, pca_dim: int = 0, seed: int = 0, n_init: int = 1,
               backend: str = "sklearn", algorithm: str = "auto") -> ClusterResult:
    """PCA (to ``pca_dim`` components; 0 = min(D, 64)) then K-Means++ with ``k`` clusters.

    ``x`` is an (N, D) float array (converted to float32); NaN/inf, N = 0, D = 0, K > N or a
    wrong number of dimensions raise ``ValueError``. ``n_init`` k-means++ initialisations are
    tried, the best kept. Same ``seed``, same result on the CPU backend.

    ``algorithm`` (sklearn): ``full`` = ``KMeans``; ``minibatch`` = ``MiniBatchKMeans``, then
    full-data Lloyd iterations from its centres (``KMeans(init=centres)``, a budget of ~5 s of one
    core: ``sklearn_backend.polish_iters``); ``auto`` = ``full`` when ``N * K <= 2**23`` (N <=
    65536 at K = 128) or ``N <= 16384``, else ``minibatch``, which at N = 600k, K = 128 is
    several times faster than full k-means with an inertia within ~1% of it (measured by
    ``benchmarks/dictionary.py``). cuML always runs full k-means.

    The result holds ``labels`` (N,), ``centers`` (K, d) in the PCA space, ``prototypes`` (K, D)
    = mean original feature per cluster, ``proportions`` (K,) = share of samples per cluster,
    ``inertia`` (in the PCA space), ``backend``, ``algorithm`` and ``pca_dim``. A cluster left
    empty (fewer distinct rows than K) has proportion 0 and a zero prototype (``n_empty``).
    """
    shape = np.shape(x)
    n = shape[0] if len(shape) == 2 else None  # a bad shape: the backend's check says what
    chosen = resolve_backend(backend, algorithm, n, k)
    if chosen == "cuml":
        return cuml_backend.fit(x, k, pca_dim=pca_dim, seed=seed, n_init=n_init,
                                algorithm=algorithm)
    return sklearn_backend.fit(x, k, pca_dim=pca_dim, seed=seed, n_init=n_init,
                               algorithm=algorithm)


__all__ = ["ALGORITHMS", "BACKENDS", "CUML_MIN_SAMPLES", "CUML_MIN_WORK", "ClusterResult",
           "fit_kmeans", "resolve_backend"]
