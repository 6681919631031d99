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
specs anew for each. Whether the keys themselves exist is checked by ``config.check_keys``.
"""

from __future__ import annotations

import difflib
import itertools
import math
from typing import Any

from ray import tune

from kdci_ray.config import ConfigError

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


def _parsed(search: dict[str, Any]) -> dict[str, tuple[str, list[Any]]]:
    if not isinstance(search, dict):
        raise ConfigError(
            f"'search' must be a mapping of key: spec, got {type(search).__name__}; {_EXAMPLE}"
        )
    return {key: _parse_spec(key, spec) for key, spec in search.items()}


def _domain(kind: str, args: list[Any]) -> Any:
    if kind == "grid":
        return tune.grid_search(args)
    if kind == "choice":
        return tune.choice(args)
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    return tune.randint(*args)


def build_param_space(search: dict[str, Any]) -> dict[str, Any]:
    """Tune ``param_space`` for a ``search`` section; keys stay dotted (``"kdci.enabled"``)."""
    return {key: _domain(kind, args) for key, (kind, args) in _parsed(search).items()}


def grid_points(search: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the grid (and bare-list) entries, in key order (last varies fastest).

    Sampled specs (choice, uniform, ...) are left out. No grid entries gives ``[{}]``.
    """
    grids = {key: args for key, (kind, args) in _parsed(search).items() if kind == "grid"}
    return [dict(zip(grids, combo, strict=True)) for combo in itertools.product(*grids.values())]


def count_trials(search: dict[str, Any], num_samples: int = 1) -> int:
    """Number of trials Tune will run: product of the grid sizes times ``num_samples``."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    sizes = [len(args) for kind, args in _parsed(search).values() if kind == "grid"]
    return math.prod(sizes) * num_samples
