"""The names of the ``cases`` search key, shared by every layer that reads a trial's point.

A *case* is one mapping of dotted config keys with fixed values and a ``name``; a *case group*
(``cases`` or ``cases.<group>``) acts as one grid key whose values are its cases, and Tune's
``param_space`` holds only the case names. The search section is parsed and checked by
``kdci_ray.search.cases``; these helpers only name and expand what it parsed, so that the trial's
reporter (``train``), the kinds' result rows (``experiments``) and the results tables can read a
point without the parser.
"""

from __future__ import annotations

from typing import Any

from kdci_ray.errors import ConfigError

CASES = "cases"
NAME = "name"


def is_case_key(key: str) -> bool:
    """True for the Tune parameter of a case group: ``cases`` or ``cases.<group>``."""
    return key == CASES or key.startswith(CASES + ".")


def column_name(key: str) -> str:
    """Results-table column of a case group: ``case`` for ``cases``, ``<group>`` otherwise."""
    return "case" if key == CASES else key[len(CASES) + 1:]


def case_name(value: Any) -> str:
    """The name of a sampled case (a mapping with ``name``), or ``str(value)`` for anything else."""
    if isinstance(value, dict) and NAME in value:
        return str(value[NAME])
    return str(value)


def expand(params: dict[str, Any], lookup: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Tune parameters with each case name replaced by its case mapping."""
    out = dict(params)
    for key, cases in lookup.items():
        name = params.get(key)
        if isinstance(name, str):
            if name not in cases:
                raise ConfigError(f"search '{key}' has no case named '{name}' (cases: "
                                  f"{', '.join(cases)})")
            out[key] = cases[name]
    return out


def config_layer(point: dict[str, Any]) -> dict[str, Any]:
    """One sampled point (grid values, sampled values, case mappings) as one layer of dotted
    keys; a case left as a bare name (not ``expand``-ed) contributes nothing."""
    layer: dict[str, Any] = {}
    for key, value in point.items():
        if not is_case_key(key):
            layer[key] = value
        elif isinstance(value, dict):
            layer.update({k: v for k, v in value.items() if k != NAME})
    return layer
