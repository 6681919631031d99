"""In-memory pool of synthetic images with augmentation on tensors.

The reference harness writes PNGs and rebuilds a DataLoader every epoch; we keep the batches in
memory (bounded, oldest dropped first) on the run's device and augment whole sampled batches at
once, without a per-image loop and without reading anything back to the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdci_ray.data.labeled import to_device


class ImagePool:
    """A ring buffer of at most ``capacity`` images (any dtype; uint8 keeps it compact).

    Storage is one preallocated tensor on the device of the first images added (or ``device``),
    so sampling is a single gather, never a concatenation of everything stored; once full, the
    oldest images are overwritten first. State loaded from a checkpoint (read onto the CPU)
    goes back to that device.
    """

    def __init__(self, capacity: int, device: torch.device | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"pool capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.device = device
        self.data: Tensor | None = None
        self.filled = 0  # valid images
        self.next = 0  # where the next image goes

    def __len__(self) -> int:
        return self.filled

    def add(self, images: Tensor) -> None:
        images = images.detach()[-self.capacity:]
        if self.data is None:
            device = self.device if self.device is not None else images.device
            self.data = images.new_empty((self.capacity, *images.shape[1:]), device=device)
        n = len(images)
        idx = (torch.arange(n) + self.next) % self.capacity
        self.data[to_device(idx, self.data.device)] = to_device(images, self.data.device)
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
        return self.data[to_device(idx, self.data.device)]

    def state_dict(self) -> dict:
        return {"images": None if self.data is None else self.images().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s images onto this pool's device (that of the images held
        before, or ``device``), wherever the checkpoint was read."""
        device = self.data.device if self.data is not None else self.device
        self.data, self.filled, self.next = None, 0, 0
        if state["images"] is not None:
            self.add(state["images"] if device is None else to_device(state["images"], device))


def augment(x: Tensor, generator: torch.Generator, pad: int = 2, flip: bool = True) -> Tensor:
    """Per image: random translation by up to ``pad`` pixels (reflect pad), horizontal flip.
    The draws come from ``generator`` (CPU) in a fixed order; the crops are one gather on
    ``x``'s device."""
    b, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = to_device(dy.view(b, 1) + torch.arange(h), x.device)  # (B, H) source rows
        cols = to_device(dx.view(b, 1) + torch.arange(w), x.device)  # (B, W) source columns
        x = padded.gather(2, rows.view(b, 1, h, 1).expand(-1, padded.shape[1], -1,
                                                           padded.shape[3]))
        x = x.gather(3, cols.view(b, 1, 1, w).expand(-1, x.shape[1], h, -1))
    if flip:
        mask = to_device(torch.rand(b, generator=generator) < 0.5, x.device)
        x = torch.where(mask.view(b, 1, 1, 1), x.flip(3), x)
    return x
