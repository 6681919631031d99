"""In-memory pool of synthetic images with augmentation on tensors.

The reference harness writes PNGs and rebuilds a DataLoader every epoch; we keep the batches in
memory (bounded, oldest dropped first) and augment whole sampled batches at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class ImagePool:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"pool capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.batches: list[Tensor] = []

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)

    def add(self, images: Tensor) -> None:
        self.batches.append(images.detach().clone())
        while len(self) - len(self.batches[0]) >= self.capacity:
            self.batches.pop(0)

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        if not self.batches:
            raise RuntimeError("the image pool is empty: synthesize() must run before sample()")
        data = torch.cat(self.batches) if len(self.batches) > 1 else self.batches[0]
        idx = torch.randint(len(data), (batch_size,), generator=generator)
        return data[idx.to(data.device)]


def augment(x: Tensor, generator: torch.Generator, pad: int = 2, flip: bool = True) -> Tensor:
    """Per image: random translation by up to ``pad`` pixels (reflect pad), horizontal flip."""
    b, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask.view(b, 1, 1, 1), x.flip(3), x)
    return x
