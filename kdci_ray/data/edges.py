"""Edge-map view of an open-world pool: photographs turned into bright strokes on black.

A teacher trained on line drawings (the embedded digits: light strokes on a black background) is
confident on almost none of the raw photo crops and never sees some classes in them at all (of
50,000 grayscale crops of the packaged photographs, 11 look like a 3 and 31 like a 7 to the
digits teacher), so a sampling-based method that distils on the pool alone (DFND) cannot learn
those classes. The gradient magnitude of the same crops is in the teacher's format: thin bright
contours on a dark ground. It is still real, unlabeled, out-of-domain content, and every class
appears among the crops the teacher is most confident about.

``pool.transform: edges`` applies, per image, the 3x3 Sobel gradient magnitude of every channel
(replicate padding), then a min-max stretch of the whole image to ``[0, 255]``; a flat image
becomes all zeros. This is our conversion for the embedded data, not part of DFND or MosaicKD.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdci_ray.data.pool_format import OpenWorldPool

_VERSION = 1  # bump when the recipe changes: it is part of the fingerprint
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_edges(images: Tensor) -> Tensor:
    """uint8 ``(N, C, H, W)`` -> uint8 edge maps of the same shape (see the module docstring)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"sobel_edges needs uint8 (N, C, H, W) images, got {images.dtype} "
                         f"{tuple(images.shape)}")
    n, c, h, w = images.shape
    x = images.float().reshape(n * c, 1, h, w) / 255.0
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    kernels = torch.stack([_SOBEL_X, _SOBEL_X.t()]).unsqueeze(1)
    grad = F.conv2d(x, kernels)
    mag = grad.square().sum(1).sqrt().reshape(n, c, h, w)
    lo = mag.amin(dim=(1, 2, 3), keepdim=True)
    span = mag.amax(dim=(1, 2, 3), keepdim=True) - lo
    out = torch.where(span > 1e-6, (mag - lo) / span.clamp_min(1e-6), torch.zeros_like(mag))
    return (out * 255.0).round().to(torch.uint8)


class EdgePool:
    """The same pool, each image replaced by its edge map (computed on demand in ``get``)."""

    def __init__(self, pool: OpenWorldPool) -> None:
        self.pool = pool

    def __len__(self) -> int:
        return len(self.pool)

    def get(self, indices: Sequence[int] | np.ndarray) -> Tensor:
        return sobel_edges(self.pool.get(indices))

    @property
    def fingerprint(self) -> str:
        return f"edges-v{_VERSION}:{self.pool.fingerprint}"
