"""KDCI as the distillation loop sees it: one object, built once per run, called a few times.

The loop (``kdci_ray.train.loop``) builds it when ``kdci.enabled``
(``kdci_ray.train.kdci_setup.build_kdci``) and otherwise never mentions KDCI's life cycle::

    kdci = KDCI(cfg.kdci, num_classes, device, seed=cfg.seed, score_batch=cfg.train.batch_size,
                fixed_pool=method_cls.substitution.fixed, wrap=runtime.wrap, ...)
    opt = SGD([student group, kdci.param_group(lr)], ...)
    for round ...:
        method.synthesize(round)
        logs.update(kdci.start_round(round, teacher, method))  # dictionary refresh when due
        for step ...:
            s_logits, step_logs = kdci.adjust(s_logits, t_logits)  # before the KD loss
        compensated, eval_logs = kdci.evaluate(test_logits)  # beside the raw prediction
    checkpoint: kdci.state_dict() (resume), kdci.deploy_state() (``student.pt``)

What it owns: its settings (the ``kdci`` config section, ``KDCIConfig``, with K already resolved
by ``kdci_ray.config.resolve``: ``kdci.k = 0`` is the method's ``substitution.default_clusters``;
plus the run's seed and scoring batch), the refresh policy (every round for substitution data
generated afresh each round, from the teacher logits its KD steps observed; once, in the first
round, for a fixed pool, keyed by the pool's content so the dictionary store shares it across
trials), the dictionary's life cycle (scored, clustered, ablated, stored), the DDP gathering and
broadcast (features from every rank, built on rank 0, broadcast, so every rank's attention sees
the same prototypes), the attention module (``KDCIAttention``) with its DDP wrapping and optimiser
parameter group, the per-step metrics (attention entropy, prior ratio) and what the checkpoint and
the deployable student hold. A KD step's call (``adjust``) never reads a value back to the host.
It knows the method only through the neutral description of its substitution data (a fixed pool
or not) and two calls (``substitution_batch()``, ``substitution_key()``); it never imports
``kdci_ray.methods``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from kdci_ray.kdci.ablations import apply_ablations, random_dictionary
from kdci_ray.kdci.artifact import DictionarySpec, DictionaryStore
from kdci_ray.kdci.attention import (
    KDCIAttention,
    attention_entropy_tensor,
    prior_ratio,
    prior_ratio_tensor,
)
from kdci_ray.kdci.collectives import broadcast_from_main, gather_to_cpu, is_main_rank, world_size
from kdci_ray.kdci.dictionary import (
    ConfounderDictionary,
    Images,
    build_dictionary,
    dictionary_features,
    teacher_logits,
)
from kdci_ray.kdci.label_shift import log_prior, teacher_reference
from kdci_ray.kdci.settings import KDCIConfig
from kdci_ray.models.fingerprint import state_fingerprint


class SubstitutionSource(Protocol):
    """What KDCI asks of a method at a refresh (``kdci_ray.methods.base.Method``)."""

    def substitution_batch(self) -> Images: ...

    def substitution_key(self) -> str | None: ...


def _unwrapped(module: nn.Module) -> nn.Module:
    return module


class KDCI:
    """KDCI's whole life cycle in one run (see the module docstring).

    ``config``: the ``kdci`` section, K resolved (copied; ``enabled`` is the caller's check);
    ``seed``: the trial's (per-refresh clustering seeds, the random ablations); ``score_batch``:
    images per model pass when a refresh scores images (the KD batch: a refresh never holds more
    activations than a KD step); ``fixed_pool``: the method samples a pool selected once (the
    dictionary is built once, in round 0) rather than data generated every round (rebuilt every
    round); ``wrap``: makes the attention module data-parallel (the runtime's; identity on one
    rank); ``source_model``: the other pre-trained model of ``kdci.source: model``, whose logits
    are clustered instead of the teacher's; ``store``: where build-once dictionaries are saved
    and shared (None: never stored); those are clustered with ``dictionary_seed``, not the
    trial's seed, so that every trial of a sweep on one pool shares one (the pool's draw,
    ``pool.seed``: 0 unless every seed draws its own pool), the Table 4 ablations applied after
    loading, with the trial's seed.
    """

    def __init__(self, config: KDCIConfig, num_classes: int, device: torch.device, *,
                 seed: int = 0, score_batch: int = 256, fixed_pool: bool = False,
                 wrap: Callable[[nn.Module], nn.Module] = _unwrapped,
                 source_model: nn.Module | None = None,
                 store: DictionaryStore | None = None, dictionary_seed: int = 0) -> None:
        if config.k < 1:
            raise ValueError(f"KDCI dictionary size k={config.k}: kdci.k = 0 (the method's "
                             f"default) must be resolved first (kdci_ray.config.resolve)")
        if config.source == "model" and source_model is None:
            raise ValueError("KDCI source 'model' needs the other model (source_model)")
        self.config = replace(config)
        self.seed, self.score_batch = int(seed), int(score_batch)
        self.dictionary_seed = int(dictionary_seed)
        self.num_classes = int(num_classes)
        self.fixed_pool = bool(fixed_pool)
        self.source_model = source_model
        self.store = store
        self.module = KDCIAttention(**self.module_spec()).to(device)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.dictionary: ConfounderDictionary | None = None
        self.refreshes = 0
        self._model_key: str | None = None
        self._observed: list[Tensor] = []
        self._train_module = wrap(self.module)  # the (possibly DDP-wrapped) module steps call

    @property
    def k(self) -> int:
        """The dictionary size."""
        return self.config.k

    def module_spec(self) -> dict[str, Any]:
        """The arguments that build the attention module (``kdci_ray.kdci.deploy`` rebuilds it
        from them)."""
        c = self.config
        return {"num_classes": self.num_classes, "k": c.k, "hidden": c.hidden,
                "source_dim": self.num_classes if c.source == "model" else None,
                "random_lambda": c.random_lambda, "seed": self.seed, "fusion": c.fusion,
                "projection": c.projection, "tau": c.tau}

    def param_group(self, lr: float) -> dict[str, Any]:
        """The attention's optimiser parameter group, ``lr`` being the student's."""
        return {"params": self.module.parameters(), "lr": lr * float(self.config.lr_scale)}

    # ------------------------------------------------------------------ the loop's calls

    def refreshes_in(self, round_idx: int) -> bool:
        """Whether the dictionary is rebuilt after the synthesis of ``round_idx``: every round
        for generated data, only the first for a fixed pool (a resumed run restores it)."""
        return not self.fixed_pool or round_idx == 0

    def start_round(self, round_idx: int, teacher: nn.Module,
                    method: SubstitutionSource) -> dict[str, float]:
        """After the method's synthesis of ``round_idx``: refresh the dictionary when due, from
        the method's substitution batch (a fixed pool's is keyed by its content, so a stored
        dictionary is loaded, before the batch is even asked for, or the built one stored).
        The refresh's metrics; ``{}`` when none."""
        if not self.refreshes_in(round_idx):
            return {}
        data_key = method.substitution_key() if self.fixed_pool else None
        return self.refresh(teacher, method.substitution_batch, data_key=data_key)

    def adjust(self, student_logits: Tensor,
               teacher_logits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One KD step, before its loss: keep the teacher's logits for the next refresh
        (generated data only: a fixed pool's dictionary is never rebuilt), compensate the
        student's logits. Returns the logits the KD loss sees (adjusted with
        ``kdci.train_through``, else the raw ones) and this step's metrics as 0-d tensors on the
        device (summed there and averaged by the loop at its next evaluation: nothing is read
        back per step)."""
        if not self.fixed_pool:
            self.observe(teacher_logits)
        if self.config.fusion == "log_prior":
            self.module.count(teacher_logits)
        adjusted, lam = self.compensate(student_logits)
        logs = {"kdci/attn_entropy": attention_entropy_tensor(lam),
                "kdci/prior_ratio": prior_ratio_tensor(student_logits, adjusted)}
        return (adjusted if self.config.train_through else student_logits), logs

    @property
    def needs_reference(self) -> bool:
        """Whether an evaluation must first call :meth:`fit_reference` (``teacher_ref``)."""
        return self.config.fusion in ("teacher_ref", "teacher_ref_scalar")

    @torch.no_grad()
    def fit_reference(self, student_logits: Tensor, teacher_logits: Tensor,
                      class_counts: Tensor, ridge: float) -> dict[str, float]:
        """``teacher_ref``: fit the class bias from both models' logits on held-out
        substitution inputs (the scalar variant along the realised log prior of
        ``class_counts``) and load it; its metrics. Under DDP every rank fits on its own
        held-out draw; ``student.pt`` (rank 0's) holds rank 0's bias."""
        direction = None
        if self.config.fusion == "teacher_ref_scalar":
            direction = log_prior(class_counts.cpu())
        bias, tau = teacher_reference(student_logits.cpu(), teacher_logits.cpu(), direction,
                                      ridge=ridge)
        self.module.bias.copy_(bias.to(self.module.bias))
        return {"shift/bias_norm": float(bias.norm()),
                **({"shift/tau": tau} if tau is not None else {})}

    @torch.no_grad()
    def evaluate(self, logits: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The compensated prediction of raw student ``logits`` (returned on the CPU) and its
        metrics: the prior ratio it applies and the attention's scale."""
        adjusted, _ = self.module(logits.to(self.module.prototypes.device))
        adjusted = adjusted.cpu()
        return adjusted, {"eval/prior_ratio": prior_ratio(logits, adjusted),
                          "kdci/scale": self.module.scale()}

    def deploy_state(self) -> dict[str, Any]:
        """What ``student.pt`` adds for KDCI: the attention's weights and what rebuilds it, so
        ``kdci_ray.kdci.load_student(path, compensated=True)`` gives the compensated model."""
        return {"kdci": self.module.state_dict(), "kdci_module": self.module_spec()}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly: attention weights and the loaded
        dictionary (module buffers), the ablation generators, the refresh count (it seeds the
        next k-means) and the teacher logits observed since the last refresh."""
        return {"module": self.module.state_dict(), "generator": self.generator.get_state(),
                "random_lambda": self.module.random_state(),
                "refreshes": self.refreshes,
                "observed": torch.cat(self._observed) if self._observed else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.generator.set_state(state["generator"])
        self.module.set_random_state(state["random_lambda"])
        self.refreshes = int(state["refreshes"])
        observed = state["observed"]  # a checkpoint is read onto the CPU: back to the device
        self._observed = [] if observed is None else \
            [observed.to(self.module.prototypes.device)]

    # ------------------------------------------------------------------ the parts of a step

    def observe(self, teacher_logits: Tensor) -> None:
        """Keep a KD step's teacher logits for the next refresh (``features: observed`` with the
        teacher as source; otherwise a no-op)."""
        if self.config.features == "observed" and self.config.source != "model":
            self._observed.append(teacher_logits.detach().float())  # stays on the device

    def compensate(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Adjusted logits and attention weights, through the (possibly DDP-wrapped) module."""
        if self.refreshes == 0:
            raise RuntimeError("KDCI.compensate() before the first dictionary refresh")
        return self._train_module(logits)

    # ------------------------------------------------------------------ the dictionary

    def spec(self, model: nn.Module, data_key: str) -> DictionarySpec:
        """The artifact spec of a build-once dictionary of ``data_key`` scored by ``model``."""
        if self._model_key is None:
            self._model_key = state_fingerprint(model)
        c = self.config
        return DictionarySpec(data_key=data_key, model_key=self._model_key, source=c.source,
                              k=c.k, pca_dim=c.pca_dim, algorithm=c.algorithm,
                              n_init=c.n_init, seed=self.dictionary_seed, space=c.space)

    def refresh(self, teacher: nn.Module, images: Images | Callable[[], Images] | None,
                data_key: str | None = None, logits: Tensor | None = None) -> dict[str, float]:
        """Rebuild the dictionary from this rank's substitution ``images`` (or a zero-argument
        callable giving them, called only when they are scored) and load it into the module.
        ``data_key`` identifies the images of a build-once dictionary: with a store, a stored
        one is loaded before anything is scored (unless ``random_z`` needs the features), else
        the built one is stored; ``logits``: the source model's logits on those images,
        computed elsewhere, used instead of scoring. Under DDP every rank calls it: features
        gathered, built on rank 0, broadcast."""
        start = time.perf_counter()
        model = self.source_model if self.source_model is not None else teacher
        device = self.module.prototypes.device
        c = self.config
        stored, found = self._lookup(model, data_key)
        feats = None
        if not found or c.random_z:
            feats = gather_to_cpu(self._features(model, images, data_key, logits), device)
        self._observed = []
        if is_main_rank():
            built = stored if found else self._build(model, feats, data_key)
            self.dictionary = apply_ablations(built, feats, random_z=c.random_z,
                                              uniform_p=c.uniform_p, without_p=c.without_p,
                                              generator=self.generator)
            protos, props = self.dictionary.prototypes, self.dictionary.proportions
        else:
            protos = torch.empty_like(self.module.prototypes, device="cpu")
            props = torch.empty_like(self.module.proportions, device="cpu")
        protos, props = broadcast_from_main([protos.float(), props.float()], device)
        self.module.set_dictionary(protos, props)
        self.refreshes += 1
        samples = len(feats) if feats is not None else \
            (self.dictionary.num_samples if self.dictionary is not None else 0)
        return self._refresh_metrics(time.perf_counter() - start, props, samples, found)

    def _refresh_metrics(self, seconds: float, props: Tensor, samples: int,
                         cached: bool) -> dict[str, float]:
        metrics = {"kdci/refresh_s": seconds, "kdci/scale": self.module.scale(),
                   "kdci/prop_max": float(props.cpu().max()), "kdci/samples": float(samples),
                   "kdci/cached": float(cached)}
        d = self.dictionary
        if d is not None:  # what ran, recorded as numbers (rank 0 knows; others report 0)
            metrics["kdci/backend_cuml"] = float(d.backend == "cuml")
            metrics["kdci/minibatch"] = float(d.algorithm == "minibatch")
            if math.isfinite(d.inertia):
                metrics["kdci/inertia"] = d.inertia
        return metrics

    def _lookup(self, model: nn.Module,
                data_key: str | None) -> tuple[ConfounderDictionary | None, bool]:
        """Rank 0's stored dictionary of a build-once ``data_key`` and whether there is one,
        agreed by every rank (so all skip scoring, or all score): ``(None, False)`` when the
        dictionary is not build-once or none is stored."""
        if data_key is None or self.store is None or self.config.source == "random":
            return None, False
        stored = self.store.load(self.spec(model, data_key)) if is_main_rank() else None
        found = stored is not None
        if world_size() > 1:
            (flag,) = broadcast_from_main([torch.tensor([float(found)])],
                                          self.module.prototypes.device)
            found = bool(flag.cpu())
        return stored, found

    def _features(self, model: nn.Module, images: Images | Callable[[], Images] | None,
                  data_key: str | None, logits: Tensor | None) -> Tensor:
        """This rank's features of the refresh (in the dictionary's space)."""
        if logits is not None:
            local = logits
        elif self._observed and data_key is None:  # reuse what the KD steps already computed
            local = torch.cat(self._observed)
        elif images is not None:
            batch = images() if callable(images) else images
            local = teacher_logits(model, batch, self.score_batch)
        else:
            raise ValueError("KDCI.refresh needs images to score or precomputed logits")
        return dictionary_features(local, self.config.space)

    def _build(self, model: nn.Module, feats: Tensor, data_key: str | None) -> ConfounderDictionary:
        c = self.config
        if c.source == "random":
            return random_dictionary(feats, c.k, self.generator)
        seed = self.dictionary_seed if data_key is not None else self.seed + self.refreshes
        built = build_dictionary(feats, c.k, c.pca_dim, seed, c.n_init, c.backend, c.algorithm)
        if data_key is not None and self.store is not None:
            self.store.save(self.spec(model, data_key), built)
        return built
