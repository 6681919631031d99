"""The CGN composition, its counterfactual labels and the texture shuffler (Sauer & Geiger, 2021).

An image is composed from three class-conditional mechanisms: shape (a mask ``m`` in [0, 1]),
foreground texture ``f`` and background ``b``: ``x = m * f + (1 - m) * b``. A counterfactual gives
each mechanism its own label: the shape keeps the sample's label, the foreground and background
labels are independent permutations of it within the batch. The texture mechanisms' outputs pass
through a parameter-free shuffler (tile 2x2 at full size, then a random crop back to the original
size) so that they cannot carry shape.
"""

from __future__ import annotations

import torch
from torch import Tensor


def compose(mask: Tensor, foreground: Tensor, background: Tensor) -> Tensor:
    """``mask * foreground + (1 - mask) * background``; ``mask`` (B, 1, H, W) broadcasts."""
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}")
    if foreground.shape != background.shape or foreground.shape[0] != mask.shape[0] \
            or foreground.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)}, foreground {tuple(foreground.shape)} and "
                         f"background {tuple(background.shape)} do not fit together")
    return mask * foreground + (1.0 - mask) * background


def counterfactual_labels(labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor,
                                                                               Tensor]:
    """``(shape, foreground, background)`` labels of a counterfactual batch: the shape keeps
    ``labels``; foreground and background get two independent permutations of them."""
    n = len(labels)
    fg = labels[torch.randperm(n, generator=generator).to(labels.device)]
    bg = labels[torch.randperm(n, generator=generator).to(labels.device)]
    return labels, fg, bg


def shuffle_texture(texture: Tensor, generator: torch.Generator, tiles: int = 2) -> Tensor:
    """The CGN's parameter-free shuffler: each image is tiled ``tiles`` x ``tiles`` at full size
    (a 32x32 texture becomes 64x64) and cropped back to its own size at a random offset per image
    (``0..(tiles - 1) * size`` per axis, as a random crop of the tiled image), so that only local
    texture survives, not the global layout (shape). The texture is not resized: the crop is a
    cyclic shift of the original, its frequencies unchanged."""
    b, c, h, w = texture.shape
    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    grid = texture.repeat(1, 1, tiles, tiles)
    dy = torch.randint(0, (tiles - 1) * h + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, (tiles - 1) * w + 1, (b,), generator=generator).tolist()
    return torch.stack([grid[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
