"""CIFAR VGG-11 with BatchNorm (Simonyan & Zisserman, "Very Deep Convolutional Networks
for Large-Scale Image Recognition", ICLR 2015; BN per Ioffe & Szegedy 2015).

Follows the zju-vipa ``datafree`` model zoo (CMI, Fast-Datafree, MosaicKD; itself from
RepDistiller): configuration "A" split into five ``Sequential`` stages ``block0..block4``
of conv3x3(bias)-BN-ReLU layers whose *last* ReLU is dropped (it is applied in
``forward``), so indices inside a stage are ``0`` conv, ``1`` BN, ``2`` ReLU, ``3`` conv,
``4`` BN. Stages are separated by 2x2 max pools ``pool0..pool2``; as in the reference,
``pool3`` is only applied to 64-pixel-high inputs, so a 32x32 image reaches ``block4`` at
4x4. Then global average pool and a single ``classifier`` Linear(512, C) (no VGG FC
stack). Names, init and layout match the reference so published teachers load unchanged.

Deviations from the reference: ``forward`` returns :class:`Outputs`; ``in_channels``
changes the first conv's input channels; ReLUs inside the stages are not in-place; only
``vgg11_bn`` is provided.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .outputs import Outputs

# Configuration "A" (VGG-11): conv widths of each of the five stages.
CFG_A: list[list[int]] = [[64], [128], [256, 256], [512, 512], [512, 512]]


def _make_stage(widths: Sequence[int], in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers.append(nn.Conv2d(in_channels, w, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(w))
        layers.append(nn.ReLU())
        in_channels = w
    return nn.Sequential(*layers[:-1])  # the stage's last ReLU is applied in forward()


class VGG(nn.Module):
    """Five-stage CIFAR VGG with a single linear classifier."""

    def __init__(
        self,
        cfg: Sequence[Sequence[int]],
        batch_norm: bool = True,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.block0 = _make_stage(cfg[0], in_channels, batch_norm)
        self.block1 = _make_stage(cfg[1], cfg[0][-1], batch_norm)
        self.block2 = _make_stage(cfg[2], cfg[1][-1], batch_norm)
        self.block3 = _make_stage(cfg[3], cfg[2][-1], batch_norm)
        self.block4 = _make_stage(cfg[4], cfg[3][-1], batch_norm)
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        # Same as the reference: He-normal (fan-out) convs, unit BN, N(0, 0.01) classifier.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Outputs:
        h = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if h == 64:  # reference behaviour: the 4th pool only for 64x64 inputs
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        feat = self.pool4(x).flatten(1)
        return Outputs(self.classifier(feat), feat)


def vgg11_bn(num_classes: int, in_channels: int = 3) -> VGG:
    """VGG-11 (configuration "A") with BatchNorm, for 32x32 inputs."""
    return VGG(CFG_A, batch_norm=True, num_classes=num_classes, in_channels=in_channels)
