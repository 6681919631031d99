"""CPU backend: scikit-learn PCA + K-Means++ with one BLAS/OpenMP thread per process."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from kdci_ray.cluster.base import ClusterResult, check_input, pca_components


def fit(x: np.ndarray, k: int, pca_dim: int = 0, seed: int = 0, n_init: int = 1,
        threads: int = 1) -> ClusterResult:
    x = check_input(x, k)
    n, d = x.shape
    dims = pca_components(d, n, pca_dim)
    with threadpool_limits(limits=threads):
        z = x if dims == d else PCA(n_components=dims, random_state=seed).fit_transform(x)
        km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
        labels = km.fit_predict(z)
    return ClusterResult(labels=labels.astype(np.int64), centers=km.cluster_centers_,
                         inertia=float(km.inertia_), backend="sklearn", pca_dim=dims)
