"""GPU backend: cuML PCA + K-Means++ on cupy arrays (optional ``gpu`` extra, imported lazily)."""

from __future__ import annotations

import numpy as np

from kdci_ray.cluster.base import ClusterResult, check_input, pca_components


def available() -> bool:
    try:
        import cuml  # noqa: F401
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any import or driver failure means "not available"
        return False


def fit(x: np.ndarray, k: int, pca_dim: int = 0, seed: int = 0, n_init: int = 1) -> ClusterResult:
    try:
        import cupy as cp
        from cuml.cluster import KMeans
        from cuml.decomposition import PCA
    except ImportError as exc:
        raise RuntimeError(
            "kdci.backend=cuml needs a GPU and the gpu extra (pip install -e '.[gpu]'); "
            f"import failed: {exc}. Use kdci.backend=sklearn or auto on CPU."
        ) from None
    x = check_input(x, k)
    n, d = x.shape
    dims = pca_components(d, n, pca_dim)
    xg = cp.asarray(x)
    z = xg if dims == d else PCA(n_components=dims, random_state=seed).fit_transform(xg)
    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    labels = km.fit_predict(z)
    return ClusterResult(labels=cp.asnumpy(labels).astype(np.int64),
                         centers=cp.asnumpy(km.cluster_centers_), inertia=float(km.inertia_),
                         backend="cuml", pca_dim=dims)
