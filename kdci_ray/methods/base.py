"""The Method interface every DFKD method implements (after zju-vipa `datafree`'s
``synthesize()`` / ``sample()`` seam).

The one distillation loop (``kdci_ray.train.loop``) drives a method like this::

    for round in range(rounds):
        method.synthesize(round)                      # update generator / pixels / pool
        for _ in range(kd_steps):
            x = method.sample(batch_size)             # substitution data
            losses = method.student_loss(s_logits, t_logits)   # dict with "loss"

Methods own only what differs: their synthesis, their generator's optimiser and their loss terms.
They never import ``ray`` or ``kdci_ray.kdci`` (KDCI is a plug-in the loop applies).

A method also describes its substitution data, neutrally, for whatever the loop plugs in: the
class attribute ``substitution`` (a ``SubstitutionData``: "generated" afresh every synthesis round,
or a "fixed" pool selected once; how many clusters summarise it by default) and three hooks:
``substitution_size(cfg, world_size)`` (how many images one summary of it covers, all ranks
together), ``substitution_batch()`` (this rank's share of those images, now) and
``substitution_key()`` (the content identity of a fixed pool, so a summary of it can be stored
and shared; None for generated data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdci_ray.data.labeled import normalize, to_device
from kdci_ray.methods.losses import kd_loss, weighted_kd_loss
from kdci_ray.methods.pool import ImagePool, augment


@dataclass(frozen=True)
class SubstitutionData:
    """What a method distils on, described for the loop's plug-ins (no plug-in's names here).

    ``kind``: "generated" (fresh images every synthesis round: generators, model inversion; a
    summary of them goes stale each round) or "fixed" (a pool selected once and sampled for the
    whole run: the sampling-based methods; one summary holds for the run and, keyed by
    ``Method.substitution_key()``, for every run on the same pool). ``default_clusters``: how many
    clusters (modes) summarise the data by default, e.g. the size of a plug-in's dictionary of it.
    """

    kind: str = "generated"
    default_clusters: int = 8

    KINDS: ClassVar[tuple[str, ...]] = ("generated", "fixed")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"SubstitutionData.kind must be one of {', '.join(self.KINDS)}, "
                             f"got {self.kind!r}")
        if self.default_clusters < 1:
            raise ValueError(f"SubstitutionData.default_clusters must be >= 1, "
                             f"got {self.default_clusters}")

    @property
    def fixed(self) -> bool:
        """A pool selected once (True) rather than data generated afresh every round."""
        return self.kind == "fixed"


@dataclass
class MethodContext:
    """What the loop hands a method. ``wrap`` makes a module data-parallel (DDP) when the loop
    runs on several ranks, so a method's generator gradients are averaged like the student's."""

    teacher: nn.Module
    student: nn.Module  # the bare student (never the DDP wrapper)
    num_classes: int
    channels: int
    image_size: int
    device: torch.device
    seed: int  # already rank-specific: each rank synthesises its own data
    rounds: int
    rank: int = 0
    world_size: int = 1
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m
    mean: tuple[float, ...] = (0.0,)  # the teacher's input normalisation: x = (pixel - mean) / std
    std: tuple[float, ...] = (1.0,)
    open_world: Any = None  # OpenWorldPool for sampling-based methods (built by the loop)
    cache_dir: Path | None = None  # where selections of the open-world pool are cached
    # controlled shift (``shift.imbalance``, 0 = off): the class imbalance ratio of the
    # substitution data (conditional targets, or per-class quotas of a pool selection)
    imbalance: float = 0.0
    strict_shift: bool = True  # False in smoke mode: quotas a tiny pool cannot fill are capped

    @property
    def class_profile(self) -> Tensor | None:
        """Target class shares under the shift (class 0 most common), None without one."""
        if not self.imbalance:
            return None
        from kdci_ray.data.shift import class_profile

        return class_profile(self.num_classes, self.imbalance)

    def to_device(self, x: Tensor) -> Tensor:
        """``x`` on the run's device, copied without making the host wait (a KD step's draws)."""
        return to_device(x, self.device)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 or [0, 1] float ``(B, C, H, W)`` -> the teacher's input space, on ``device``."""
        return normalize(self.to_device(images), self.mean, self.std)

    def to_uint8(self, x: Tensor) -> Tensor:
        """Inverse of ``normalize`` (clamped to [0, 255]) for compact pools."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)


HELDOUT_SEED = 7_919  # offset of the held-out inputs' random stream from the method's seed


class Method:
    """Base class; subclasses set the class attributes and implement the three calls."""

    name: ClassVar[str]
    Config: ClassVar[type]
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    SMOKE: ClassVar[dict[str, Any]] = {}
    substitution: ClassVar[SubstitutionData] = SubstitutionData()  # what it distils on
    needs_open_world: ClassVar[bool] = False  # sampling-based methods read an unlabeled pool
    conditional: ClassVar[bool] = False  # synthesis draws conditional targets (sample_targets)

    @classmethod
    def substitution_size(cls, cfg: Any, world_size: int = 1) -> int:
        """How many images ``substitution_batch()`` holds, all ranks together (``cfg``: the
        method's config): by default one synthesis batch per rank."""
        return int(cfg.batch_size) * world_size

    def __init__(self, cfg: Any, ctx: MethodContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.rng = torch.Generator(device="cpu").manual_seed(ctx.seed)
        self.last_batch: Tensor | None = None

    def synthesize(self, round_idx: int) -> dict[str, float]:
        """One synthesis round; returns scalar losses to log (the loop prefixes ``synth/``)."""
        raise NotImplementedError

    def kd_active(self, round_idx: int) -> bool:
        """Whether the loop runs the KD steps this round (Fast's warm-up rounds return False)."""
        del round_idx
        return True

    def sample(self, batch_size: int) -> Tensor:
        """A batch of substitution inputs for one KD step (no grad to the generator)."""
        raise NotImplementedError

    def sample_targets(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` conditional target classes (CPU) drawn with ``generator`` (default: this
        method's RNG): uniform draws by default; under a controlled shift, draws from
        ``ctx.class_profile``."""
        rng = self.rng if generator is None else generator
        profile = self.ctx.class_profile
        if profile is None:
            return torch.randint(self.ctx.num_classes, (n,), generator=rng)
        return torch.multinomial(profile.float().cpu(), n, replacement=True, generator=rng)

    def heldout_batch(self, n: int) -> Tensor | None:
        """``n`` substitution inputs never used for KD, drawn as the method draws its own, in
        the teacher's input space (the label-free readings fit on them:
        ``kdci_ray.train.readings``); drawing them changes nothing the run does next (their own
        random stream, seeded ``HELDOUT_SEED + ctx.seed``). None: the method has none."""
        del n
        return None

    def sample_pool(self, pool: ImagePool, batch_size: int) -> Tensor:
        """A batch from an in-memory pool of synthetic images: drawn with ``self.rng``,
        normalised to the teacher's input space, then augmented (``cfg.augment_pad`` /
        ``cfg.augment_flip``; translation and flips commute with the per-channel normalisation)."""
        x = self.ctx.normalize(pool.sample(batch_size, self.rng))
        return augment(x, self.rng, pad=self.cfg.augment_pad, flip=self.cfg.augment_flip)

    def substitution_batch(self) -> Tensor:
        """This rank's share of the current substitution data, in the teacher's input space: by
        default the batch the last ``synthesize()`` stored in ``self.last_batch``."""
        if self.last_batch is None:
            raise RuntimeError(
                f"{type(self).__name__}.substitution_batch() before the first synthesize()")
        return self.last_batch

    @classmethod
    def open_world_selection(cls, cfg: Any) -> tuple[str, int] | None:
        """``(criterion, n)`` of the open-world subset a sampling-based method distils on (see
        ``kdci_ray.data.selection``); None for methods without an open-world pool."""
        return None

    def substitution_key(self) -> str | None:
        """Content identity of a fixed pool's ``substitution_batch()`` (all ranks' shares), so a
        summary of it can be saved and shared across runs; None (the default: generated data,
        fresh every round) means never stored."""
        return None

    def student_loss(self, student_logits: Tensor, teacher_logits: Tensor,
                     weights: Tensor | None = None) -> dict[str, Tensor]:
        """Named loss terms for the student step; must contain ``loss`` (the sum that trains).
        Default: plain KD at the method's explicit ``kd_temperature``; with ``weights`` (``(B,)``,
        the loop's per-sample weights, ``train.balance_beta``) KD weighted per sample,
        ``T^2 * sum_i w_i KL_i / B``. The loop passes ``weights`` only when it has some."""
        if weights is None:
            kd = kd_loss(student_logits, teacher_logits, self.cfg.kd_temperature)
        else:
            kd = weighted_kd_loss(student_logits, teacher_logits, weights,
                                  self.cfg.kd_temperature)
        return {"loss": kd, "kd": kd}

    def after_student_step(self) -> None:
        """Called by the loop right after each student optimiser step: a method that learns
        something from the student's loss with its own optimiser steps it here (DFND's T)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
