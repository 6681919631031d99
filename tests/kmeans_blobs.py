"""Synthetic blobs and independent per-cluster means for the k-means tests (test_cluster*.py)."""

from __future__ import annotations

import numpy as np

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
