"""The KDCI plug-in the distillation loop applies to any method.

It owns the attention module and the dictionary life cycle: ``refresh`` scores substitution images
with the teacher and rebuilds the dictionary (under DDP: features gathered from every rank, built on
rank 0, broadcast, so every rank's attention sees the same prototypes); ``compensate`` returns the
adjusted logits for the KD loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdci_ray.kdci.ablations import apply_ablations, random_dictionary
from kdci_ray.kdci.artifact import DictionarySpec, DictionaryStore
from kdci_ray.kdci.dictionary import ConfounderDictionary, build_dictionary
from kdci_ray.kdci.intervention import BackdoorAdjustment
from kdci_ray.models.fingerprint import state_fingerprint


@dataclass
class KDCISettings:
    k: int
    pca_dim: int = 0
    hidden: int = 256
    backend: str = "sklearn"
    algorithm: str = "auto"
    n_init: int = 1
    seed: int = 0  # the trial's seed: per-refresh clustering seeds and the random ablations
    source: str = "teacher"  # teacher | model | random (which logits / dictionary)
    random_lambda: bool = False
    random_z: bool = False
    uniform_p: bool = False  # P = 1/K (not Table 4's w/o P(z): that is without_p)
    without_p: bool = False  # P = 1 (Table 4's "w/o P(z)": P removed from Eq. 4)
    fusion: str = "softmax"  # softmax | expectation | scaled | log_prior (intervention.py)
    projection: bool = False
    space: str = "logits"  # logits | log_probs: the feature space of the prototypes
    tau: float = 1.0  # log_prior fusion: the adjustment is tau * centred log(pi + 1e-3)
    # per-round refreshes: "observed" clusters the teacher logits the loop's KD steps computed
    # since the last refresh (free; the first refresh, before any KD step, scores); "source"
    # scores the method's substitution batch with the model at every refresh
    features: str = "observed"
    # images per teacher pass when a refresh scores images: no larger than the KD batch, so a
    # refresh never holds more activations than a KD step (peak memory unchanged by KDCI)
    score_batch: int = 256

    @classmethod
    def from_config(cls, section: Any, *, seed: int, score_batch: int) -> KDCISettings:
        """The settings of a ``kdci`` config section (``KDCIConfig``): every field of it these
        settings have, by name, plus the run's ``seed`` and ``score_batch`` (the KD batch). Its
        ``k`` must be resolved already (``kdci_ray.config.resolve`` turns 0 into the method's
        default)."""
        own = {f.name for f in fields(cls)} - {"seed", "score_batch"}
        settings = cls(**{name: getattr(section, name) for name in own}, seed=seed,
                       score_batch=score_batch)
        if settings.k < 1:
            raise ValueError(f"KDCI dictionary size k={settings.k}: kdci.k = 0 (the method's "
                             f"default) must be resolved first (kdci_ray.config.resolve)")
        return settings


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    return torch.cat([teacher(images[i:i + batch_size]).logits
                      for i in range(0, len(images), batch_size)])


def _gather(x: Tensor) -> Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)]))
    if len({int(s) for s in sizes}) != 1:
        raise RuntimeError(
            "KDCI refresh needs the same number of substitution images on every rank"
        )
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class KDCI:
    """The plug-in: attention module, dictionary life cycle, optional artifact store.

    ``source_model`` (source ``model``) is the other pre-trained model whose logits are clustered
    (``source_dim`` of them); otherwise the teacher passed to ``refresh`` scores the images.
    With a ``store``, a refresh given a ``data_key`` (build-once dictionaries) loads the saved
    dictionary of the same spec or builds and saves it; those are clustered with seed 0 so that
    every trial of a sweep shares one. The Table 4 ablations are applied after loading, with the
    trial's seed.
    """

    def __init__(self, settings: KDCISettings, num_classes: int, device: torch.device,
                 source_model: nn.Module | None = None, source_dim: int | None = None,
                 store: DictionaryStore | None = None) -> None:
        if settings.source == "model" and source_model is None:
            raise ValueError("KDCI source 'model' needs the other model (source_model)")
        self.settings = settings
        self.num_classes = int(num_classes)
        self._source_dim = source_dim if settings.source == "model" else None
        self.source_model = source_model
        self.store = store
        self.module = BackdoorAdjustment(
            num_classes, settings.k, settings.hidden,
            source_dim=source_dim if settings.source == "model" else None,
            random_lambda=settings.random_lambda, seed=settings.seed, fusion=settings.fusion,
            projection=settings.projection, tau=settings.tau).to(device)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.dictionary: ConfounderDictionary | None = None
        self.refreshes = 0
        self._model_key: str | None = None
        self._observed: list[Tensor] = []

    def module_spec(self) -> dict[str, Any]:
        """The arguments that rebuild the attention module (``kdci_ray.kdci.deploy``)."""
        s = self.settings
        return {"num_classes": self.num_classes, "k": s.k, "hidden": s.hidden,
                "source_dim": self._source_dim, "random_lambda": s.random_lambda,
                "seed": s.seed, "fusion": s.fusion, "projection": s.projection, "tau": s.tau}

    def observe(self, teacher_logits: Tensor) -> None:
        """Keep a KD step's teacher logits for the next refresh (``features: observed`` with the
        teacher as source; otherwise a no-op)."""
        if self.settings.features == "observed" and self.settings.source != "model":
            self._observed.append(teacher_logits.detach().float().cpu())

    def spec(self, model: nn.Module, data_key: str) -> DictionarySpec:
        """The artifact spec of a build-once dictionary of ``data_key`` scored by ``model``."""
        if self._model_key is None:
            self._model_key = state_fingerprint(model)
        s = self.settings
        return DictionarySpec(data_key=data_key, model_key=self._model_key, source=s.source,
                              k=s.k, pca_dim=s.pca_dim, algorithm=s.algorithm,
                              n_init=s.n_init, seed=0, space=s.space)

    def _dictionary(self, model: nn.Module, feats: Tensor,
                    data_key: str | None) -> tuple[ConfounderDictionary, bool]:
        s = self.settings
        if s.source == "random":
            return random_dictionary(feats, s.k, self.generator), False
        spec = self.spec(model, data_key) if data_key is not None and self.store else None
        if spec is not None and self.store is not None:
            stored = self.store.load(spec)
            if stored is not None:
                return stored, True
        seed = 0 if data_key is not None else s.seed + self.refreshes
        built = build_dictionary(feats, s.k, s.pca_dim, seed, s.n_init, s.backend, s.algorithm)
        if spec is not None and self.store is not None:
            self.store.save(spec, built)
        return built, False

    def refresh(self, teacher: nn.Module, images: Tensor | None, data_key: str | None = None,
                logits: Tensor | None = None) -> dict[str, float]:
        """Score ``images`` (this rank's share), rebuild the dictionary, load it into the module.
        ``data_key`` identifies the images of a build-once dictionary (enables the store);
        ``logits``: the source model's logits on those images, already computed elsewhere (the
        dictionary job's Ray workers), used instead of scoring ``images``."""
        start = time.perf_counter()
        model = self.source_model if self.source_model is not None else teacher
        if logits is not None:
            local = logits.float().cpu()
        elif self._observed and data_key is None:  # reuse what the KD steps already computed
            local = torch.cat(self._observed)
        elif images is not None:
            local = teacher_logits(model, images, self.settings.score_batch).float().cpu()
        else:
            raise ValueError("KDCI.refresh needs images to score or precomputed logits")
        self._observed = []
        if self.settings.space == "log_probs":
            local = torch.log_softmax(local, dim=1)
        feats = _gather(local)
        distributed = dist.is_available() and dist.is_initialized()
        cached = False
        if not distributed or dist.get_rank() == 0:
            built, cached = self._dictionary(model, feats, data_key)
            self.dictionary = apply_ablations(built, feats, random_z=self.settings.random_z,
                                              uniform_p=self.settings.uniform_p,
                                              without_p=self.settings.without_p,
                                              generator=self.generator)
            protos, props = self.dictionary.prototypes, self.dictionary.proportions
        else:
            protos = torch.empty_like(self.module.prototypes.cpu())
            props = torch.empty_like(self.module.proportions.cpu())
        if distributed:
            dist.broadcast(protos, src=0)
            dist.broadcast(props, src=0)
        device = self.module.prototypes.device
        self.module.set_dictionary(protos.to(device), props.to(device))
        self.refreshes += 1
        metrics = {"kdci/refresh_s": time.perf_counter() - start,
                   "kdci/scale": self.module.scale(),
                   "kdci/prop_max": float(props.max()), "kdci/samples": float(len(feats)),
                   "kdci/cached": float(cached)}
        d = self.dictionary
        if d is not None:  # what ran, recorded as numbers (rank 0 knows; others report 0)
            metrics["kdci/backend_cuml"] = float(d.backend == "cuml")
            metrics["kdci/minibatch"] = float(d.algorithm == "minibatch")
            if math.isfinite(d.inertia):
                metrics["kdci/inertia"] = d.inertia
        return metrics

    def compensate(self, logits: Tensor, module: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Adjusted logits and attention; ``module`` is the (possibly DDP-wrapped) attention."""
        if self.refreshes == 0:
            raise RuntimeError("KDCI.compensate() before the first dictionary refresh")
        return (module or self.module)(logits)

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
        observed = state["observed"]
        self._observed = [] if observed is None else [observed]


def prior_ratio(raw: Tensor, adjusted: Tensor) -> float:
    """Mean over samples of ``||prior|| / ||s||`` (how much the adjustment moves the logits)."""
    prior = (adjusted - raw).detach().float()
    return float((prior.norm(dim=1) / raw.detach().float().norm(dim=1).clamp_min(1e-12)).mean())


def attention_entropy(lam: Tensor) -> float:
    return float(-(lam * torch.log(lam + 1e-12)).sum(1).mean())
