"""The k-means backend interface: PCA + K-Means++ on an (N, D) float32 array."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ClusterResult:
    labels: np.ndarray  # (N,) int64 cluster index per sample
    centers: np.ndarray  # (K, d) cluster centres in the PCA space the clustering ran in
    inertia: float  # sum of squared distances to the closest centre, in that space
    backend: str  # which backend ran ("sklearn", "cuml")
    pca_dim: int  # dimensions clustered (D when PCA was skipped)


def check_input(x: np.ndarray, k: int) -> np.ndarray:
    """Validate features before clustering; errors say what is wrong and how to fix it."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"k-means expects an (N, D) feature array, got shape {x.shape}")
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"dictionary size K must be >= 1, got {k}")
    if k > n:
        raise ValueError(
            f"dictionary size K={k} is larger than the number of samples N={n}; "
            f"lower kdci.k or build the dictionary from more substitution data"
        )
    bad = ~np.isfinite(x)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise ValueError(
            f"{rows} of {n} feature rows contain NaN or inf (the teacher produced non-finite "
            f"logits on the substitution data); check the generator / pool inputs"
        )
    return x


def pca_components(d: int, n: int, pca_dim: int) -> int:
    """Components kept: ``pca_dim`` if set (0 = min(D, 64)), never more than D or N."""
    want = pca_dim if pca_dim > 0 else min(d, 64)
    return max(1, min(want, d, n))
