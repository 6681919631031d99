"""Generators of the generation-based DFKD papers."""

from __future__ import annotations

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
