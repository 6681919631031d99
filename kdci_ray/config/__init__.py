"""Configuration machinery, generic over any experiment kind's root dataclass.

- ``schema``: a kind's dotted keys (``Schema``): flattening (``a.b: v`` or one level of
  nesting), the unknown-key error with a did-you-mean, type-checked assignment, flat dumps;
- ``layers``: one run's config from its layers (defaults < preset < YAML < sampled < command
  line < smoke) and its save as flat YAML;
- ``files``: the one YAML loader (``yaml.safe_load`` semantics, a duplicated key refused) and
  ``key=value`` command-line words;
- ``cases``: the names of the ``cases`` search key, read back from a trial's point.

The kinds' own schemas live with them: the distillation experiment's in
``kdci_ray.experiments.dfkd``, SKDCGN's in ``kdci_ray.cgn.config``. Nothing here imports a
method, a model or torch.
"""

from __future__ import annotations

from kdci_ray.config.files import (
    DuplicateKeyError,
    UniqueKeyLoader,
    not_an_override,
    parse_yaml,
    read_yaml,
    split_overrides,
)
from kdci_ray.config.layers import resolve_layers, save_flat
from kdci_ray.config.schema import ABSENT, Schema, closest_key, coerce_value, field_type
from kdci_ray.errors import ConfigError

__all__ = [
    "ABSENT", "ConfigError", "DuplicateKeyError", "Schema", "UniqueKeyLoader", "closest_key",
    "coerce_value", "field_type", "not_an_override", "parse_yaml", "read_yaml", "resolve_layers",
    "save_flat", "split_overrides",
]
