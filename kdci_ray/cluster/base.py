"""The k-means backend interface: PCA + K-Means++ on an (N, D) float32 array.

Empty clusters (possible when there are fewer distinct feature rows than K, e.g. many duplicate
points) are kept, so K stays fixed: their proportion is 0, their prototype is all zeros (it adds
nothing to the KDCI adjustment ``sum_i lambda_i z_i P(z_i)``), and their centre is whatever the
backend left there. ``ClusterResult.n_empty`` counts them; no warning is raised.
"""

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
    prototypes: np.ndarray | None = None  # (K, D) float32 mean ORIGINAL feature per cluster
    proportions: np.ndarray | None = None  # (K,) float32 share of samples per cluster, sums to 1
    algorithm: str = "full"  # which k-means ran ("full" Lloyd, "minibatch")

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    @property
    def n_empty(self) -> int:
        """Clusters without any sample (proportion 0, zero prototype)."""
        if self.proportions is None:
            return int(self.k - len(np.unique(self.labels)))
        return int((self.proportions == 0).sum())


def check_input(x: np.ndarray, k: int) -> np.ndarray:
    """Validate features before clustering; errors say what is wrong and how to fix it."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"k-means expects an (N, D) feature array, got shape {x.shape}; "
                         f"reshape the features to one row per sample")
    n, d = x.shape
    if k < 1:
        raise ValueError(f"dictionary size K must be >= 1, got {k}")
    if n == 0:
        raise ValueError(f"no samples to cluster (features of shape {x.shape}, N=0); build the "
                         f"dictionary from a non-empty batch of substitution data")
    if d == 0:
        raise ValueError(f"features have no dimensions (shape {x.shape}, D=0); pass the "
                         f"teacher's logits (one column per class)")
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


def summarize(x: np.ndarray, labels: np.ndarray, k: int,
              chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """``(prototypes, proportions)``: per-cluster mean of ``x`` (zeros when empty), shares.

    Sums accumulate in float64 over row chunks (a sparse one-hot (K, chunk) matrix times the
    chunk), so extra memory stays O(chunk * D + K * D) and the means are exact to float32.
    """
    from scipy import sparse

    labels = np.asarray(labels, dtype=np.int64)
    n, d = x.shape
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, d), dtype=np.float64)
    for start in range(0, n, chunk):
        part = labels[start:start + chunk]
        onehot = sparse.csr_matrix((np.ones(len(part)), (part, np.arange(len(part)))),
                                   shape=(k, len(part)))
        sums += onehot @ np.asarray(x[start:start + chunk], dtype=np.float64)
    prototypes = sums / np.maximum(counts, 1.0)[:, None]  # empty cluster: 0 / 1 = zeros
    proportions = counts / counts.sum()
    return prototypes.astype(np.float32), proportions.astype(np.float32)
