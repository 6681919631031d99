"""The patch discriminator of MosaicKD (Fang et al., "Mosaicking to Distill: Knowledge Distillation
from Out-of-Domain Data", NeurIPS 2021).

MosaicKD's discriminator judges *local patches*, not whole images: real patches come from the
out-of-domain images, fake ones from the generator, so the generator only has to make locally
authentic images (the teacher and student shape the global content). The layers follow the
reference's ``PatchDiscriminator`` (zju-vipa/MosaicKD, ``engine/models/generator_patch_size.py``),
a PatchGAN-style stack:

    conv 4x4 stride 2 (bias) -> LeakyReLU(0.2)
    -> conv 4x4 stride 2 (no bias) -> BatchNorm -> LeakyReLU(0.2)
    -> conv 1x1 (no bias) -> one logit per patch

Each output logit sees a 10x10 input patch (receptive field 4 + 3 * 2); a 32x32 input gives an
8x8 grid of patch logits, a 16x16 input a 4x4 grid. Any input side divisible by 4 works.
"""

from __future__ import annotations

from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """Logits ``(B, 1, H/4, W/4)``, one per overlapping 10x10 patch (no sigmoid: BCE-with-logits).

    Args:
        channels: input image channels.
        ndf: width of the first conv (the reference's default 128); the second has ``2 * ndf``.
    """

    def __init__(self, channels: int, ndf: int = 128) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, 1, 1, stride=1, padding=0, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"PatchDiscriminator needs sides divisible by 4, got {tuple(x.shape)}")
        return self.main(x)
