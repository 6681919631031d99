"""``kdci-ray sweep CONFIG --only key=value``: run the part of a grid whose configs match.

A grid point is kept when its *resolved* config (YAML, sampled grid values, command-line
overrides, smoke mode) has the value: ``--only method=dafl`` keeps every DAFL trial,
``--only teacher.arch=wrn_40_2`` every trial of the three WRN-40-2 pairs. Several ``--only`` on the
same key are alternatives (OR), on different keys all must hold (AND). ``cases`` /
``cases.<group>`` select cases by name (``--only cases.pair=r34-r18``). A key of another
method's section (``dafl.onehot_weight`` for a CMI trial) is absent, so it never matches. Values
are parsed per the key's type, like overrides (``kdci.enabled=true``, ``seed=0``). Any experiment
kind's keys (its ``Schema``).

The kept points must form a sub-grid (each grid key and case group restricted to some of its
values), since Tune runs products; filters on searched keys always do.
"""

from __future__ import annotations

from typing import Any

from kdci_ray.config.schema import ABSENT, Schema, coerce_value, field_type
from kdci_ray.errors import ConfigError
from kdci_ray.search import Search
from kdci_ray.search.cases import (
    CASES,
    NAME,
    KeyCheck,
    case_name,
    dfkd_keys,
    is_case_key,
    parse_cases,
)
from kdci_ray.search.space import SPEC_KINDS


def _dfkd_schema() -> Schema:
    """The default schema: the distillation config's (imported on first use)."""
    from kdci_ray.experiments.dfkd import DFKD_SCHEMA

    return DFKD_SCHEMA


def parse_only(items: list[str], schema: Schema | None = None) -> dict[str, list[str]]:
    """``["method=dafl", "method=dfnd", "seed=0"]`` -> ``{"method": ["dafl", "dfnd"], ...}``
    (keys checked against ``schema``: the distillation config's unless given)."""
    schema = schema or _dfkd_schema()
    filters: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"--only {item!r} must look like key=value, e.g. --only method=dafl")
        if not is_case_key(key):
            schema.check_keys({key: value}, "--only")
        filters.setdefault(key, []).append(value)
    return filters


def _typed(schema: Schema, key: str, raw: str) -> Any:
    """``raw`` parsed as ``key``'s type, the way a ``key=value`` override is."""
    obj, attr = schema.target(schema.root(), key)
    return coerce_value(key, raw, field_type(type(obj), attr))


def _show(values: list[Any]) -> str:
    unique = sorted({str(v) for v in values if v is not ABSENT})
    return ", ".join(unique) if unique else "nothing (the key belongs to a method not in the grid)"


class _Matcher:
    """Whether each grid point matches one ``--only`` key."""

    def __init__(self, search: dict[str, Any], points: list[dict[str, Any]],
                 configs: list[Any], schema: Schema) -> None:
        self.search, self.points, self.configs, self.schema = search, points, configs, schema

    def values(self, key: str) -> list[Any]:
        if is_case_key(key):
            return [case_name(p.get(key)) for p in self.points]
        return [self.schema.value(cfg, key) for cfg in self.configs]

    def matches(self, key: str, raw: list[str]) -> list[bool]:
        self._check_searchable(key)
        wanted = raw if is_case_key(key) else [_typed(self.schema, key, v) for v in raw]
        values = self.values(key)
        hits = [v is not ABSENT and v in wanted for v in values]
        if not any(hits):
            shown = ", ".join(f"{key}={v}" for v in raw)
            raise ConfigError(f"--only {shown} matches no grid point; {key} takes: "
                              f"{_show(values)}")
        return hits

    def _check_searchable(self, key: str) -> None:
        if is_case_key(key) and not any(key in p for p in self.points):
            groups = sorted({k for p in self.points for k in p if is_case_key(k)})
            raise ConfigError(f"--only {key}=...: the search has no case group '{key}' "
                              f"(case groups: {', '.join(groups) or 'none'})")
        spec = self.search.get(key)
        if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SPEC_KINDS \
                and next(iter(spec)) != "grid":
            raise ConfigError(f"--only {key}=...: '{key}' is sampled ({next(iter(spec))}), not a "
                              "grid; its value is not known before the trial starts")


def select(filters: dict[str, list[str]], search: dict[str, Any],
           points: list[dict[str, Any]], configs: list[Any],
           schema: Schema | None = None) -> list[int]:
    """Indices of the grid points that match every filter (OR within a key, AND across keys;
    values typed by ``schema``: the distillation config's unless given)."""
    matcher = _Matcher(search, points, configs, schema or _dfkd_schema())
    columns = [matcher.matches(key, raw) for key, raw in filters.items()]
    kept = [i for i in range(len(points)) if all(col[i] for col in columns)]
    if not kept:
        shown = " AND ".join(f"{k}={'|'.join(v)}" for k, v in filters.items())
        raise ConfigError(f"--only {shown}: each filter matches some grid points, but no point "
                          "matches all of them")
    return kept


def restrict(search: dict[str, Any], kept: list[dict[str, Any]], where: str = "",
             check: KeyCheck = dfkd_keys) -> dict[str, Any]:
    """The search section with each grid key and case group cut to the values in ``kept``.

    Raises a ConfigError when ``kept`` is not a whole sub-grid (Tune runs products only).
    """
    out: dict[str, Any] = {}
    for key, spec in search.items():
        if key == CASES:
            out[key] = _restrict_cases(spec, kept, where, check)
        elif _is_grid(spec):
            values = spec["grid"] if isinstance(spec, dict) else list(spec)
            out[key] = {"grid": [v for v in values if any(p.get(key) == v for p in kept)]}
        else:
            out[key] = spec
    trials = Search.parse(out, where, check).count()
    if trials != len(kept):
        raise ConfigError(
            f"the --only filters keep {len(kept)} grid points that do not form a sub-grid (Tune "
            f"runs every combination of the values left: {trials}); "
            "filter on searched keys or cases instead"
        )
    return out


def _is_grid(spec: Any) -> bool:
    return isinstance(spec, (list, tuple)) or (isinstance(spec, dict) and list(spec) == ["grid"])


def _restrict_cases(spec: Any, kept: list[dict[str, Any]], where: str, check: KeyCheck) -> Any:
    groups = parse_cases(spec, where, check)

    def cut(key: str) -> list[dict[str, Any]]:
        names = {case_name(p.get(key)) for p in kept}
        return [case for case in groups[key] if case[NAME] in names]

    if list(groups) == [CASES]:
        return cut(CASES)
    return {key[len(CASES) + 1:]: cut(key) for key in groups}


def describe(filters: dict[str, list[str]], kept: int, total: int) -> str:
    """``--only method=dafl|dfnd: 20 of 60 grid points``."""
    shown = " ".join(f"{k}={'|'.join(v)}" for k, v in filters.items())
    return f"--only {shown}: {kept} of {total} grid points"
