"""KDCI as the distillation loop sees it: one hook object, built once per run, called a few times.

The loop (``kdci_ray.train.loop``) builds it when ``kdci.enabled`` and otherwise never mentions
KDCI's life cycle::

    hook = KDCIHook.from_config(cfg, method_cls.substitution, num_classes, device, wrap=...)
    opt = SGD([student group, hook.param_group(lr)], ...)
    for round ...:
        method.synthesize(round)
        logs.update(hook.on_round(round, teacher, method))   # dictionary refresh when due
        for step ...:
            s_logits, step_logs = hook.on_batch(s_logits, t_logits)  # before the KD loss
        adjusted, eval_logs = hook.evaluate(test_logits)    # the compensated prediction
    checkpoint: hook.state_dict() (resume), hook.deploy_state() (``student.pt``)

What it owns: the settings (from the ``kdci`` config section; K already resolved by
``kdci_ray.config.resolve``: ``kdci.k = 0`` is the method's ``substitution.default_clusters``), the
refresh policy (every round for substitution data generated afresh each round, from the teacher
logits its KD steps observed; once, in the first round, for a fixed pool, keyed by the pool's
content so the dictionary store shares it across trials), the attention module's DDP wrapping,
its optimiser parameter group, the per-step metrics (attention entropy, prior ratio) and what the
checkpoint and the deployable student hold. It knows the method only through the neutral
description of its substitution data (``kind``) and two calls (``substitution_batch()``,
``substitution_key()``); it never imports ``kdci_ray.methods``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from kdci_ray.kdci.artifact import DictionaryStore
from kdci_ray.kdci.plugin import (
    KDCI,
    Images,
    KDCISettings,
    attention_entropy_tensor,
    prior_ratio,
    prior_ratio_tensor,
)

if TYPE_CHECKING:
    from kdci_ray.config import ExperimentConfig


class SubstitutionSource(Protocol):
    """What the hook asks of a method at a refresh (``kdci_ray.methods.base.Method``)."""

    def substitution_batch(self) -> Images: ...

    def substitution_key(self) -> str | None: ...


def plugin_from_config(cfg: ExperimentConfig, num_classes: int, device: torch.device,
                       source_model: nn.Module | None = None,
                       store: DictionaryStore | None = None) -> KDCI:
    """The KDCI plug-in of ``cfg`` (its ``kdci`` section, ``seed`` and KD batch as the scoring
    batch); ``source_model``: the other model of ``kdci.source: model``; ``store``: where
    build-once dictionaries are saved and shared (None: never stored)."""
    settings = KDCISettings.from_config(cfg.kdci, seed=cfg.seed,
                                        score_batch=cfg.train.batch_size)
    return KDCI(settings, num_classes, device, source_model=source_model,
                source_dim=num_classes if source_model is not None else None, store=store)


class KDCIHook:
    """KDCI's whole life cycle in one run (see the module docstring).

    ``substitution``: the method's ``SubstitutionData`` (only its ``kind`` is read: "fixed"
    refreshes once, "generated" every round); ``wrap``: makes the attention module data-parallel
    (the runtime's ``wrap``; identity on one rank); ``train_through``: the KD loss sees the
    adjusted logits (else only predictions are adjusted); ``lr_scale``: the attention's learning
    rate as a multiple of the student's.
    """

    def __init__(self, kdci: KDCI, substitution: Any, *, train_through: bool = True,
                 lr_scale: float = 1.0,
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m) -> None:
        self.kdci = kdci
        self.fixed = substitution.kind == "fixed"
        self.train_through = bool(train_through)
        self.lr_scale = float(lr_scale)
        self.attention = wrap(kdci.module)  # the (possibly DDP-wrapped) module the steps call

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, substitution: Any, num_classes: int,
                    device: torch.device, *, wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
                    source_model: nn.Module | None = None,
                    store: DictionaryStore | None = None) -> KDCIHook:
        """The hook of ``cfg`` (``kdci.enabled`` is the caller's check); ``source_model`` and
        ``store`` as for :func:`plugin_from_config`."""
        kdci = plugin_from_config(cfg, num_classes, device, source_model, store)
        return cls(kdci, substitution, train_through=cfg.kdci.train_through,
                   lr_scale=cfg.kdci.lr_scale, wrap=wrap)

    @property
    def k(self) -> int:
        """The dictionary size."""
        return self.kdci.settings.k

    @property
    def module(self) -> nn.Module:
        """The bare attention module (its weights are checked for non-finite values)."""
        return self.kdci.module

    def param_group(self, lr: float) -> dict[str, Any]:
        """The attention's optimiser parameter group, ``lr`` being the student's."""
        return {"params": self.kdci.module.parameters(), "lr": lr * self.lr_scale}

    def refreshes_in(self, round_idx: int) -> bool:
        """Whether the dictionary is rebuilt after the synthesis of ``round_idx``: every round
        for generated data, only the first for a fixed pool (a resumed run restores it)."""
        return not self.fixed or round_idx == 0

    def on_round(self, round_idx: int, teacher: nn.Module,
                 method: SubstitutionSource) -> dict[str, float]:
        """After the method's synthesis of ``round_idx``: refresh the dictionary when due, from
        the method's substitution batch (a fixed pool's is keyed by its content, so a stored
        dictionary is loaded, before the batch is even asked for, or the built one stored).
        The refresh's metrics; ``{}`` when none."""
        if not self.refreshes_in(round_idx):
            return {}
        data_key = method.substitution_key() if self.fixed else None
        return self.kdci.refresh(teacher, method.substitution_batch, data_key=data_key)

    def on_batch(self, student_logits: Tensor,
                 teacher_logits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One KD step, before its loss: keep the teacher's logits for the next refresh
        (generated data only: a fixed pool's dictionary is never rebuilt), compensate the
        student's logits. Returns the logits the KD loss sees (adjusted with ``train_through``,
        else the raw ones) and this step's metrics as 0-d tensors on the device (summed there
        and averaged by the loop at its next evaluation: nothing is read back per step)."""
        if not self.fixed:
            self.kdci.observe(teacher_logits)
        adjusted, lam = self.kdci.compensate(student_logits, self.attention)
        logs = {"kdci/attn_entropy": attention_entropy_tensor(lam),
                "kdci/prior_ratio": prior_ratio_tensor(student_logits, adjusted)}
        return (adjusted if self.train_through else student_logits), logs

    @torch.no_grad()
    def evaluate(self, logits: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The compensated prediction of raw student ``logits`` (returned on the CPU) and its
        metrics: the prior ratio it applies and the attention's scale."""
        adjusted, _ = self.kdci.module(logits.to(self.kdci.module.prototypes.device))
        adjusted = adjusted.cpu()
        return adjusted, {"eval/prior_ratio": prior_ratio(logits, adjusted),
                          "kdci/scale": self.kdci.module.scale()}

    def deploy_state(self) -> dict[str, Any]:
        """What ``student.pt`` adds for KDCI: the attention's weights and what rebuilds it, so
        ``kdci_ray.kdci.load_student(path, compensated=True)`` gives the compensated model."""
        return {"kdci": self.kdci.module.state_dict(), "kdci_module": self.kdci.module_spec()}

    def state_dict(self) -> dict[str, Any]:
        """The resumable state (``KDCI.state_dict``)."""
        return self.kdci.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kdci.load_state_dict(state)
