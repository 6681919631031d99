"""The dictionary ablations of KDCI (Wang et al., CVPR 2024, Table 4 and Table 5).

Each changes one part of the backdoor adjustment ``s~ = s + sum_i lambda_i z_i P(z_i)`` and
leaves the rest as trained:

- ``random_z`` (Table 4): prototypes drawn from a Gaussian with the per-dimension mean and
  standard deviation of the features they replace; ``P(z)`` stays the clustered one.
- ``without_p`` (Table 4's "w/o P(z)"): ``P`` removed from Eq. 4, i.e. ``P(z_i) = 1`` (a prior
  about K times larger than with the clustered ``P``); prototypes stay the clustered ones.
- ``uniform_p``: ``P(z_i) = 1/K``. This was this project's "w/o P(z)" until the Table 4 reading
  was fixed; clustering already gives ``P ~ 1/K``, so it changes almost nothing. Kept as its own
  ablation, under its honest name.
- random lambda (Table 4) lives in the attention module (``KDCIAttention``): weights drawn
  per sample instead of computed.
- ``random_dictionary`` (Table 5's "random" source): no clustering at all; K random prototypes
  (as for ``random_z``) and ``P(z_i)`` = the share of features nearest to each.

The paper does not say how its random quantities are drawn; these distributions are ours.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdci_ray.kdci.dictionary import ConfounderDictionary


def random_prototypes(features: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``(k, D)`` draws from ``N(mean_d, std_d)`` of the ``(N, D)`` features, per dimension."""
    x = features.detach().float().cpu()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    noise = torch.randn(k, x.shape[1], generator=generator)
    return mean + std * noise


def nearest_proportions(features: Tensor, prototypes: Tensor) -> Tensor:
    """Share of the features whose nearest prototype (Euclidean) is each row; sums to 1."""
    x = features.detach().float().cpu()
    nearest = torch.cdist(x, prototypes.float()).argmin(1)
    counts = torch.bincount(nearest, minlength=len(prototypes)).float()
    return counts / counts.sum()


def random_dictionary(features: Tensor, k: int, generator: torch.Generator) -> ConfounderDictionary:
    """Table 5's random source: random prototypes, nearest-prototype proportions."""
    if k > len(features):
        raise ValueError(f"dictionary size K={k} is larger than the number of samples "
                         f"N={len(features)}; lower kdci.k")
    protos = random_prototypes(features, k, generator)
    props = nearest_proportions(features, protos)
    return ConfounderDictionary(prototypes=protos, proportions=props, inertia=float("nan"),
                                backend="random", num_samples=len(features), algorithm="none",
                                pca_dim=0)


def apply_ablations(dictionary: ConfounderDictionary, features: Tensor, *, random_z: bool,
                    uniform_p: bool, generator: torch.Generator,
                    without_p: bool = False) -> ConfounderDictionary:
    """The Table 4 switches applied to a built dictionary (a new object; the input is kept)."""
    out = dictionary
    if random_z:
        out = out.with_(prototypes=random_prototypes(features, out.k, generator))
    if uniform_p:
        out = out.with_(proportions=torch.full((out.k,), 1.0 / out.k))
    if without_p:
        out = out.with_(proportions=torch.ones(out.k))
    return out
