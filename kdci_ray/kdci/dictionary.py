"""The confounder dictionary of KDCI (Wang et al., CVPR 2024, Sec. 3.3).

Features are the teacher's logits on the substitution data. They are clustered (PCA, then
K-Means++) into K groups; prototype ``z_i`` is the mean logit vector of group i (in the original
logit space, not the PCA space) and ``P(z_i)`` is the share of samples in group i.

An empty cluster (possible only with degenerate features) keeps ``P = 0`` and a zero prototype, so
it contributes nothing to the adjustment; K stays fixed so the attention weights keep their shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kdci_ray.cluster import fit_kmeans


@dataclass
class ConfounderDictionary:
    prototypes: Tensor  # (K, C) mean teacher logits per cluster
    proportions: Tensor  # (K,) share of samples per cluster, sums to 1
    inertia: float
    backend: str
    num_samples: int

    @property
    def k(self) -> int:
        return int(self.prototypes.shape[0])


def build_dictionary(features: Tensor, k: int, pca_dim: int = 0, seed: int = 0, n_init: int = 1,
                     backend: str = "sklearn") -> ConfounderDictionary:
    x = features.detach().float().cpu().numpy()
    result = fit_kmeans(x, k, pca_dim=pca_dim, seed=seed, n_init=n_init, backend=backend)
    counts = np.bincount(result.labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, result.labels, x)
    prototypes = sums / np.maximum(counts, 1.0)[:, None]
    return ConfounderDictionary(
        prototypes=torch.from_numpy(prototypes.astype(np.float32)),
        proportions=torch.from_numpy((counts / counts.sum()).astype(np.float32)),
        inertia=result.inertia,
        backend=result.backend,
        num_samples=int(x.shape[0]),
    )
