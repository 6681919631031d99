"""Counterfactual datasets from a CGN's mechanisms (teacher) or from SKDCGN's students.

Sauer & Geiger (2021) train an invariant classifier on composed counterfactuals: the shape keeps
the sample's label, foreground and background labels are permuted within the batch, so colour
and texture no longer predict the class. The SKDCGN composition study (Ambekar et al., 2022)
perturbs the composition: mask noise, mask transparency (x0.75), mask rotation, and several
counterfactuals per mask; :class:`CounterfactualAugmentation` holds those switches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdci_ray.cgn.composition import compose, counterfactual_labels, shuffle_texture
from kdci_ray.cgn.mechanisms import MECHANISMS

Mechanism = Callable[[str, Tensor, Tensor], Tensor]  # (mechanism, noise, labels) -> output


@dataclass
class CounterfactualAugmentation:
    mask_noise: float = 0.0  # std of Gaussian noise added to the mask (then clamped to [0, 1])
    transparency: float = 1.0  # the mask is multiplied by this (the study's 0.75)
    rotation: float = 0.0  # masks rotated by a uniform angle in [-rotation, rotation] degrees
    per_mask: int = 1  # counterfactuals per mask, each with fresh texture noise and labels


def rotate(mask: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each ``(1, H, W)`` mask by its angle about the centre (bilinear, zero fill)."""
    rad = degrees * math.pi / 180.0
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(mask.shape), align_corners=False)
    return F.grid_sample(mask, grid, align_corners=False, padding_mode="zeros")


def perturb_mask(mask: Tensor, variant: CounterfactualAugmentation,
                 generator: torch.Generator) -> Tensor:
    """A counterfactual's mask perturbed at sampling time (:func:`perturbed`)."""
    return perturbed(mask, generator, variant.rotation, variant.mask_noise,
                     variant.transparency)


def perturbed(mask: Tensor, generator: torch.Generator, rotation: float, noise: float,
              scale: float) -> Tensor:
    """SKDCGN's mask perturbation: each mask rotated by a uniform angle in +-``rotation``
    degrees, plus ``N(0, noise^2)``, times ``scale``, clamped to [0, 1]; differentiable, the
    random draws from the CPU ``generator`` and only for the active parts."""
    if rotation > 0:
        angles = (torch.rand(len(mask), generator=generator) * 2 - 1) * rotation
        mask = rotate(mask, angles.to(mask.device, mask.dtype))
    if noise > 0:
        mask = mask + noise * torch.randn(mask.shape, generator=generator).to(mask)
    return (mask * scale).clamp(0.0, 1.0)


@torch.no_grad()
def counterfactual_dataset(mechanism: Mechanism, n: int, latent_dim: int, num_classes: int,
                           seed: int, variant: CounterfactualAugmentation | None = None,
                           batch_size: int = 500, shuffle_tiles: int = 2) -> tuple[Tensor, Tensor]:
    """``n`` counterfactual images (float [0, 1]) and their shape labels."""
    variant = variant or CounterfactualAugmentation()
    if variant.per_mask < 1:
        raise ValueError(f"per_mask must be >= 1, got {variant.per_mask}")
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    n_masks = math.ceil(n / variant.per_mask)
    for start in range(0, n_masks, batch_size):
        b = min(batch_size, n_masks - start)
        y = torch.randint(num_classes, (b,), generator=g)
        mask = perturb_mask(mechanism("shape", torch.randn(b, latent_dim, generator=g), y),
                            variant, g)
        for _ in range(variant.per_mask):
            _, fg_y, bg_y = counterfactual_labels(y, g)
            fg = mechanism("foreground", torch.randn(b, latent_dim, generator=g), fg_y)
            bg = mechanism("background", torch.randn(b, latent_dim, generator=g), bg_y)
            images.append(compose(mask, shuffle_texture(fg, g, shuffle_tiles),
                                  shuffle_texture(bg, g, shuffle_tiles)))
            labels.append(y)
    return torch.cat(images)[:n], torch.cat(labels)[:n]


def students_mechanism(students: dict[str, torch.nn.Module]) -> Mechanism:
    """The composed students as one ``mechanism(name, noise, labels)`` callable."""
    missing = set(MECHANISMS) - set(students)
    if missing:
        raise ValueError(f"no student for mechanism(s) {', '.join(sorted(missing))}")
    return lambda name, noise, labels: students[name](noise, labels)


def on_device(mechanism: Mechanism, device: str | torch.device) -> Mechanism:
    """``mechanism`` taking its noise and labels on ``device`` and answering there, wherever
    they come from and it computes (the CPU-drawn noise of :func:`counterfactual_dataset`, a
    black box's CPU answers); a no-op where everything is on ``device`` already."""
    device = torch.device(device)
    return lambda name, noise, labels: mechanism(name, noise.to(device),
                                                 labels.to(device)).to(device)
