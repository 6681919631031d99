"""BatchNorm-statistics matching (DeepInversion, Yin et al. CVPR 2020, Eq. 3).

Hooks are registered only inside the ``bn_statistics`` context, so they are active only during
synthesis and are always removed; entering it twice on one model is refused (hooks never stack).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

_FLAG = "_bn_statistics_active"  # set on a model while our hooks are registered


class BNStatistics:
    """Collects, per BatchNorm2d layer, ``||mu - mu_bn||_2 + ||var - var_bn||_2`` of its input."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.losses: list[Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.permute(1, 0, 2, 3).flatten(1).var(dim=1, unbiased=False)
        self.losses.append(
            torch.norm(module.running_mean - mean, 2) + torch.norm(module.running_var - var, 2)
        )

    def pop(self) -> Tensor:
        """Sum of the losses collected since the last call (one per BN layer per forward)."""
        if not self.losses:
            raise RuntimeError(
                "no BatchNorm2d statistics collected: does the model have BN layers?"
            )
        total = torch.stack(self.losses).sum()
        self.losses = []
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@contextmanager
def bn_statistics(model: nn.Module) -> Iterator[BNStatistics]:
    if getattr(model, _FLAG, False):
        raise RuntimeError("BN-statistics hooks are already active on this model; they never stack")
    object.__setattr__(model, _FLAG, True)
    stats = BNStatistics(model)
    try:
        yield stats
    finally:
        stats.remove()
        object.__setattr__(model, _FLAG, False)


def count_forward_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())
