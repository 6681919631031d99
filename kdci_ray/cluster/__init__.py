"""K-means backends behind one call: ``fit_kmeans(x, k, backend=...)``.

``sklearn`` (CPU), ``cuml`` (GPU, optional extra) and ``auto`` (cuML when a GPU and cuML are
present, otherwise sklearn). The result records which backend ran.
"""

from __future__ import annotations

import numpy as np

from kdci_ray.cluster import cuml_backend, sklearn_backend
from kdci_ray.cluster.base import ClusterResult

BACKENDS = ("sklearn", "cuml", "auto")


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "auto":
        return "cuml" if cuml_backend.available() else "sklearn"
    return backend


def fit_kmeans(x: np.ndarray, k: int, pca_dim: int = 0, seed: int = 0, n_init: int = 1,
               backend: str = "sklearn") -> ClusterResult:
    """PCA (to ``pca_dim`` components; 0 = min(D, 64)) then K-Means++ with ``k`` clusters."""
    chosen = resolve_backend(backend)
    module = cuml_backend if chosen == "cuml" else sklearn_backend
    return module.fit(x, k, pca_dim=pca_dim, seed=seed, n_init=n_init)


__all__ = ["BACKENDS", "ClusterResult", "fit_kmeans", "resolve_backend"]
