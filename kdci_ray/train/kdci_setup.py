"""What KDCI needs from the train layer: the other model of ``kdci.source: model`` and the store.

The plug-in itself is built from the config by ``kdci_ray.kdci.hook`` (``KDCIHook.from_config``;
the loop's ``build_kdci_hook`` hands it these two). Dictionary sources (KDCI, Wang et al., CVPR
2024, Table 5): ``teacher`` (default) clusters the teacher's logits; ``model`` clusters another
pre-trained model's logits, mapped into the student's logit space by a learned linear map
(``BackdoorAdjustment.map``); ``random`` uses random prototypes. The other model is
``kdci.source_arch`` loaded from ``kdci.source_checkpoint``, or, when that is empty, the cached
embedded model of that architecture (trained like the teacher, with seed ``teacher.seed + 1`` so it
is a different model even for the teacher's architecture, and cached and checked like the teacher:
``kdci_ray.train.teacher``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdci_ray.cache import cache_dir
from kdci_ray.config import ExperimentConfig
from kdci_ray.data import LabeledData
from kdci_ray.kdci import DictionaryStore
from kdci_ray.train.teacher import check_finite, ensure_teacher, load_teacher, teacher_path


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
