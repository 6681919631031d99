"""Coloured digits with ground-truth mechanisms: the data a CGN teacher is fitted on.

Sauer & Geiger (ICLR 2021) build three MNIST variants in which the digit's colour or texture
is a shortcut for its class: "colored MNIST" (coloured stroke on black), "double-colored MNIST"
(coloured stroke on a coloured background) and "Wildlife MNIST" (animal textures for object and
background). We build the same three from scikit-learn's digits at 16x16 instead of MNIST (no
download), with flat palette colours and procedural textures in place of the animal ones.

Every image is ``compose(mask, foreground, background)``: the mask is the digit's stroke
intensity, foreground and background are fixed functions of their own class labels plus a
little per-image noise. In the train split the three labels agree with probability ``bias``
(the shortcut); in the test and oracle splits texture labels are independent of the digit.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdci_ray.cgn.composition import compose
from kdci_ray.data.digits import load_digits

VARIANTS = ("colored", "double_colored", "wildlife")
SPLITS = ("train", "test", "oracle")
NUM_CLASSES = 10
COLOR_NOISE = 0.05

# Foreground: ten saturated hues, 36 degrees apart.
FG_PALETTE = torch.tensor([colorsys.hsv_to_rgb(k / NUM_CLASSES, 1.0, 1.0)
                           for k in range(NUM_CLASSES)])
# Background: ten dark or pastel colours, none near a saturated hue (min distance 0.52) and
# at least 0.3 apart from each other (six standard deviations of the colour noise).
BG_PALETTE = torch.tensor([
    (0.10, 0.10, 0.45),  # navy
    (0.50, 0.50, 0.10),  # olive
    (0.50, 0.10, 0.10),  # maroon
    (0.10, 0.45, 0.45),  # teal
    (0.50, 0.50, 0.50),  # grey
    (1.00, 0.70, 0.75),  # pink
    (0.70, 1.00, 0.70),  # mint
    (0.70, 0.80, 1.00),  # sky
    (0.10, 0.40, 0.10),  # forest
    (0.40, 0.10, 0.45),  # plum
])


@dataclass(frozen=True, eq=False)
class MechanismData:
    """One split with the ground truth of every mechanism; ``images`` is exactly
    ``compose(masks, foregrounds, backgrounds)``."""

    variant: str
    images: Tensor  # float32 (N, 3, H, W) in [0, 1]
    labels: Tensor  # int64 (N,): the digit class, i.e. the shape's label
    masks: Tensor  # float32 (N, 1, H, W) in [0, 1]: the stroke intensity
    foregrounds: Tensor  # float32 (N, 3, H, W): full-image foreground texture, before masking
    backgrounds: Tensor  # float32 (N, 3, H, W)
    fg_labels: Tensor  # int64 (N,): class whose foreground colour/texture was used
    bg_labels: Tensor  # int64 (N,): class whose background colour/texture was used

    def __len__(self) -> int:
        return len(self.labels)


def _check(variant: str, split: str, copies: int, bias: float) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias must be in [0, 1], got {bias}")
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")


def mechanism_labels(labels: Tensor, bias: float,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(fg_labels, bg_labels)``: both equal ``labels`` with probability ``bias``, otherwise
    both drawn uniformly at random, independently of each other and of ``labels``."""
    n = len(labels)
    keep = torch.rand(n, generator=generator) < bias
    fg = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    bg = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    return torch.where(keep, labels, fg), torch.where(keep, labels, bg)


def _flat(palette: Tensor, labels: Tensor, image_size: int,
          generator: torch.Generator) -> Tensor:
    """Each image a flat palette colour plus per-image Gaussian colour noise, in [0, 1]."""
    noise = COLOR_NOISE * torch.randn(len(labels), 3, generator=generator)
    colors = (palette[labels] + noise).clamp(0.0, 1.0)
    return colors[:, :, None, None].expand(-1, -1, image_size, image_size).contiguous()


def _fg_pattern(labels: Tensor, image_size: int, generator: torch.Generator) -> Tensor:
    """(N, 1, H, W) in [0, 1]: stripes, smooth checker or dots (class mod 3) at a class-specific
    orientation and frequency, shifted by a random per-image phase."""
    n = len(labels)
    coords = torch.arange(image_size, dtype=torch.float32) / image_size
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    angle = (labels.float() * math.pi / NUM_CLASSES)[:, None, None]
    cycles = (2 + (labels // 3) % 3).float()[:, None, None]
    phase = 2 * math.pi * torch.rand(n, 2, 1, 1, generator=generator)
    a = 2 * math.pi * cycles * (u * torch.cos(angle) + v * torch.sin(angle)) + phase[:, 0]
    b = 2 * math.pi * cycles * (v * torch.cos(angle) - u * torch.sin(angle)) + phase[:, 1]
    stripes = 0.5 + 0.5 * torch.sin(a)
    checker = 0.5 + 0.5 * torch.sin(a) * torch.sin(b)
    dots = ((1 + torch.cos(a)) * (1 + torch.cos(b)) / 4) ** 2
    kind = (labels % 3)[:, None, None]
    pattern = torch.where(kind == 0, stripes, torch.where(kind == 1, checker, dots))
    return pattern.unsqueeze(1)


def _bg_pattern(labels: Tensor, image_size: int, generator: torch.Generator) -> Tensor:
    """(N, 1, H, W) in [0, 1]: a smooth gradient along a class-specific direction plus random
    low-frequency blobs (a 4x4 noise grid upsampled)."""
    n = len(labels)
    coords = torch.arange(image_size, dtype=torch.float32) / (image_size - 1) - 0.5
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    angle = (labels.float() * 2 * math.pi / NUM_CLASSES)[:, None, None]
    gradient = 0.5 + (u * torch.cos(angle) + v * torch.sin(angle)) / math.sqrt(2)
    blobs = F.interpolate(torch.randn(n, 1, 4, 4, generator=generator), size=image_size,
                          mode="bicubic", align_corners=False)
    return (gradient.unsqueeze(1) + 0.15 * blobs).clamp(0.0, 1.0)


def _wildlife(labels: Tensor, image_size: int, generator: torch.Generator,
              foreground: bool) -> Tensor:
    """Class texture: the palette colour modulated by the pattern, from 30% to 100% of it."""
    palette, pattern = (FG_PALETTE, _fg_pattern) if foreground else (BG_PALETTE, _bg_pattern)
    level = 0.3 + 0.7 * pattern(labels, image_size, generator)
    return level * palette[labels][:, :, None, None]


def textures(variant: str, fg_labels: Tensor, bg_labels: Tensor, image_size: int,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(foregrounds, backgrounds)``, each (N, 3, H, W) in [0, 1], for these labels: the
    ground-truth texture mechanisms of Sauer & Geiger's (2021) colored, double-colored and
    Wildlife MNIST. ``colored`` has a black background whatever ``bg_labels`` say."""
    if variant == "colored":
        fg = _flat(FG_PALETTE, fg_labels, image_size, generator)
        return fg, torch.zeros_like(fg)
    if variant == "double_colored":
        return (_flat(FG_PALETTE, fg_labels, image_size, generator),
                _flat(BG_PALETTE, bg_labels, image_size, generator))
    if variant == "wildlife":
        return (_wildlife(fg_labels, image_size, generator, foreground=True),
                _wildlife(bg_labels, image_size, generator, foreground=False))
    raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")


def make_split(variant: str, split: str, *, image_size: int = 16, seed: int = 0,
               copies: int = 1, bias: float = 1.0) -> MechanismData:
    """One split of a coloured-digits variant (Sauer & Geiger, 2021, built from scikit-learn's
    digits at ``image_size`` instead of MNIST).

    ``train``: the digits' train images; foreground and background labels equal the digit's with
    probability ``bias``, otherwise both uniform and independent. ``test``: the digits' test
    images (disjoint from train) with texture labels independent of the digit. ``oracle``: the
    train images labelled like ``test`` (the oracle classifier's training data). Each digit
    appears ``copies`` times with independently drawn colours and noise; ``seed`` fixes all.
    """
    _check(variant, split, copies, bias)
    digits = load_digits(image_size=image_size)
    if split == "test":
        x, y = digits.x_test, digits.y_test
    else:
        x, y = digits.x_train, digits.y_train
    masks = (x.float() / 255.0).repeat(copies, 1, 1, 1)
    labels = y.repeat(copies)
    generator = torch.Generator().manual_seed(seed * len(SPLITS) + SPLITS.index(split))
    fg_labels, bg_labels = mechanism_labels(labels, bias if split == "train" else 0.0,
                                            generator)
    foregrounds, backgrounds = textures(variant, fg_labels, bg_labels, image_size, generator)
    return MechanismData(variant=variant, images=compose(masks, foregrounds, backgrounds),
                         labels=labels, masks=masks, foregrounds=foregrounds,
                         backgrounds=backgrounds, fg_labels=fg_labels, bg_labels=bg_labels)
