"""The black-box boundary of SKDCGN: the teacher CGN answers queries, nothing else.

SKDCGN (Ambekar et al., 2022) distils each mechanism from ``(noise, label) -> output`` pairs
only: no teacher weights, gradients, real images or CGN training data. :class:`BlackBoxCGN` is the
one object the student side gets; it keeps the teacher in a closure (no attribute holds a module
or a parameter) and returns detached copies. :func:`collect_queries` turns it into the stored
query/answer dataset the students train on. Texture answers are taken *before* the shuffler
(the published code stored shuffled targets); each mechanism gets its own noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kdci_ray.cgn.mechanisms import CGN, MECHANISMS


class BlackBoxCGN:
    """Query access to a CGN's mechanisms: ``query(mechanism, noise, labels) -> output``."""

    __slots__ = ("_query", "latent_dim", "num_classes", "image_size", "channels")

    def __init__(self, cgn: CGN) -> None:
        cgn.eval()
        first = cgn.mechanisms["shape"]

        @torch.no_grad()
        def query(mechanism: str, noise: Tensor, labels: Tensor) -> Tensor:
            if mechanism not in MECHANISMS:
                raise ValueError(f"unknown mechanism {mechanism!r}: one of "
                                 f"{', '.join(MECHANISMS)}")
            return cgn.mechanism(mechanism, noise, labels).detach().clone()

        self._query: Callable[[str, Tensor, Tensor], Tensor] = query
        self.latent_dim = first.latent_dim
        self.num_classes = first.num_classes
        self.image_size = first.init * 4
        self.channels = {m: int(cgn.mechanisms[m].net[-1].out_channels) for m in MECHANISMS}

    def query(self, mechanism: str, noise: Tensor, labels: Tensor) -> Tensor:
        return self._query(mechanism, noise, labels)


@dataclass
class QuerySet:
    """Stored queries of one mechanism: noise (N, latent), labels (N,), answers (N, C, H, W)."""

    mechanism: str
    noise: Tensor
    labels: Tensor
    answers: Tensor

    def __len__(self) -> int:
        return len(self.labels)


def collect_queries(box: BlackBoxCGN, per_class: int, seed: int,
                    batch_size: int = 500) -> dict[str, QuerySet]:
    """``per_class`` queries per class and mechanism, each mechanism with its own noise draw."""
    out = {}
    for j, mechanism in enumerate(MECHANISMS):
        g = torch.Generator().manual_seed(seed * 7 + j)
        labels = torch.arange(box.num_classes).repeat_interleave(per_class)
        noise = torch.randn(len(labels), box.latent_dim, generator=g)
        answers = torch.cat([box.query(mechanism, noise[i:i + batch_size],
                                       labels[i:i + batch_size])
                             for i in range(0, len(labels), batch_size)])
        out[mechanism] = QuerySet(mechanism, noise, labels, answers)
    return out
