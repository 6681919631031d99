"""Builds the KDCI plug-in of a run from its config: settings, dictionary source, artifact store.

Dictionary sources (KDCI, Wang et al., CVPR 2024, Table 5): ``teacher`` (default) clusters the
teacher's logits; ``model`` clusters another pre-trained model's logits, mapped into the student's
logit space by a learned linear map (``BackdoorAdjustment.map``); ``random`` uses random
prototypes. The other model is ``kdci.source_arch`` loaded from ``kdci.source_checkpoint``, or,
when that is empty, the cached embedded model of that architecture (trained like the teacher,
with seed ``teacher.seed + 1`` so it is a different model even for the teacher's architecture,
and cached and checked like the teacher: ``kdci_ray.train.teacher``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdci_ray.config import ExperimentConfig
from kdci_ray.data import LabeledData
from kdci_ray.kdci import KDCI, DictionaryStore, KDCISettings
from kdci_ray.train.teacher import (
    cache_dir,
    check_finite,
    ensure_teacher,
    load_teacher,
    teacher_path,
)


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
    return DictionaryStore(cache_dir() / "dictionaries")


def build_kdci(cfg: ExperimentConfig, default_k: int, data: LabeledData,
               device: torch.device) -> KDCI:
    """The plug-in for ``cfg`` (``kdci.enabled`` is the caller's check)."""
    kc = cfg.kdci
    settings = KDCISettings(k=kc.k or default_k, pca_dim=kc.pca_dim, hidden=kc.hidden,
                            backend=kc.backend, algorithm=kc.algorithm, n_init=kc.n_init,
                            seed=cfg.seed, source=kc.source, random_lambda=kc.random_lambda,
                            random_z=kc.random_z, uniform_p=kc.uniform_p, features=kc.features,
                            score_batch=cfg.train.batch_size, without_p=kc.without_p,
                            fusion=kc.fusion, projection=kc.projection, space=kc.space,
                            tau=kc.tau)
    source_model = None
    if kc.source == "model":
        source_model = load_source_model(cfg, data, device)
    return KDCI(settings, data.num_classes, device, source_model=source_model,
                source_dim=data.num_classes if source_model is not None else None,
                store=dictionary_store() if kc.cache else None)
