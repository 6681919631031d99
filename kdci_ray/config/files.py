"""Experiment files and command-line overrides: parsing (``yaml.safe_load`` only) and dumping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdci_ray.config.keys import check_keys, flatten, to_flat
from kdci_ray.config.sections import ConfigError, ExperimentConfig


@dataclass
class Experiment:
    """A parsed YAML file: fixed settings plus an optional search space (see tune/space.py)."""

    path: Path | None
    settings: dict[str, Any]
    search: dict[str, Any]

    @property
    def stem(self) -> str:
        return self.path.stem if self.path else str(self.settings.get("name", "experiment"))


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (expected a flat YAML experiment file)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(raw).__name__}")
    search = raw.pop("search", None) or {}
    if not isinstance(search, dict):
        raise ConfigError(f"{path}: 'search' must be a mapping of key: {{grid: [...]}}")
    settings = flatten(raw, str(path))
    settings.setdefault("name", path.stem)
    check_keys(settings, str(path))
    check_keys(search, f"{path} (search section)")
    return Experiment(path, settings, dict(search))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "kdci.enabled=true"]`` -> dotted dict (values parsed later, per type)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        out[key.strip()] = value.strip()
    check_keys(out, "command-line overrides")
    return out


def save_resolved(cfg: ExperimentConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_flat(cfg), sort_keys=False))
    return path
