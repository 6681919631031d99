"""Forward hooks on the teacher: BatchNorm-statistics matching (DeepInversion, Yin et al. CVPR
2020, Eq. 3) and CMI's instance-mean features (Fang et al., IJCAI 2021).

Hooks are registered only inside the ``bn_statistics`` context, so they are active only during
synthesis and are always removed; entering it twice on one model is refused (hooks never stack).
``bn_statistics_momentum`` is Fast's variant (Fang et al., AAAI 2022): the batch statistics are
blended with a memory (``BNMomentum``) that persists across synthesis calls; same hook rules.
``instance_means`` follows the same rules for the modules ``stage_inputs`` or ``bn_inputs`` pick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
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

    def __init__(self, rate: float, device: torch.device | None = None) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"BN momentum must be in [0, 1), got {rate}")
        self.rate = rate
        self.device = device  # where the statistics live (the teacher's device)
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
        """The memory from a checkpoint (read onto the CPU), moved back to ``device``."""
        self.rate, stats = state["rate"], state["stats"]
        if stats is not None and self.device is not None:
            stats = [(m.to(self.device), v.to(self.device)) for m, v in stats]
        self.stats = stats


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


# ----------------------------------------------------------------------------- CMI features

_FEATURES_FLAG = "_instance_means_active"  # set on a model while instance-mean hooks are on


def bn_inputs(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm2d layer: the reference's ``feature_layers=None`` (all BN inputs)."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def stage_inputs(model: nn.Module) -> list[nn.Module]:
    """The modules whose *inputs* are CMI's contrastive features: the input of each stage.

    - CIFAR ResNets (``layer1..layer4``): those four, as zju-vipa/CMI ``datafree_kd.py`` does
      for a ResNet-34 teacher; inputs 64 + 64 + 128 + 256 = 512 channels (ResNet-18/34);
    - WRNs (``block1..block3``, no ``block0``): the three groups' inputs (stem output and the
      outputs of groups 1-2; WRN-40-2: 16 + 32 + 64 = 112);
    - VGGs (``block0..block4``): ``block1..block4``; ``block0``'s input is the image itself, as
      a ResNet's stem is not a stage (VGG-11: 64 + 128 + 256 + 512 = 960);
    - ``SmallCNN`` (``features``, stages separated by max pools; the digits models): the first
      conv after each pool, i.e. the input of every stage but the first, whose input is the
      image (``digits_cnn``: 32 + 64 = 96; ``tiny_cnn``: 8 + 16 = 24).

    The final stage's output (the classifier's features) is never included, as in the reference.
    """
    have = {name for name, _ in model.named_children()}
    resnet = ["layer1", "layer2", "layer3", "layer4"]
    if set(resnet) <= have:
        return [getattr(model, n) for n in resnet]
    if {"block0", "block1", "block2", "block3", "block4"} <= have:
        return [getattr(model, f"block{i}") for i in range(1, 5)]
    if {"block1", "block2", "block3"} <= have:
        return [getattr(model, f"block{i}") for i in range(1, 4)]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        layers = list(features)
        after_pool = [layers[i + 1] for i, m in enumerate(layers[:-1])
                      if isinstance(m, nn.MaxPool2d)]
        if after_pool:
            return after_pool
    raise ValueError(
        f"no known stages in {type(model).__name__} (ResNet layer1..4, WRN block1..3, VGG "
        "block0..4, or a features Sequential with max pools): set cmi.features=bn to use "
        "every BatchNorm input instead"
    )


class InstanceMeans:
    """Per hooked module, the spatial mean ``(B, C)`` of its input from the last forward."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        if not modules:
            raise ValueError("instance means need at least one module to hook")
        self.modules = list(modules)
        self.means: list[Tensor | None] = [None] * len(self.modules)
        self.handles = [m.register_forward_hook(partial(self._hook, i))
                        for i, m in enumerate(self.modules)]

    def _hook(self, i: int, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.means[i] = inputs[0].mean(dim=(2, 3))

    def features(self) -> Tensor:
        """``(B, sum of the hooked inputs' channels)``: the CMI feature of the last forward."""
        if any(m is None for m in self.means):
            raise RuntimeError("no input recorded for some hooked module: run a forward first")
        return torch.cat(self.means, dim=1)  # type: ignore[arg-type]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def instance_means(model: nn.Module,
                   modules: Sequence[nn.Module]) -> AbstractContextManager[InstanceMeans]:
    """Instance-mean hooks on ``modules`` (of ``model``) active only inside the context, never
    stacked on one model, always removed."""
    return exclusive_hooks(model, lambda: InstanceMeans(modules), _FEATURES_FLAG, "instance-mean")


@torch.no_grad()
def feature_dim(model: nn.Module, modules: Sequence[nn.Module], channels: int,
                image_size: int) -> int:
    """Width of the ``instance_means`` feature: one probe forward of a zero image (the
    reference's "CMI dims" probe); the model's train/eval mode is restored."""
    param = next(model.parameters(), None)
    probe = torch.zeros(1, channels, image_size, image_size,
                        device=param.device if param is not None else None)
    was_training = model.training
    model.eval()
    try:
        with instance_means(model, modules) as feats:
            model(probe)
            return int(feats.features().shape[1])
    finally:
        model.train(was_training)
