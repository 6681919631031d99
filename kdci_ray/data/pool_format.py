"""What an unlabeled open-world image pool is (the sampling-based methods' MosaicKD, DFND data).

A pool is anything with ``len(pool)``, ``pool.get(indices)`` returning uint8 ``(n, C, H, W)`` images
already in the teacher's input format (channels, size), and a ``fingerprint`` string that changes
whenever the content would (used to key cached selections): ``OpenWorldPool``. ``check_format``
says which teacher formats a pool can produce; ``TensorPool`` is the in-memory one. The pools of
``pool.source`` (embedded photo crops, image folders, npz batches) are built by
``kdci_ray.data.pool_sources.build_open_world``.
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
