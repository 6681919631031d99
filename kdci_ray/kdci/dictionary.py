"""The confounder dictionary of KDCI (Wang et al., CVPR 2024, Sec. 3.3).

Features are a model's logits on the substitution data (the teacher's by default). They are
clustered (PCA, then K-Means++; ``kdci_ray.cluster``) into K groups; prototype ``z_i`` is the mean
logit vector of group i (in the original logit space, not the PCA space) and ``P(z_i)`` is the
share of samples in group i.

An empty cluster (possible only with degenerate features) keeps ``P = 0``, so it contributes
nothing to the adjustment; K stays fixed so the attention weights keep their shape.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor, nn

from kdci_ray.cluster import fit_kmeans


@dataclass(frozen=True)
class ConfounderDictionary:
    prototypes: Tensor  # (K, D) mean source logits per cluster
    proportions: Tensor  # (K,) share of samples per cluster, sums to 1
    inertia: float
    backend: str  # k-means backend that ran (sklearn | cuml); "random" for random dictionaries
    num_samples: int
    algorithm: str = "full"  # sklearn algorithm that ran (full | minibatch)
    pca_dim: int = 0  # dimensions clustered

    @property
    def k(self) -> int:
        return int(self.prototypes.shape[0])

    def with_(self, **changes) -> ConfounderDictionary:
        """A copy with some fields replaced (the ablations use it)."""
        return replace(self, **changes)


class Images(Protocol):
    """What a refresh scores: a tensor, or anything sized whose slices are the model's input
    batches (a fixed pool's share, normalised a slice at a time)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> Tensor: ...


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: Images, batch_size: int = 256) -> Tensor:
    """``teacher``'s logits on ``images``, ``batch_size`` at a time (a refresh holds no more
    activations than a KD step)."""
    return torch.cat([teacher(images[i:i + batch_size]).logits
                      for i in range(0, len(images), batch_size)])


def dictionary_features(logits: Tensor, space: str = "logits") -> Tensor:
    """The features a dictionary clusters, from a model's ``(N, C)`` logits: the logits
    themselves (float32) or, with ``space = "log_probs"``, their log-softmax (row-wise, so it is
    the same applied per rank's share or per chunk)."""
    if space not in ("logits", "log_probs"):
        raise ValueError(f"unknown dictionary feature space {space!r} (logits | log_probs)")
    feats = logits.float()
    return torch.log_softmax(feats, dim=1) if space == "log_probs" else feats


def build_dictionary(features: Tensor, k: int, pca_dim: int = 0, seed: int = 0, n_init: int = 1,
                     backend: str = "sklearn", algorithm: str = "auto") -> ConfounderDictionary:
    """Cluster ``(N, D)`` features into a K-entry dictionary (see the module docstring)."""
    x = features.detach().float().cpu().numpy()
    result = fit_kmeans(x, k, pca_dim=pca_dim, seed=seed, n_init=n_init, backend=backend,
                        algorithm=algorithm)
    return ConfounderDictionary(
        prototypes=torch.as_tensor(result.prototypes, dtype=torch.float32),
        proportions=torch.as_tensor(result.proportions, dtype=torch.float32),
        inertia=float(result.inertia),
        backend=result.backend,
        num_samples=int(x.shape[0]),
        algorithm=result.algorithm,
        pca_dim=int(result.pca_dim),
    )
