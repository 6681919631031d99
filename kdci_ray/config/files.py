"""Experiment files and command-line overrides, for any kind: YAML parsed with a safe loader that
refuses duplicated keys, and ``key=value`` words split (their keys are checked by the kind)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdci_ray.config.schema import closest_key
from kdci_ray.errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping in a YAML document names the same key twice."""

    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        super().__init__(f"key '{key}' appears twice (lines {first_line} and {second_line})")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, at any depth (plain
    PyYAML silently keeps the last one). Keys brought in by a ``<<`` merge may be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not key_node:
                raise DuplicateKeyError(key, first.start_mark.line + 1,
                                        key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` of ``text`` refusing duplicated keys; errors name ``where``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ConfigError(f"{where}: {exc}; YAML would silently keep only the last one, so "
                          f"remove one of them") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None


def read_yaml(path: str | Path) -> Any:
    """The YAML document in ``path`` (``parse_yaml``); an unreadable file is a ConfigError."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse_yaml(text, str(path))


def split_overrides(items: list[str], keys: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "kdci.enabled=true"]`` -> dotted dict (values parsed later, per type;
    keys checked by the caller, against its experiment kind's schema). An item without ``=`` is
    refused with the closest of ``keys`` (the kind's valid keys)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise not_an_override(item, keys)
        out[key.strip()] = value.strip()
    return out


def not_an_override(item: str, keys: list[str]) -> ConfigError:
    """The error for a command-line word that is not ``key=value``, naming the closest key."""
    key = item.partition("=")[0].strip()
    close = closest_key(key, keys) if key else None
    hint = f"did you mean {close}=...?" if close else "`kdci-ray keys` lists the keys"
    return ConfigError(f"{item!r} is not a key=value override (section.key=value, e.g. "
                       f"train.rounds=40); {hint}")
