"""Dotted config keys over any experiment kind's root dataclass: which keys exist, flattening,
type-checked assignment, flat dumps, one unknown-key error with a did-you-mean.

A ``Schema`` describes one root dataclass: its top-level fields and its sections (each a
dataclass field of the root). The distillation config (a section per method on top) and the
SKDCGN config (``kdci_ray.cgn.config``) are two schemas of this one machinery; a kind resolves
and saves its configs with ``kdci_ray.config.layers``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any

import yaml

from kdci_ray.errors import ConfigError


@functools.cache
def field_type(cls: type, name: str) -> Any:
    """The resolved type hint of a config dataclass field."""
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


def _squashed(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def closest_key(word: str, keys: list[str]) -> str | None:
    """The key of ``keys`` closest to ``word``, separators ignored (``trainlr`` -> ``train.lr``);
    None when none is close."""
    by_letters = {_squashed(k): k for k in keys}
    if _squashed(word) in by_letters:
        return by_letters[_squashed(word)]
    close = difflib.get_close_matches(word, keys, n=1, cutoff=0.6) or [
        by_letters[m] for m in difflib.get_close_matches(_squashed(word), list(by_letters), n=1,
                                                         cutoff=0.6)]
    return close[0] if close else None


def check_choice(key: str, value: Any, choices: Collection[str]) -> None:
    """Refuse a ``value`` of config ``key`` outside ``choices``, naming them and the closest."""
    if value in choices:
        return
    close = closest_key(str(value), list(choices))
    hint = f"; did you mean {close!r}?" if close else ""
    raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got "
                      f"{value!r}{hint}")


ABSENT = object()  # a key the config does not hold (another method's section)


class Schema:
    """The dotted keys of one root config dataclass.

    ``top_level``: fields of the root set directly (``seed``); ``sections``: section name ->
    its dataclass, each held by the root's attribute of that name (``train.lr``). ``label``
    words the errors (``"SKDCGN "``), ``renamed`` maps retired keys to their new names."""

    def __init__(self, root: type, top_level: tuple[str, ...], sections: Mapping[str, type],
                 label: str = "", renamed: Mapping[str, str] | None = None,
                 keys_hint: str = "run `kdci-ray keys` to list them") -> None:
        self.root, self.top_level, self.sections = root, tuple(top_level), dict(sections)
        self.label, self.renamed, self.keys_hint = label, dict(renamed or {}), keys_hint

    # ---------------------------------------------------------------- sections
    def extra_sections(self) -> Mapping[str, type]:
        """Sections held elsewhere than a root attribute of their name (none here)."""
        return {}

    def section_object(self, cfg: Any, section: str) -> Any:
        """The dataclass instance behind ``section`` in ``cfg``."""
        return getattr(cfg, section)

    def _all_sections(self) -> dict[str, type]:
        return {**self.sections, **self.extra_sections()}

    # ---------------------------------------------------------------- keys
    def valid_keys(self) -> list[str]:
        """Every dotted key a YAML file or override may set (besides ``search``)."""
        keys = list(self.top_level)
        for section, cls in self._all_sections().items():
            keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
        return keys

    def unknown_key_error(self, key: str, where: str = "") -> ConfigError:
        if key in self.renamed:
            found = f" (found in {where})" if where else ""
            return ConfigError(f"config key '{key}' was renamed to '{self.renamed[key]}'{found}")
        src = f" in {where}" if where else ""
        close = difflib.get_close_matches(key, self.valid_keys(), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else f"; {self.keys_hint}"
        return ConfigError(f"unknown {self.label}config key '{key}'{src}{hint}")

    def flatten(self, mapping: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Accept ``a.b: v`` and one level of nesting ``a: {b: v}``; return dotted keys (a key
        set both ways is an error)."""
        flat: dict[str, Any] = {}
        src = f" in {where}" if where else ""
        sections = self._all_sections()
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise ConfigError(f"config keys must be strings, got {key!r}{src}")
            nested = key in sections and isinstance(value, dict)
            items = [(f"{key}.{sub}", v) for sub, v in value.items()] if nested else \
                [(key, value)]
            for dotted, v in items:
                if dotted in flat:
                    raise ConfigError(f"'{dotted}' is set twice{src} (as a dotted key and "
                                      f"nested under '{dotted.partition('.')[0]}:'); keep one "
                                      f"of them")
                flat[dotted] = v
        return flat

    def target(self, cfg: Any, key: str) -> tuple[Any, str]:
        """``(object, attribute)`` that dotted ``key`` sets in ``cfg``."""
        if key in self.top_level:
            return cfg, key
        head, _, tail = key.partition(".")
        cls = self._all_sections().get(head)
        if cls is not None and tail in {f.name for f in dataclasses.fields(cls)}:
            return self.section_object(cfg, head), tail
        raise self.unknown_key_error(key)

    def check_keys(self, flat: dict[str, Any], where: str = "") -> None:
        """One error naming the first unknown key (and the closest valid one)."""
        valid = set(self.valid_keys())
        for key in flat:
            if key not in valid:
                raise self.unknown_key_error(key, where)

    def apply(self, cfg: Any, flat: dict[str, Any], where: str = "") -> Any:
        """Set dotted keys on ``cfg`` in place (type-checked) and return it."""
        for key, value in flat.items():
            try:
                obj, attr = self.target(cfg, key)
            except ConfigError:
                raise self.unknown_key_error(key, where) from None
            setattr(obj, attr, coerce_value(key, value, field_type(type(obj), attr)))
        return cfg

    def value(self, cfg: Any, key: str) -> Any:
        """The value of dotted ``key`` in a resolved config (``ABSENT`` where it holds none)."""
        try:
            obj, attr = self.target(cfg, key)
        except ConfigError:
            return ABSENT
        return getattr(obj, attr)

    def to_flat(self, cfg: Any) -> dict[str, Any]:
        """The resolved config as dotted keys."""
        flat: dict[str, Any] = {k: getattr(cfg, k) for k in self.top_level}
        for section in self.sections:
            for k, v in dataclasses.asdict(self.section_object(cfg, section)).items():
                flat[f"{section}.{k}"] = v
        return flat
