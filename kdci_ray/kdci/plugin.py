"""The KDCI plug-in the distillation loop applies to any method.

It owns the attention module and the dictionary life cycle: ``refresh`` scores substitution images
with the teacher and rebuilds the dictionary (under DDP: features gathered from every rank, built on
rank 0, broadcast, so every rank's attention sees the same prototypes); ``compensate`` returns the
adjusted logits for the KD loss.

Collectives run only with two or more ranks (Ray Train creates a process group even for one
worker) and take tensors on a device their backend accepts: the module's device when the backend
supports it (NCCL: the GPU), else the CPU (``collective_device``). A KD step's calls
(``observe``, ``compensate``) never read a value back to the host.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdci_ray.kdci.ablations import apply_ablations, random_dictionary
from kdci_ray.kdci.artifact import DictionarySpec, DictionaryStore
from kdci_ray.kdci.dictionary import (
    ConfounderDictionary,
    build_dictionary,
    dictionary_features,
)
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


class Images(Protocol):
    """What a refresh scores: a tensor, or anything sized whose slices are the model's input
    batches (a fixed pool's share, normalised a slice at a time)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> Tensor: ...


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: Images, batch_size: int = 256) -> Tensor:
    return torch.cat([teacher(images[i:i + batch_size]).logits
                      for i in range(0, len(images), batch_size)])


def world_size() -> int:
    """Ranks of the default process group (1 without one): collectives only when it is > 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_rank() -> bool:
    return world_size() == 1 or dist.get_rank() == 0


def collective_device(preferred: torch.device) -> torch.device:
    """Where tensors handed to the default group's collectives must live: ``preferred`` (the
    trial's device) when its backend takes that device type, else the CPU when it takes that
    (gloo with a CUDA model); NCCL takes only CUDA tensors."""
    backend = str(dist.get_backend())
    takes = dist.Backend.backend_capability.get(backend.lower(), ["cpu"])
    if preferred.type in takes:
        return preferred
    if "cpu" in takes:
        return torch.device("cpu")
    raise RuntimeError(f"the process group's backend {backend!r} takes only {takes} tensors, "
                       f"but this rank computes on {preferred}")


def _gather(x: Tensor, device: torch.device) -> Tensor:
    """Every rank's ``x``, concatenated in rank order, on the CPU. The ranks' shares are equal
    by construction (the same KD steps and batches on every rank; a fixed pool's equal shares,
    ``Method.substitution_size``)."""
    if world_size() == 1:
        return x.cpu()
    x = x.to(collective_device(device)).contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts).cpu()


def _broadcast(tensors: list[Tensor], device: torch.device) -> list[Tensor]:
    """Rank 0's ``tensors`` on every rank (returned on ``device``)."""
    if world_size() == 1:
        return [t.to(device) for t in tensors]
    where = collective_device(device)
    out = [t.to(where).contiguous() for t in tensors]
    for t in out:
        dist.broadcast(t, src=0)
    return [t.to(device) for t in out]


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
            self._observed.append(teacher_logits.detach().float())  # stays on the device

    def spec(self, model: nn.Module, data_key: str) -> DictionarySpec:
        """The artifact spec of a build-once dictionary of ``data_key`` scored by ``model``."""
        if self._model_key is None:
            self._model_key = state_fingerprint(model)
        s = self.settings
        return DictionarySpec(data_key=data_key, model_key=self._model_key, source=s.source,
                              k=s.k, pca_dim=s.pca_dim, algorithm=s.algorithm,
                              n_init=s.n_init, seed=0, space=s.space)

    def _lookup(self, model: nn.Module,
                data_key: str | None) -> tuple[ConfounderDictionary | None, bool]:
        """Rank 0's stored dictionary of a build-once ``data_key`` and whether there is one,
        agreed by every rank (so all skip scoring, or all score): ``(None, False)`` when the
        dictionary is not build-once or none is stored."""
        if data_key is None or self.store is None or self.settings.source == "random":
            return None, False
        stored = self.store.load(self.spec(model, data_key)) if is_main_rank() else None
        found = stored is not None
        if world_size() > 1:
            (flag,) = _broadcast([torch.tensor([float(found)])], self.module.prototypes.device)
            found = bool(flag.cpu())
        return stored, found

    def _build(self, model: nn.Module, feats: Tensor, data_key: str | None) -> ConfounderDictionary:
        s = self.settings
        if s.source == "random":
            return random_dictionary(feats, s.k, self.generator)
        seed = 0 if data_key is not None else s.seed + self.refreshes
        built = build_dictionary(feats, s.k, s.pca_dim, seed, s.n_init, s.backend, s.algorithm)
        if data_key is not None and self.store is not None:
            self.store.save(self.spec(model, data_key), built)
        return built

    def _features(self, model: nn.Module, images: Images | Callable[[], Images] | None,
                  data_key: str | None, logits: Tensor | None) -> Tensor:
        """This rank's features of the refresh (in the dictionary's space)."""
        if logits is not None:
            local = logits
        elif self._observed and data_key is None:  # reuse what the KD steps already computed
            local = torch.cat(self._observed)
        elif images is not None:
            batch = images() if callable(images) else images
            local = teacher_logits(model, batch, self.settings.score_batch)
        else:
            raise ValueError("KDCI.refresh needs images to score or precomputed logits")
        return dictionary_features(local, self.settings.space)

    def refresh(self, teacher: nn.Module, images: Images | Callable[[], Images] | None,
                data_key: str | None = None, logits: Tensor | None = None) -> dict[str, float]:
        """Rebuild the dictionary from this rank's substitution ``images`` (or a zero-argument
        callable giving them, called only when they are scored) and load it into the module.
        ``data_key`` identifies the images of a build-once dictionary: with a store, a stored
        one is loaded before anything is scored (unless ``random_z`` needs the features), else
        the built one is stored; ``logits``: the source model's logits on those images,
        computed elsewhere (the dictionary job's Ray workers), used instead of scoring."""
        start = time.perf_counter()
        model = self.source_model if self.source_model is not None else teacher
        device = self.module.prototypes.device
        stored, found = self._lookup(model, data_key)
        feats = None
        if not found or self.settings.random_z:
            feats = _gather(self._features(model, images, data_key, logits), device)
        self._observed = []
        if is_main_rank():
            built = stored if found else self._build(model, feats, data_key)
            self.dictionary = apply_ablations(built, feats, random_z=self.settings.random_z,
                                              uniform_p=self.settings.uniform_p,
                                              without_p=self.settings.without_p,
                                              generator=self.generator)
            protos, props = self.dictionary.prototypes, self.dictionary.proportions
        else:
            protos = torch.empty_like(self.module.prototypes, device="cpu")
            props = torch.empty_like(self.module.proportions, device="cpu")
        protos, props = _broadcast([protos.float(), props.float()], device)
        self.module.set_dictionary(protos, props)
        self.refreshes += 1
        props_cpu = props.cpu()
        d = self.dictionary
        samples = len(feats) if feats is not None else (d.num_samples if d is not None else 0)
        metrics = {"kdci/refresh_s": time.perf_counter() - start,
                   "kdci/scale": self.module.scale(),
                   "kdci/prop_max": float(props_cpu.max()), "kdci/samples": float(samples),
                   "kdci/cached": float(found)}
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
        observed = state["observed"]  # a checkpoint is read onto the CPU: back to the device
        self._observed = [] if observed is None else \
            [observed.to(self.module.prototypes.device)]


def prior_ratio_tensor(raw: Tensor, adjusted: Tensor) -> Tensor:
    """Mean over samples of ``||prior|| / ||s||`` (how much the adjustment moves the logits), as
    a 0-d tensor on their device (a KD step reads nothing back)."""
    prior = (adjusted - raw).detach().float()
    return (prior.norm(dim=1) / raw.detach().float().norm(dim=1).clamp_min(1e-12)).mean()


def attention_entropy_tensor(lam: Tensor) -> Tensor:
    """Mean entropy of the attention weights, as a 0-d tensor on their device."""
    lam = lam.detach()
    return -(lam * torch.log(lam + 1e-12)).sum(1).mean()


def prior_ratio(raw: Tensor, adjusted: Tensor) -> float:
    return float(prior_ratio_tensor(raw, adjusted))


def attention_entropy(lam: Tensor) -> float:
    return float(attention_entropy_tensor(lam))
