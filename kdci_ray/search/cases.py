"""Bundles of keys that vary together: the reserved ``cases`` search key (syntax: search/space.py).

A *case* is one mapping of dotted config keys with fixed values (plus an optional ``name``); a
*case group* is a list of cases and acts as one grid key whose values are its cases. Here
the YAML value of ``cases`` is parsed and checked, case names are looked up (Tune's
``param_space`` holds only the names), and a sampled point is turned back into one config
layer (files are read by ``kdci_ray.engine.files``; the names themselves live in
``kdci_ray.config.cases``). No Ray import: the results table uses the same helpers on a finished
sweep.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kdci_ray.config.cases import (
    CASES,
    NAME,
    case_name,
    column_name,
    config_layer,
    expand,
    is_case_key,
)
from kdci_ray.errors import ConfigError

__all__ = ["CASES", "NAME", "RESERVED_COLUMNS", "KeyCheck", "case_lookup", "case_name",
           "column_name", "config_layer", "dfkd_keys", "expand", "is_case_key", "parse_cases"]
# the results table's own columns (tune/table.py): a case group may not be named like one
RESERVED_COLUMNS = ("trial", "method", "kdci", "seed", "acc", "acc_kdci", "teacher_acc",
                    "recall_min", "recall_min_kdci", "recall_rare", "recall_rare_kdci",
                    "prior_ratio", "prior_ratio_train",
                    "rounds_done", "finished", "checkpoint", "resumes", "failures", "stopped", "n",
                    "acc_mean", "acc_std",
                    "acc_kdci_mean", "acc_kdci_std", "delta_acc",
                    "recall_min_mean", "recall_min_kdci_mean", "recall_rare_mean",
                    "recall_rare_kdci_mean", "prior_ratio_mean", "prior_ratio_train_mean")
_GROUP = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_NAME_OK = re.compile(r"[A-Za-z0-9_.=-]+")
_MAX_DERIVED = 40
KeyCheck = Callable[[dict[str, Any], str], None]  # raises ConfigError on an unknown key


def dfkd_keys(flat: dict[str, Any], where: str = "") -> None:
    """The default key check: the distillation config's keys (``kdci_ray.experiments.dfkd``,
    imported on first use: reading a search section needs no method and no torch)."""
    from kdci_ray.experiments.dfkd import check_keys

    check_keys(flat, where)


def _flatten(mapping: dict[str, Any], where: str) -> dict[str, Any]:
    """A case's body as dotted keys (one level of nesting under a distillation section)."""
    from kdci_ray.experiments.dfkd import flatten

    return flatten(mapping, where)

_EXAMPLE = ("e.g. `cases: [{name: r34-r18, teacher.arch: resnet34, student.arch: resnet18}, ...]` "
            "or `cases: {pair: [...], schedule: [...]}`")


def case_lookup(search: dict[str, Any], where: str = "",
                check: KeyCheck = dfkd_keys) -> dict[str, dict[str, dict[str, Any]]]:
    """``{param key: {case name: case}}`` for the ``cases`` of a search section (``{}`` if none)."""
    if not isinstance(search, dict) or CASES not in search:
        return {}
    groups = parse_cases(search[CASES], where, check)
    return {key: {case[NAME]: case for case in cases} for key, cases in groups.items()}


# ----------------------------------------------------------------------------- parsing


def parse_cases(spec: Any, where: str = "",
                check: KeyCheck = dfkd_keys) -> dict[str, list[dict[str, Any]]]:
    """``{param key: [case, ...]}`` for the YAML value of ``cases``.

    A list is one group (param key ``cases``); a mapping ``{group: list}`` is several groups
    (param keys ``cases.<group>``) that multiply. Each case comes back as ``{"name": ..., key:
    value, ...}`` with flat dotted keys, checked like any other key (by ``check``: the
    distillation config's keys unless another schema, e.g. SKDCGN's, passes its own).
    """
    if isinstance(spec, list):
        groups = {CASES: spec}
    elif isinstance(spec, dict) and spec:
        groups = {f"{CASES}.{_group_name(g, where)}": entries for g, entries in spec.items()}
    else:
        raise ConfigError(f"{_src(where)}search key 'cases' must be a list of mappings or a "
                          f"mapping of group name -> list, got {spec!r}; {_EXAMPLE}")
    return {key: _parse_group(key, entries, where, check) for key, entries in groups.items()}


def _src(where: str) -> str:
    return f"{where}: " if where else ""


def _group_name(group: Any, where: str) -> str:
    if not isinstance(group, str) or not _GROUP.fullmatch(group):
        raise ConfigError(f"{_src(where)}search key 'cases': group name {group!r} must be a word "
                          "(letters, digits, _; starting with a letter), e.g. "
                          "`cases: {pair: [...]}`")
    if group in RESERVED_COLUMNS or group == "case":
        raise ConfigError(f"{_src(where)}search key 'cases': group name '{group}' clashes with a "
                          f"results-table column; rename it (e.g. '{group}_case')")
    return group


def _parse_group(key: str, entries: Any, where: str, check: KeyCheck) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise ConfigError(f"{_src(where)}search '{key}' must be a list of mappings (one per "
                          f"case), got {entries!r}; {_EXAMPLE}")
    if not entries:
        raise ConfigError(f"{_src(where)}search '{key}' is an empty list: it expands to zero "
                          "trials; give at least one case or remove it")
    cases = [_parse_case(key, i, entry, where, check) for i, entry in enumerate(entries, 1)]
    seen: dict[str, int] = {}
    for i, case in enumerate(cases, 1):
        if case[NAME] in seen:
            raise ConfigError(f"{_src(where)}search '{key}': cases {seen[case[NAME]]} and {i} "
                              f"are both named '{case[NAME]}'; give each case a distinct "
                              "`name:`")
        seen[case[NAME]] = i
    bodies = [{k: v for k, v in case.items() if k != NAME} for case in cases]
    for i, body in enumerate(bodies):
        if body in bodies[:i]:
            j = bodies.index(body)
            raise ConfigError(f"{_src(where)}search '{key}': cases {j + 1} ('{cases[j][NAME]}') "
                              f"and {i + 1} ('{cases[i][NAME]}') set the same values; they "
                              "would run the same trials twice, remove one")
    return cases


def _parse_case(key: str, index: int, entry: Any, where: str,
                check: KeyCheck) -> dict[str, Any]:
    label = f"search '{key}' case {index}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{_src(where)}{label} must be a mapping of dotted keys, got "
                          f"{entry!r}; {_EXAMPLE}")
    body = {k: v for k, v in entry.items() if k != NAME}
    flat = _flatten(body, f"{where} ({label})" if where else label)
    if not flat:
        raise ConfigError(f"{_src(where)}{label} sets no config key; {_EXAMPLE}")
    check(flat, f"{where} ({label})" if where else label)
    for k, v in flat.items():
        if isinstance(v, (dict, list, tuple)):
            raise ConfigError(f"{_src(where)}{label}: '{k}' must be one fixed value, got "
                              f"{v!r}; a case sets values, it does not search them")
    name = _explicit_name(label, entry[NAME], where) if NAME in entry else \
        _derived_name(flat, column_name(key), index)
    return {NAME: name, **flat}


def _explicit_name(label: str, name: Any, where: str) -> str:
    text = str(name) if isinstance(name, (str, int)) and not isinstance(name, bool) else ""
    if not _NAME_OK.fullmatch(text):
        raise ConfigError(f"{_src(where)}{label}: name {name!r} must be a non-empty string of "
                          "letters, digits and _ . = - (it names trial directories)")
    return text


def _token(key: str, value: Any) -> str:
    """A value as part of a derived name; paths are left out (too long to be readable)."""
    if isinstance(value, str):
        return "" if "/" in value or "\\" in value else value
    short = key.rsplit(".", 1)[-1]
    return f"{short}{value:.4g}" if isinstance(value, float) else f"{short}{value}"


def _derived_name(flat: dict[str, Any], column: str, index: int) -> str:
    """``resnet34-resnet18`` from the case's values (paths skipped); ``<column><index>`` if none."""
    tokens = [t for t in (_token(k, v) for k, v in flat.items()) if t]
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(tokens))[:_MAX_DERIVED].strip("-_")
    return name or f"{column}{index}"
