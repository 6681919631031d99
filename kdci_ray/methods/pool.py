"""In-memory pool of synthetic images with augmentation on tensors.

The reference harness writes PNGs and rebuilds a DataLoader every epoch; we keep the batches in
memory (bounded, oldest dropped first) and augment whole sampled batches at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class ImagePool:
    """A ring buffer of at most ``capacity`` images (any dtype; uint8 keeps it compact).

    Storage is one preallocated tensor, so sampling is a single gather, never a concatenation of
    everything stored; once full, the oldest images are overwritten first.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"pool capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.data: Tensor | None = None
        self.filled = 0  # valid images
        self.next = 0  # where the next image goes

    def __len__(self) -> int:
        return self.filled

    def add(self, images: Tensor) -> None:
        images = images.detach()[-self.capacity:]
        if self.data is None:
            self.data = images.new_empty((self.capacity, *images.shape[1:]))
        n = len(images)
        idx = (torch.arange(n) + self.next) % self.capacity
        self.data[idx.to(self.data.device)] = images
        self.next = (self.next + n) % self.capacity
        self.filled = min(self.capacity, self.filled + n)

    def images(self) -> Tensor:
        """Every stored image (oldest first once the buffer has wrapped)."""
        if self.data is None:
            raise RuntimeError("the image pool is empty: synthesize() must run before sample()")
        if self.filled < self.capacity:
            return self.data[: self.filled]
        return torch.cat([self.data[self.next:], self.data[: self.next]])

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        if self.data is None:
            raise RuntimeError("the image pool is empty: synthesize() must run before sample()")
        idx = torch.randint(self.filled, (batch_size,), generator=generator)
        return self.data[idx.to(self.data.device)]

    def state_dict(self) -> dict:
        return {"images": None if self.data is None else self.images().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.data, self.filled, self.next = None, 0, 0
        if state["images"] is not None:
            self.add(state["images"])


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
