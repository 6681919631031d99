"""The data-free distillation experiment (``kind: dfkd``, the default): its config schema.

``ExperimentConfig`` and its sections (``config``), the dotted keys with a section per method
(``keys.DFKD_SCHEMA``), value checks (``validate``), one run's resolution and save (``resolve``).
The kind itself (its trial and plan checks) is ``kind.DFKD``; the engine adds the Ray side.
"""

from __future__ import annotations

from kdci_ray.experiments.dfkd.config import (
    CHOICES,
    SECTIONS,
    SMOKE,
    TOP_LEVEL,
    DataConfig,
    ExperimentConfig,
    KDCIConfig,
    PoolConfig,
    RunConfig,
    ShiftConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
)
from kdci_ray.experiments.dfkd.keys import (
    DFKD_SCHEMA,
    apply,
    check_keys,
    flatten,
    to_flat,
    unknown_key_error,
    valid_keys,
)
from kdci_ray.experiments.dfkd.renamed import RENAMED
from kdci_ray.experiments.dfkd.resolve import parse_overrides, resolve, save_resolved
from kdci_ray.experiments.dfkd.validate import (
    clusters_with_cuml,
    resolved_k,
    resolved_trainer,
    validate,
)

__all__ = [
    "CHOICES", "DFKD_SCHEMA", "RENAMED", "SECTIONS", "SMOKE", "TOP_LEVEL", "DataConfig",
    "ExperimentConfig", "KDCIConfig", "PoolConfig", "RunConfig", "ShiftConfig", "StudentConfig",
    "TeacherConfig", "TrainConfig", "apply", "check_keys", "clusters_with_cuml", "flatten",
    "parse_overrides", "resolve", "resolved_k", "resolved_trainer", "save_resolved", "to_flat",
    "unknown_key_error", "valid_keys", "validate",
]
