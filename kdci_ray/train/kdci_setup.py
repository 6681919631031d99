"""The run's KDCI object, built from the config (``build_kdci``), and what it needs from the train
layer: the other model of ``kdci.source: model`` and the dictionary store.

Dictionary sources (KDCI, Wang et al., CVPR 2024, Table 5): ``teacher`` (default) clusters the
teacher's logits; ``model`` clusters another pre-trained model's logits, mapped into the student's
logit space by a learned linear map (``KDCIAttention.map``); ``random`` uses random prototypes.
The other model is ``kdci.source_arch`` loaded from ``kdci.source_checkpoint``, or, when that is
empty, the cached embedded model of that architecture (trained like the teacher, with seed
``teacher.seed + 1`` so it is a different model even for the teacher's architecture, and cached
and checked like the teacher: ``kdci_ray.train.teacher``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from kdci_ray.cache import cache_dir
from kdci_ray.data import LabeledData
from kdci_ray.kdci import KDCI, DictionaryStore
from kdci_ray.methods import SubstitutionData
from kdci_ray.train.runtime import Runtime
from kdci_ray.train.teacher import check_finite, ensure_teacher, load_teacher, teacher_path

if TYPE_CHECKING:
    from kdci_ray.experiments.dfkd import ExperimentConfig


def build_kdci(cfg: ExperimentConfig, substitution: SubstitutionData, data: LabeledData,
               rt: Runtime) -> KDCI | None:
    """The run's KDCI (None without ``kdci.enabled``; the only place that branches on it): the
    ``kdci`` section (K resolved), the trial's seed, the KD batch as its scoring batch, the
    method's description of its substitution data (``SubstitutionData``: a fixed pool is
    summarised once), the data's classes and the runtime (device, DDP wrap); with
    ``kdci.source: model`` the other model is loaded here, with ``kdci.cache`` the store."""
    if not cfg.kdci.enabled:
        return None
    kc = cfg.kdci
    source_model = load_source_model(cfg, data, rt.device) if kc.source == "model" else None
    return KDCI(kc, data.num_classes, rt.device, seed=cfg.seed, score_batch=cfg.train.batch_size,
                fixed_pool=substitution.fixed, wrap=rt.wrap, source_model=source_model,
                store=dictionary_store() if kc.cache else None, dictionary_seed=cfg.pool.seed)


def source_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config whose ``teacher`` section describes the dictionary's other model."""
    other = copy.deepcopy(cfg)
    other.teacher.arch = cfg.kdci.source_arch
    other.teacher.checkpoint = cfg.kdci.source_checkpoint
    other.teacher.seed = cfg.teacher.seed + 1
    return other


def load_source_model(cfg: ExperimentConfig, data: LabeledData, device: torch.device,
                      log=print) -> nn.Module:
    """The frozen other model of ``kdci.source: model`` (trained and cached if embedded; a cached
    one trained with other settings or below ``teacher.min_acc`` is retrained; NaN refused)."""
    other = source_config(cfg)
    if not other.teacher.checkpoint:
        ensure_teacher(other, log, role="KDCI source model")
    model = load_teacher(other, data, device)
    check_finite(model, data, teacher_path(other), role="KDCI source model")
    return model


def dictionary_store() -> DictionaryStore:
    """The build-once dictionaries shared by trials: ``$KDCI_RAY_CACHE/dictionaries``."""
    return DictionaryStore(cache_dir() / "dictionaries")
