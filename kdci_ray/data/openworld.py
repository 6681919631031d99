"""Unlabeled open-world image pools for the sampling-based methods (MosaicKD, DFND).

A pool is anything with ``len(pool)``, ``pool.get(indices)`` returning uint8 ``(n, C, H, W)`` images
already in the teacher's input format (channels, size), and a ``fingerprint`` string that changes
whenever the content would (used to key cached selections). Sources: the embedded photo crops,
image folders, downsampled-ImageNet npz batches (see ``build_open_world``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor


@runtime_checkable
class OpenWorldPool(Protocol):
    def __len__(self) -> int: ...

    def get(self, indices: Sequence[int] | np.ndarray) -> Tensor: ...

    @property
    def fingerprint(self) -> str: ...


def check_format(channels: int, image_size: int) -> None:
    """The teacher input formats a pool can produce: 1 (grayscale) or 3 (RGB) channels."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if int(image_size) < 1:
        raise ValueError(f"image_size must be at least 1, got {image_size}")


class TensorPool:
    """An in-memory pool over a uint8 ``(N, C, H, W)`` tensor (tests, small pools)."""

    def __init__(self, images: Tensor, name: str = "tensor") -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"TensorPool needs uint8 (N, C, H, W) images, got {images.dtype} "
                             f"{tuple(images.shape)}")
        self.images = images
        digest = hashlib.sha1(images.numpy().tobytes()).hexdigest()[:16]
        self._fingerprint = f"{name}-{tuple(images.shape)}-{digest}"

    def __len__(self) -> int:
        return len(self.images)

    def get(self, indices: Sequence[int] | np.ndarray) -> Tensor:
        return self.images[torch.as_tensor(np.asarray(indices), dtype=torch.long)]

    @property
    def fingerprint(self) -> str:
        return self._fingerprint


SOURCES = ("embedded", "folder", "npz")
TRANSFORMS = ("none", "edges")


def build_open_world(source: str, path: str, size: int, channels: int, image_size: int,
                     seed: int = 0, min_scale: float = 0.1,
                     transform: str = "none") -> OpenWorldPool:
    """The open-world pool named by ``pool.source``, in the teacher's format.

    ``embedded``: ``size`` random crops of scikit-learn's sample photographs (``seed``,
    ``min_scale`` set the crops). ``folder``: the image files under ``path``; ``npz``: the
    downsampled-ImageNet batches in ``path``. For the real sources ``size`` is an upper bound.
    ``transform``: ``none`` or ``edges`` (the pool's edge maps, see ``kdci_ray.data.edges``).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown open-world transform {transform!r}: choose one of "
                         f"{', '.join(TRANSFORMS)}")
    pool = _build_source(source, path, size, channels, image_size, seed, min_scale)
    if transform == "edges":
        from kdci_ray.data.edges import EdgePool

        return EdgePool(pool)
    return pool


def _build_source(source: str, path: str, size: int, channels: int, image_size: int,
                  seed: int, min_scale: float) -> OpenWorldPool:
    if source == "embedded":
        from kdci_ray.data.photos import EmbeddedPhotoPool

        return EmbeddedPhotoPool(size, channels, image_size, seed=seed, min_scale=min_scale)
    if source not in SOURCES:
        raise ValueError(f"unknown open-world source {source!r}: choose one of "
                         f"{', '.join(SOURCES)}")
    if not str(path or "").strip():
        raise FileNotFoundError(f"the {source!r} open-world pool reads local files: set pool.path "
                                f"to the {'image folder' if source == 'folder' else 'npz batch'} "
                                f"directory (nothing is downloaded)")
    if source == "folder":
        from kdci_ray.data.folder import ImageFolderPool

        return ImageFolderPool(path, channels, image_size, size=size)
    from kdci_ray.data.npz import NpzBatchPool

    return NpzBatchPool(path, channels, image_size, size=size)
