"""GPU backend: cuML PCA + K-Means++ on cupy arrays (optional ``gpu`` extra, imported lazily).

Always full k-means (``algorithm`` "auto" or "full"; cuML has no mini-batch variant). Prototypes
and proportions are computed on the host from the original features, as on the CPU backend.
Written against the cuML of the ``gpu`` extra (``cuml-cu13`` 26.10): its ``PCA`` and ``KMeans``
take keyword arguments only, ``KMeans(init="k-means++")`` is sequential k-means++ like sklearn's.
"""

from __future__ import annotations

import numpy as np

from kdci_ray.cluster.base import ClusterResult, check_input, pca_components, summarize

ALGORITHMS = ("auto", "full")  # what this backend accepts; it runs "full"


def available() -> bool:
    """True when cuML and cuPy import and at least one CUDA device is visible."""
    try:
        import cuml  # noqa: F401
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any import or driver failure means "not available"
        return False


def fit(x: np.ndarray, k: int, pca_dim: int = 0, seed: int = 0, n_init: int = 1,
        algorithm: str = "auto") -> ClusterResult:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"the cuml k-means backend runs full k-means only, got "
                         f"algorithm={algorithm!r}; use algorithm='auto' or 'full', or "
                         f"backend='sklearn' for mini-batch k-means")
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
    # cuML's PCA takes no random_state: its "full" solver (an eigendecomposition of the
    # covariance) is deterministic. Every call here is checked against the pinned cuML's
    # signatures (cuml_signatures.json, tests/test_cuml_signatures.py).
    z = xg if dims == d else PCA(n_components=dims, svd_solver="full").fit_transform(xg)
    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    labels = cp.asnumpy(km.fit_predict(z)).astype(np.int64)
    del xg, z
    prototypes, proportions = summarize(x, labels, k)
    return ClusterResult(labels=labels, centers=cp.asnumpy(km.cluster_centers_),
                         inertia=float(km.inertia_), backend="cuml", pca_dim=dims,
                         prototypes=prototypes, proportions=proportions, algorithm="full")
