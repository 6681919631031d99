"""One resolution path for every experiment kind: a config from dotted-key layers, and its save.

Later wins: (1) the root dataclass's defaults, (2) a preset the layers choose (``preset:``),
(3) the experiment file, (4) the values a sweep sampled for the trial, (5) command-line
overrides, (6) smoke mode (``smoke: true``). Layers 3 to 5 are the caller's, in that order; a
kind adds what it has of the rest through hooks (its preset, its smoke values, its value checks,
the "decide for me" values it fixes after them). Every key goes through the kind's ``Schema``:
an unknown one is one error naming the closest valid key, every value is type-checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kdci_ray.atomic import atomic_write_text
from kdci_ray.config.schema import Schema

SMOKE_KEY = "smoke"  # the top-level switch of smoke mode, in every kind's root dataclass

#: ``cfg -> (where, dotted values)``: the preset the choosing keys picked ("" and {}: none)
Preset = Callable[[Any], tuple[str, Mapping[str, Any]]]


def merge_layers(schema: Schema, layers: tuple[Mapping[str, Any], ...],
                 where: str = "") -> dict[str, Any]:
    """The layers as one dict of dotted keys, later layers winning (each may nest one level)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(schema.flatten(dict(layer), where))
    return merged


def _nothing(cfg: Any) -> None:
    del cfg


def resolve_layers(schema: Schema, layers: tuple[Mapping[str, Any], ...], *,
                   validate: Callable[[Any], None] = _nothing,
                   smoke_values: Callable[[Any], Mapping[str, Any]] | None = None,
                   preset: Preset | None = None, choosing: tuple[str, ...] = (SMOKE_KEY,),
                   decide: Callable[[Any], None] = _nothing, smoke: bool | None = None,
                   where: str = "") -> Any:
    """The validated config of one run of ``schema``'s root dataclass from dotted-key
    ``layers`` (file, sampled values, overrides: later wins).

    ``choosing`` keys are set first, for ``preset`` to read (``method``, ``preset``); the
    preset's values go under the layers. With smoke mode on (a layer's ``smoke`` or ``smoke``
    given here) the user's values are validated as given, so smoke mode hides no bad one, then
    ``smoke_values(cfg)`` is applied on top. ``validate`` checks the final config; ``decide``
    then fixes the values left for the code to decide, so the saved config says what ran."""
    merged = merge_layers(schema, layers, where)
    if smoke is not None:
        merged[SMOKE_KEY] = smoke
    cfg = schema.root()
    schema.apply(cfg, {k: merged[k] for k in choosing if k in merged}, where)
    if preset is not None:
        preset_where, values = preset(cfg)
        schema.apply(cfg, dict(values), preset_where)
    schema.apply(cfg, merged, where)
    if getattr(cfg, SMOKE_KEY):
        validate(dataclasses.replace(cfg, **{SMOKE_KEY: False}))
        if smoke_values is not None:
            schema.apply(cfg, dict(smoke_values(cfg)), "smoke mode")
    validate(cfg)
    decide(cfg)
    return cfg


def capped(schema: Schema, cfg: Any, caps: Mapping[str, Any]) -> dict[str, Any]:
    """Smoke values that only lower: each key of ``caps`` at most its cap (0 stays 0)."""
    return {key: min(cap, schema.value(cfg, key)) for key, cap in caps.items()}


def dump_flat(schema: Schema, cfg: Any) -> str:
    """The resolved config as flat YAML (dotted keys, in the schema's order)."""
    return yaml.safe_dump(schema.to_flat(cfg), sort_keys=False)


def save_flat(schema: Schema, cfg: Any, path: str | Path) -> Path:
    """The resolved config as flat YAML, written atomically (a resume check reads it back)."""
    return atomic_write_text(path, dump_flat(schema, cfg))
