"""The distillation config's dotted keys: ``kdci_ray.config.schema`` over ``ExperimentConfig``,
with one section per method (``dafl.onehot_weight``), held in ``cfg.methods``; a resolved config
shows only its chosen method's section."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kdci_ray.config.schema import ABSENT, Schema, coerce_value, field_type
from kdci_ray.experiments.dfkd.config import SECTIONS, TOP_LEVEL, ExperimentConfig
from kdci_ray.experiments.dfkd.renamed import RENAMED
from kdci_ray.methods import METHODS

__all__ = ["DFKD_SCHEMA", "apply", "check_keys", "coerce_value", "field_type", "flatten",
           "to_flat", "unknown_key_error", "valid_keys"]


class DistillationSchema(Schema):
    """``ExperimentConfig``'s keys: the fixed sections plus a section per method."""

    def extra_sections(self) -> Mapping[str, type]:
        return {name: method.Config for name, method in METHODS.items()}

    def section_object(self, cfg: Any, section: str) -> Any:
        return cfg.methods[section] if section in METHODS else getattr(cfg, section)

    def value(self, cfg: Any, key: str) -> Any:
        head = key.partition(".")[0]
        if head in METHODS and head != cfg.method:
            return ABSENT  # another method's section: never part of this run
        return super().value(cfg, key)

    def to_flat(self, cfg: Any) -> dict[str, Any]:
        """The resolved config as dotted keys (only the chosen method's section)."""
        flat = super().to_flat(cfg)
        for k, v in dataclasses.asdict(cfg.method_config).items():
            flat[f"{cfg.method}.{k}"] = v
        return flat


DFKD_SCHEMA = DistillationSchema(ExperimentConfig, TOP_LEVEL, SECTIONS, renamed=RENAMED)

valid_keys = DFKD_SCHEMA.valid_keys
unknown_key_error = DFKD_SCHEMA.unknown_key_error
flatten = DFKD_SCHEMA.flatten
check_keys = DFKD_SCHEMA.check_keys
apply = DFKD_SCHEMA.apply
to_flat = DFKD_SCHEMA.to_flat
