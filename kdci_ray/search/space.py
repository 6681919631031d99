"""The ``search:`` section of an experiment YAML as a Ray Tune ``param_space``, one-to-one.

Each key (dotted, e.g. ``kdci.enabled``) maps to one spec::

    search:
      method: {grid: [dafl, deepinv]}   # tune.grid_search: every value, every trial set
      seed: [0, 1, 2]                         # a bare list is shorthand for grid
      train.lr: {loguniform: [0.01, 0.3]}     # tune.loguniform(lo, hi), 0 < lo < hi
      kdci.lr_scale: {uniform: [0.5, 2.0]}    # tune.uniform(lo, hi), lo < hi
      kdci.k: {randint: [4, 33]}              # tune.randint(lo, hi): integers lo..hi-1
      student.arch: {choice: [a, b]}          # tune.choice: one value sampled per trial

Grid keys multiply: Tune runs every grid combination ``num_samples`` times, sampling the other
specs anew for each. Whether the keys themselves exist is checked by the kind's schema (``check``).

Bundles of keys that vary together (a teacher with its checkpoint and its student) are *cases*,
under the reserved key ``cases``: a list of mappings, each one grid value whose keys are applied
together, as one layer with the trial's other sampled values::

    search:
      cases:
        - {name: r34-r18, teacher.arch: resnet34, teacher.checkpoint: /ckpt/r34.pth,
           student.arch: resnet18}
        - {teacher.arch: wrn_40_2, teacher.checkpoint: /ckpt/wrn.pth, student.arch: wrn_16_1}
      kdci.enabled: [false, true]             # 2 cases x 2 = 4 trials

Several groups of cases that multiply are a mapping of group name -> list::

    search:
      cases:
        pair: [{name: r34-r18, ...}, ...]           # Tune parameter ``cases.pair``
        schedule: [{name: dafl, method: dafl, train.rounds: 240000, ...}, ...]

Rules: a case's keys are checked like any other key (an unknown one is an error naming it and the
file); its values are fixed values (no specs); a key may be set by one case group only and not
also be a search key of its own. ``name`` is optional: without it a case is named by its values
joined with ``-`` (paths left out: ``wrn_40_2-wrn_16_1`` above); names must differ within a
group. The name is what trial directories (``r34-r18_kdci_00001``), the results table (a column
``case``, or one per group: ``pair``, ``schedule``) and ``--only cases.pair=r34-r18`` use.

In the Tune ``param_space`` a case group is one ``tune.grid_search`` over its case *names*, so
Tune's progress table, ``params.json`` and trial names stay short; the trial function gets the
case mappings alongside (``cases.case_lookup``), puts each trial's case back (``cases.expand``)
and flattens the point into dotted keys (``cases.config_layer``). ``grid_points`` returns the case
mappings themselves. Ray is imported only where the ``param_space`` is built.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from kdci_ray.errors import ConfigError
from kdci_ray.search.cases import CASES, NAME, KeyCheck, dfkd_keys, is_case_key, parse_cases

SPEC_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
_EXAMPLE = "e.g. `{grid: [a, b]}`, `{uniform: [0.1, 1.0]}` or a bare list `[a, b]`"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_spec(key: str, spec: Any) -> tuple[str, list[Any]]:
    """Return ``(kind, args)`` for one search entry, or raise a ConfigError naming ``key``."""
    if isinstance(spec, (list, tuple)):
        kind, args = "grid", spec
    elif isinstance(spec, dict):
        if len(spec) != 1:
            raise ConfigError(
                f"search key '{key}': a spec needs exactly one kind "
                f"({', '.join(SPEC_KINDS)}), got {sorted(map(str, spec)) or 'an empty mapping'}"
            )
        ((kind, args),) = spec.items()
        if kind not in SPEC_KINDS:
            close = difflib.get_close_matches(str(kind), SPEC_KINDS, n=1, cutoff=0.0)
            raise ConfigError(
                f"search key '{key}': unknown spec kind '{kind}'; did you mean '{close[0]}'? "
                f"(known: {', '.join(SPEC_KINDS)})"
            )
    else:
        raise ConfigError(
            f"search key '{key}': expected a spec mapping or a list, got {spec!r} "
            f"({type(spec).__name__}); {_EXAMPLE}. To fix a single value, set it outside `search`"
        )
    if not isinstance(args, (list, tuple)):
        raise ConfigError(f"search key '{key}': '{kind}' needs a list, got {args!r}; {_EXAMPLE}")
    _check_args(key, kind, list(args))
    return kind, list(args)


def _check_args(key: str, kind: str, args: list[Any]) -> None:
    if kind in ("grid", "choice"):
        if not args:
            raise ConfigError(
                f"search key '{key}': empty {kind} list expands to zero trials; "
                "give at least one value or remove the key"
            )
        _check_distinct(key, kind, args)
        return
    if len(args) != 2 or not all(_is_number(a) for a in args):
        raise ConfigError(
            f"search key '{key}': '{kind}' needs exactly 2 numbers [lo, hi], got {args}"
        )
    lo, hi = args
    if not all(math.isfinite(a) for a in args) or lo >= hi:
        raise ConfigError(f"search key '{key}': '{kind}' needs lo < hi (finite), got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"search key '{key}': 'loguniform' needs 0 < lo < hi, got [{lo}, {hi}]")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(
            f"search key '{key}': 'randint' needs integers [lo, hi) (hi exclusive), got {args}"
        )


def _same_value(a: Any, b: Any) -> bool:
    """Equal as config values (``1 == 1.0``, but ``True`` is not ``1``)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _check_distinct(key: str, kind: str, args: list[Any]) -> None:
    """A value listed twice would run (grid) or weight (choice) the same trials twice."""
    for i, value in enumerate(args):
        for j in range(i):
            if _same_value(args[j], value):
                effect = "run the same trials twice" if kind == "grid" else \
                    "be sampled twice as often as the others"
                raise ConfigError(
                    f"search key '{key}': {kind} value {value!r} is listed twice (positions "
                    f"{j + 1} and {i + 1}); it would {effect}: remove one"
                )


def _parsed(search: dict[str, Any], where: str = "",
            check: KeyCheck = dfkd_keys) -> dict[str, tuple[str, list[Any]]]:
    """``{param key: (kind, args)}``; each case group is a grid over its case mappings."""
    if not isinstance(search, dict):
        raise ConfigError(
            f"'search' must be a mapping of key: spec, got {type(search).__name__}; {_EXAMPLE}"
        )
    out: dict[str, tuple[str, list[Any]]] = {}
    for key, spec in search.items():
        if key == CASES:
            out.update({k: ("grid", cases) for k, cases in parse_cases(spec, where, check)
                        .items()})
        elif isinstance(key, str) and is_case_key(key):
            raise ConfigError(f"search key '{key}': write case groups as "
                              f"`cases: {{{key[len(CASES) + 1:]}: [...]}}`")
        else:
            out[key] = _parse_spec(key, spec)
    _check_overlaps(out, where)
    return out


def _check_overlaps(parsed: dict[str, tuple[str, list[Any]]], where: str) -> None:
    """A key set by a case may not be set by another case group or searched on its own."""
    owner: dict[str, str] = {key: key for key in parsed if not is_case_key(key)}
    for key, (_, cases) in parsed.items():
        if not is_case_key(key):
            continue
        for k in {k for case in cases for k in case if k != NAME}:
            if k in owner:
                src = f"{where}: " if where else ""
                other = f"search key '{k}'" if owner[k] == k else f"search '{owner[k]}'"
                raise ConfigError(f"{src}'{k}' is set both by search '{key}' and by {other}; "
                                  "a key may vary in one place only")
            owner[k] = key


def _domain(kind: str, args: list[Any]) -> Any:
    from ray import tune

    if kind == "grid":
        return tune.grid_search(args)
    if kind == "choice":
        return tune.choice(args)
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    return tune.randint(*args)


def build_param_space(search: dict[str, Any], where: str = "",
                      check: KeyCheck = dfkd_keys) -> dict[str, Any]:
    """Tune ``param_space`` for a ``search`` section (``Search.param_space``)."""
    from kdci_ray.search import Search

    return Search.parse(search, where, check).param_space()


def grid_points(search: dict[str, Any], where: str = "",
                check: KeyCheck = dfkd_keys) -> list[dict[str, Any]]:
    """Every combination of the grid entries (``Search.points``); a case group's value is its
    case mapping, sampled specs are left out, no grid entry gives ``[{}]``."""
    from kdci_ray.search import Search

    return Search.parse(search, where, check).points()


def count_trials(search: dict[str, Any], num_samples: int = 1, where: str = "") -> int:
    """Number of trials Tune will run: product of the grid sizes times ``num_samples``."""
    from kdci_ray.search import Search

    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    return Search.parse(search, where).count(num_samples)


def sampled_values(domain: Any) -> list[Any]:
    """The values a Tune sampled domain can draw that decide whether a config is valid: every
    ``choice``; the bounds of ``uniform`` / ``loguniform`` / ``randint`` (hi exclusive), and for
    the float ones a value between them (an integer key refuses fractions)."""
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Integer):
        return [int(domain.lower), int(domain.upper) - 1]
    if isinstance(domain, Float):
        lo, hi = float(domain.lower), float(domain.upper)
        return [lo, lo + 0.37 * (hi - lo), hi]
    return []
