"""Model-inversion helpers shared by CMI, Fast and DeepInversion.

- views: ``shift_flip`` (``RandomCrop(padding)`` + flip) and ``resized_crop``
  (``RandomResizedCrop`` + flip), made with ``affine_grid``/``grid_sample`` (kornia in the
  zju-vipa reference code), differentiable in the images;
- ``decision_adversarial``: the CMI / Fast adversarial term against the student;
- ``to_pool_images``: [0, 1] generator output -> uint8 pool images;
- ``BestBatch``: a copy of the synthetic batch at the lowest loss seen in a round.

Moved here unchanged from ``methods/cmi.py`` and ``methods/deepinv.py`` so that no method module
imports another one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _affine(x: Tensor, sx: Tensor, sy: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Per-image axis-aligned affine resampling (bilinear, zero fill), differentiable in ``x``."""
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = sx, sy, tx, ty
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _flip_signs(n: int, rng: torch.Generator, flip: bool) -> Tensor:
    if not flip:
        return torch.ones(n)
    return torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0)


def shift_flip(x: Tensor, rng: torch.Generator, pad: int, flip: bool = True) -> Tensor:
    """``RandomCrop(size, padding=pad)`` + ``RandomHorizontalFlip``: a random integer shift in
    ``[-pad, pad]`` with zero fill, then a flip with probability 1/2."""
    b, _, h, w = x.shape
    dx = torch.randint(-pad, pad + 1, (b,), generator=rng).float()
    dy = torch.randint(-pad, pad + 1, (b,), generator=rng).float()
    return _affine(x, _flip_signs(b, rng, flip), torch.ones(b), 2 * dx / w, 2 * dy / h)


def resized_crop(x: Tensor, rng: torch.Generator, min_scale: float, flip: bool = True) -> Tensor:
    """``RandomResizedCrop(size, scale=(min_scale, 1), ratio=(3/4, 4/3))`` + flip, bilinear."""
    b = x.shape[0]
    area = min_scale + (1 - min_scale) * torch.rand(b, generator=rng)
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    ratio = torch.exp(lo + (hi - lo) * torch.rand(b, generator=rng))
    cw, ch = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    cx = (1 - cw) * (2 * torch.rand(b, generator=rng) - 1)
    cy = (1 - ch) * (2 * torch.rand(b, generator=rng) - 1)
    return _affine(x, cw * _flip_signs(b, rng, flip), ch, cx, cy)


def decision_adversarial(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``-mean_b [KL(p_t || p_s) * 1(argmax s = argmax t)]``: push the images towards where the
    student still agrees with the teacher but fits it poorly (CMI / Fast reference code)."""
    log_s = F.log_softmax(student_logits, dim=1)
    log_t = F.log_softmax(teacher_logits, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)
    agree = (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float()
    return -(kl * agree).mean()


def to_pool_images(images: Tensor) -> Tensor:
    """[0, 1] generator output -> uint8, the compact pool format (the reference writes PNGs)."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)


class BestBatch:
    """Keeps a *copy* of the pixels at the lowest loss seen (the reference keeps an alias)."""

    def __init__(self) -> None:
        self.loss = float("inf")
        self.images: Tensor | None = None
        self.logs: dict[str, float] = {}

    def update(self, loss: float, images: Tensor, logs: dict[str, Tensor]) -> None:
        if loss < self.loss:
            self.loss, self.images = loss, images.detach().clone()
            self.logs = {k: float(v.detach()) for k, v in logs.items()}
