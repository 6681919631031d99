"""Class-conditional mechanism generators and the CGN that composes them.

Sauer & Geiger (ICLR 2021) model an image by three independent mechanisms, each a conditional
generator ``(noise, label) -> output``: shape (a one-channel mask in [0, 1], sigmoid), foreground
texture and background (three channels in [0, 1]). Their MNIST mechanisms are small DCGAN-style
generators (label embedding concatenated to the noise, a linear layer to a low-resolution map,
upsampling convolutions); :class:`MechanismGenerator` is that design scaled to our 16x16 digits,
its ``width`` setting the size (teacher and SKDCGN students share the class, students are
narrower). Deviation: outputs are in [0, 1] (sigmoid) rather than [-1, 1], the range the
composition ``x = m * f + (1 - m) * b`` works in.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdci_ray.cgn.composition import compose, shuffle_texture

MECHANISMS = ("shape", "foreground", "background")
CHANNELS = {"shape": 1, "foreground": 3, "background": 3}


class MechanismGenerator(nn.Module):
    """``(noise (B, latent_dim), labels (B,)) -> (B, out_channels, size, size)`` in [0, 1]."""

    def __init__(self, out_channels: int, num_classes: int, latent_dim: int = 16,
                 width: int = 32, image_size: int = 16) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {image_size}")
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.init = image_size // 4
        self.embed = nn.Embedding(num_classes, num_classes)
        self.fc = nn.Linear(latent_dim + num_classes, 2 * width * self.init ** 2)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, out_channels, 3, padding=1),
        )

    def forward(self, noise: Tensor, labels: Tensor) -> Tensor:
        h = self.fc(torch.cat([noise, self.embed(labels)], dim=1))
        return torch.sigmoid(self.net(h.view(len(h), -1, self.init, self.init)))


@dataclass
class Composite:
    """One composed batch: each mechanism's output (textures after the shuffler) and the image."""

    mask: Tensor
    foreground: Tensor
    background: Tensor
    image: Tensor


class CGN(nn.Module):
    """Three mechanisms composed as ``m * shuffle(f) + (1 - m) * shuffle(b)``; every mechanism
    takes its own noise and its own label (a counterfactual when the labels differ)."""

    def __init__(self, num_classes: int = 10, latent_dim: int = 16, width: int = 32,
                 image_size: int = 16, shuffle_tiles: int = 2) -> None:
        super().__init__()
        self.latent_dim, self.shuffle_tiles = latent_dim, shuffle_tiles
        self.mechanisms = nn.ModuleDict({
            name: MechanismGenerator(CHANNELS[name], num_classes, latent_dim, width, image_size)
            for name in MECHANISMS})

    def mechanism(self, name: str, noise: Tensor, labels: Tensor) -> Tensor:
        """One mechanism's raw output (textures *before* the shuffler)."""
        return self.mechanisms[name](noise, labels)

    def compose(self, noise: dict[str, Tensor], labels: dict[str, Tensor],
                generator: torch.Generator | None = None) -> Composite:
        """The image of per-mechanism ``noise`` and ``labels`` (dicts keyed by mechanism);
        with ``generator`` the textures pass through the shuffler."""
        return compose_mechanisms(self.mechanism, noise, labels, generator, self.shuffle_tiles)


def compose_mechanisms(mechanism, noise: dict[str, Tensor], labels: dict[str, Tensor],
                       generator: torch.Generator | None, shuffle_tiles: int = 2) -> Composite:
    """Query ``mechanism(name, noise, labels)`` for each mechanism and compose the outputs (the
    same formula for the teacher CGN and for the composed SKDCGN students)."""
    out = {name: mechanism(name, noise[name], labels[name]) for name in MECHANISMS}
    fg, bg = out["foreground"], out["background"]
    if generator is not None:
        fg = shuffle_texture(fg, generator, shuffle_tiles)
        bg = shuffle_texture(bg, generator, shuffle_tiles)
    return Composite(out["shape"], fg, bg, compose(out["shape"], fg, bg))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (the CPU for a module holding none)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device
