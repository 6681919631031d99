"""Generators of the generation-based DFKD papers."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DAFLGenerator(nn.Module):
    """The DCGAN-style generator of DAFL (Chen et al., ICCV 2019, Sec. 4; same as its code).

    latent -> linear -> BN -> (upsample x2, conv3x3, BN, LeakyReLU) x2 -> conv3x3 -> tanh ->
    BN without affine (keeps every output channel standardised, as in the reference code).
    """

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int = 128) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"DAFL generator needs an image size divisible by 4, got {image_size}")
        self.latent_dim = latent_dim
        self.init_size = image_size // 4
        self.l1 = nn.Linear(latent_dim, width * self.init_size**2)
        self.width = width
        self.conv_blocks0 = nn.BatchNorm2d(width)
        self.conv_blocks1 = nn.Sequential(
            nn.Conv2d(width, width, 3, stride=1, padding=1),
            nn.BatchNorm2d(width, 0.8),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.conv_blocks2 = nn.Sequential(
            nn.Conv2d(width, width // 2, 3, stride=1, padding=1),
            nn.BatchNorm2d(width // 2, 0.8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 2, channels, 3, stride=1, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, z: Tensor) -> Tensor:
        out = self.l1(z).view(z.shape[0], self.width, self.init_size, self.init_size)
        img = self.up(self.conv_blocks0(out))
        img = self.up(self.conv_blocks1(img))
        return self.conv_blocks2(img)


class DatafreeGenerator(nn.Module):
    """The generator of zju-vipa's ``datafree`` package (``datafree/models/generator.py``,
    ``Generator(nz, ngf, img_size, nc)``), used by CMI (Fang et al., IJCAI 2021) and Fast
    (Fang et al., AAAI 2022) on CIFAR; both repositories ship the same layers:

    latent -> linear (``l1.0``) -> BN -> upsample x2 -> conv3x3 (no bias) -> BN -> LeakyReLU(0.2)
    -> upsample x2 -> conv3x3 (no bias) -> BN -> LeakyReLU(0.2) -> conv3x3 -> Sigmoid.

    Outputs are images in [0, 1]; normalise them with the dataset's mean/std
    (``MethodContext.normalize``) before the teacher sees them. Module names follow the
    reference (``l1.0`` is the linear layer, ``conv_blocks.0`` the first BN, used by Fast's
    ``reset_l0``).
    """

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int = 64) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"the generator needs an image size divisible by 4, got {image_size}")
        self.latent_dim = latent_dim
        self.init_size = image_size // 4
        self.l1 = nn.Sequential(nn.Linear(latent_dim, 2 * width * self.init_size**2))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, channels, 3, stride=1, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        out = self.l1(z).view(z.shape[0], -1, self.init_size, self.init_size)
        return self.conv_blocks(out)


@torch.no_grad()
def normal_init_(module: nn.Module, rng: torch.Generator, mean: float, std: float) -> None:
    """``weight ~ N(mean, std)`` and ``bias = 0``, drawn from ``rng`` on the CPU (so a seeded
    generator reproduces it on any device)."""
    weight = getattr(module, "weight", None)
    if weight is not None:
        weight.copy_(torch.randn(weight.shape, generator=rng) * std + mean)
    bias = getattr(module, "bias", None)
    if bias is not None:
        bias.zero_()


def dcgan_reset_(model: nn.Module, rng: torch.Generator) -> None:
    """CMI's ``reset_model``: conv / linear weights ``N(0, 0.02)``, BN weights ``N(1, 0.02)``,
    every bias 0 (running BN statistics are kept, as in the reference)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            normal_init_(m, rng, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            normal_init_(m, rng, 1.0, 0.02)
