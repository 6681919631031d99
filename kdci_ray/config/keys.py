"""Dotted-key handling: which keys exist, flattening, type-checked assignment, flat dumps."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any

import yaml

from kdci_ray.config.sections import SECTIONS, TOP_LEVEL, ConfigError, ExperimentConfig
from kdci_ray.methods import METHODS


def valid_keys() -> list[str]:
    """Every dotted key a YAML file or override may set (besides ``search``)."""
    keys = list(TOP_LEVEL)
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    for name, method in METHODS.items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(method.Config)]
    return keys


def unknown_key_error(key: str, where: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; run `kdci-ray keys` to list them"
    src = f" in {where}" if where else ""
    return ConfigError(f"unknown config key '{key}'{src}{hint}")


def flatten(mapping: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Accept ``a.b: v`` and one level of nesting ``a: {b: v}``; return dotted keys (a key set
    both ways is an error)."""
    flat: dict[str, Any] = {}
    src = f" in {where}" if where else ""
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be strings, got {key!r}{src}")
        nested = key in SECTIONS or key in METHODS
        items = [(f"{key}.{sub}", v) for sub, v in value.items()] if nested and \
            isinstance(value, dict) else [(key, value)]
        for dotted, v in items:
            if dotted in flat:
                raise ConfigError(f"'{dotted}' is set twice{src} (as a dotted key and nested "
                                  f"under '{dotted.partition('.')[0]}:'); keep one of them")
            flat[dotted] = v
    return flat


@functools.cache
def field_type(cls: type, name: str) -> Any:
    """The resolved type hint of a config dataclass field (shared with the SKDCGN config)."""
    return typing.get_type_hints(cls)[name]


def coerce_value(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the dataclass field type; CLI strings are parsed as YAML scalars."""
    if isinstance(value, str) and typ is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config key '{key}': cannot parse {value!r}: {exc}") from None
        if isinstance(value, str) and typ in (int, float):
            try:  # YAML 1.1 reads "5e-4" (no dot) as a string
                value = float(value)
            except ValueError:
                pass
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(typ, types.UnionType) or typing.get_origin(typ) is not None:
        return value
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(
        f"config key '{key}' expects {name}, got {value!r} ({type(value).__name__})"
    )


def _target(cfg: ExperimentConfig, key: str) -> tuple[Any, str]:
    if key in TOP_LEVEL:
        return cfg, key
    head, _, tail = key.partition(".")
    if head in SECTIONS and tail in {f.name for f in dataclasses.fields(SECTIONS[head])}:
        return getattr(cfg, head), tail
    if head in METHODS and tail in {f.name for f in dataclasses.fields(METHODS[head].Config)}:
        return cfg.methods[head], tail
    raise unknown_key_error(key)


def check_keys(flat: dict[str, Any], where: str = "") -> None:
    probe = ExperimentConfig()
    for key in flat:
        try:
            _target(probe, key)
        except ConfigError:
            raise unknown_key_error(key, where) from None


def apply(cfg: ExperimentConfig, flat: dict[str, Any], where: str = "") -> ExperimentConfig:
    """Set dotted keys on ``cfg`` in place (type-checked) and return it."""
    for key, value in flat.items():
        try:
            obj, attr = _target(cfg, key)
        except ConfigError:
            raise unknown_key_error(key, where) from None
        setattr(obj, attr, coerce_value(key, value, field_type(type(obj), attr)))
    return cfg


def to_flat(cfg: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as dotted keys (only the chosen method's section)."""
    flat: dict[str, Any] = {k: getattr(cfg, k) for k in TOP_LEVEL}
    for section in SECTIONS:
        for k, v in dataclasses.asdict(getattr(cfg, section)).items():
            flat[f"{section}.{k}"] = v
    for k, v in dataclasses.asdict(cfg.method_config).items():
        flat[f"{cfg.method}.{k}"] = v
    return flat

