"""BatchNorm-statistics matching (DeepInversion, Yin et al. CVPR 2020, Eq. 3).

Hooks are registered only inside the ``bn_statistics`` context, so they are active only during
synthesis and are always removed; entering it twice on one model is refused (hooks never stack).
``bn_statistics_momentum`` is Fast's variant (Fang et al., AAAI 2022): the batch statistics are
blended with a memory (``BNMomentum``) that persists across synthesis calls; same hook rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TypeVar

import torch
from torch import Tensor, nn


class _Removable(Protocol):
    def remove(self) -> None: ...


H = TypeVar("H", bound=_Removable)

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
def exclusive_hooks(model: nn.Module, make: Callable[[], H], flag: str = _FLAG,
                    what: str = "BN-statistics") -> Iterator[H]:
    """Register hooks built by ``make()`` for the duration of the block only: refused when hooks
    of the same kind (``flag``) are already on ``model`` (they never stack), always removed."""
    if getattr(model, flag, False):
        raise RuntimeError(f"{what} hooks are already active on this model; they never stack")
    object.__setattr__(model, flag, True)
    hooks = make()
    try:
        yield hooks
    finally:
        hooks.remove()
        object.__setattr__(model, flag, False)


def bn_statistics(model: nn.Module) -> AbstractContextManager[BNStatistics]:
    return exclusive_hooks(model, lambda: BNStatistics(model))


class BNMomentum:
    """State Fast keeps *across* synthesis calls for its momentum BN matching (``bn_mmt``):
    per BN layer, an exponential moving average of the synthetic batches' input mean/var.

    Fang et al. (AAAI 2022), ``DeepInversionHook(module, mmt_rate)`` of zju-vipa/Fast-Datafree:
    the loss matches ``(1 - rate) * batch + rate * memory`` to the running statistics, and after
    each call the memory becomes ``rate * memory + (1 - rate) * last batch``.
    """

    def __init__(self, rate: float) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"BN momentum must be in [0, 1), got {rate}")
        self.rate = rate
        self.stats: list[tuple[Tensor, Tensor]] | None = None  # (mean, var) per BN layer

    def update(self, last: list[tuple[Tensor, Tensor]]) -> None:
        last = [(m.detach(), v.detach()) for m, v in last]
        if self.stats is None:
            self.stats = last
        else:
            r = self.rate
            self.stats = [(r * mm + (1 - r) * m, r * vm + (1 - r) * v)
                          for (mm, vm), (m, v) in zip(self.stats, last, strict=True)]

    def state_dict(self) -> dict:
        return {"rate": self.rate, "stats": self.stats}

    def load_state_dict(self, state: dict) -> None:
        self.rate, self.stats = state["rate"], state["stats"]


class MomentumBNStatistics(BNStatistics):
    """``BNStatistics`` whose batch statistics are blended with a ``BNMomentum`` memory:
    per layer ``||mu_bn - ((1-r) mu + r mu_mem)||_2 + ||var_bn - ((1-r) var + r var_mem)||_2``
    (plain DeepInversion matching while the memory is empty or ``r = 0``)."""

    def __init__(self, model: nn.Module, memory: BNMomentum) -> None:
        self.memory = memory
        self.last: list[tuple[Tensor, Tensor] | None] = []
        self.index: dict[int, int] = {}
        super().__init__(model)
        self.last = [None] * len(self.layers)
        self.index = {id(m): i for i, m in enumerate(self.layers)}

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        i = self.index[id(module)]
        mean = x.mean(dim=(0, 2, 3))
        var = x.permute(1, 0, 2, 3).flatten(1).var(dim=1, unbiased=False)
        self.last[i] = (mean, var)
        stats, r = self.memory.stats, self.memory.rate
        if stats is not None and r > 0:
            mean = (1 - r) * mean + r * stats[i][0]
            var = (1 - r) * var + r * stats[i][1]
        self.losses.append(
            torch.norm(module.running_mean - mean, 2) + torch.norm(module.running_var - var, 2)
        )

    def commit(self) -> None:
        """Fold the statistics of the latest forward into the memory (once per synthesis call,
        after the last optimisation step, as the reference's ``update_mmt``)."""
        if any(s is None for s in self.last):
            raise RuntimeError("commit() before a forward pass through every BN layer")
        self.memory.update(self.last)  # type: ignore[arg-type]


def bn_statistics_momentum(model: nn.Module,
                           memory: BNMomentum) -> AbstractContextManager[MomentumBNStatistics]:
    """Like ``bn_statistics`` (same no-stacking rule, hooks removed on exit) with the momentum
    memory; call ``commit()`` inside the context to update the memory."""
    return exclusive_hooks(model, lambda: MomentumBNStatistics(model, memory))


def count_forward_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())
