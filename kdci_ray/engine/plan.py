"""A sweep planned without Ray: the experiment read once, every grid point resolved into a full
config (every value a sampled key can draw checked too), ``--only`` and smoke mode applied, the
output directory decided. Everything a user can get wrong fails here, before Ray starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdci_ray.cache import pin_cache_dir
from kdci_ray.config.files import split_overrides
from kdci_ray.engine.files import absolute_paths, load_experiment
from kdci_ray.engine.kinds import DEFAULT_KIND, ExperimentKind, kind_named
from kdci_ray.engine.sweep_dir import SWEEP_FILE, BadRecord, load_record
from kdci_ray.errors import ConfigError
from kdci_ray.search import Search
from kdci_ray.search import only as only_filter
from kdci_ray.search.cases import NAME, is_case_key
from kdci_ray.search.space import sampled_values


@dataclass
class SweepPlan:
    kind: ExperimentKind
    name: str
    out_dir: Path
    settings: dict[str, Any]  # the experiment's fixed keys
    overrides: dict[str, Any]  # command-line / API overrides (win over sampled values)
    parsed: Search  # as run: cut to the --only filters
    configs: list[Any]  # one resolved config per grid point
    only: list[str] = field(default_factory=list)  # the --only filters, as given
    grid_size: int = 0  # grid points before --only
    num_samples: int = 1  # Tune samples each grid point this many times

    @property
    def search(self) -> dict[str, Any]:
        """The ``search:`` section as run (recorded in ``sweep.yaml``)."""
        return self.parsed.section

    @property
    def trials(self) -> int:
        return self.parsed.count(self.num_samples)


def smoke_seed_filter(points: list[dict[str, Any]], only: list[str]) -> list[str]:
    """Smoke mode runs the first seed of a searched ``seed`` axis (seeds add no code path):
    ``["seed=<first>"]``, or ``[]`` without such an axis or when ``--only`` already picks seeds."""
    if any(item.partition("=")[0].strip() == "seed" for item in only):
        return []
    seeds = [p["seed"] for p in points if "seed" in p]
    return [f"seed={seeds[0]}"] if len(set(map(repr, seeds))) > 1 else []


def check_sweep_arguments(**arguments: Any) -> None:
    """The arguments of a sweep (``kdci_ray.sweep``'s, the command line's) have their types:
    ``smoke``, ``resume``, ``overwrite``, ``single`` are True or False (``"no"`` is not False),
    ``output`` a non-empty path, ``only`` a list of ``KEY=VALUE`` strings, ``overrides`` a dict
    or a list of ``key=value`` strings, ``num_samples`` an integer >= 1. Raises a ConfigError."""
    for name, value in arguments.items():
        problem = _argument_problem(name, value)
        if problem:
            flag = f" (--{name})" if name in ("output", "smoke", "resume", "overwrite",
                                              "only") else ""
            raise ConfigError(f"sweep argument {name}{flag} {problem}, got {value!r} "
                              f"({type(value).__name__})")


def _argument_problem(name: str, value: Any) -> str:
    """What is wrong with one sweep argument ("" when nothing)."""
    if name in ("smoke", "resume", "overwrite", "single"):
        return "" if isinstance(value, bool) else "must be True or False"
    if name == "config":
        ok = isinstance(value, (str, os.PathLike, dict)) and str(value).strip() != ""
        return "" if ok else "must be an experiment YAML, a sweep directory or a dict"
    if name == "output":
        if value is None:
            return ""
        if not isinstance(value, (str, os.PathLike)):
            return "must be a directory path"
        return "" if str(value).strip() else ("is empty: give the sweep directory, or leave "
                                              "--output out for results/<config stem>/")
    if name in ("only", "overrides"):
        if value is None or (name == "overrides" and isinstance(value, dict)
                             and all(isinstance(k, str) for k in value)):
            return ""
        what = "KEY=VALUE filters" if name == "only" else "'key=value' strings, or a dict of " \
            "dotted keys"
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return "" if ok else f"must be a list of {what}"
    if name == "num_samples":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return "" if ok else "must be an integer >= 1"
    if name == "kind":
        return "" if value is None or isinstance(value, str) else "must be a kind's name"
    return ""


def plan_sweep(config: str | Path | dict[str, Any], overrides: list[str] | dict | None = None,
               output: str | None = None, smoke: bool = False, single: bool = False,
               launch_dir: Path | None = None, only: list[str] | None = None,
               num_samples: int = 1, kind: str | None = None) -> SweepPlan:
    """Parse and validate a sweep without starting Ray; ``single`` ignores the search section;
    ``smoke`` keeps the first value of a searched ``seed`` axis (``smoke_seed_filter``).

    ``config``: an experiment file, the same content as a dict, or an existing sweep directory
    (the sweep recorded in its ``sweep.yaml``, to resume it). ``overrides``: ``key=value``
    strings or a dict; they may not set a key the search varies (``--only`` picks part of a
    grid). ``only`` (``["method=dafl", ...]``) keeps the grid points whose resolved configs
    match (``kdci_ray.search.only``); data and checkpoints are not read here. Relative paths
    of the command line, ``overrides``, a dict config and ``$KDCI_RAY_CACHE`` are read against
    ``launch_dir`` (default: the working directory), a file's against its directory."""
    check_sweep_arguments(config=config, overrides=overrides, output=output, smoke=smoke,
                          single=single, only=only, num_samples=num_samples, kind=kind)
    pin_cache_dir()
    if not isinstance(config, dict) and Path(config).expanduser().is_dir():
        return _plan_recorded(Path(config), overrides, output, smoke, only, num_samples)
    base = Path(launch_dir or Path.cwd()).resolve()
    exp = load_experiment(config, kind, base)
    where = str(exp.path) if exp.path else "the experiment given"
    schema = exp.kind.schema
    over = dict(overrides) if isinstance(overrides, dict) else \
        split_overrides(list(overrides or []), schema.valid_keys())
    schema.check_keys({k: v for k, v in over.items() if k != "smoke"},
                      "the command-line overrides")
    over = absolute_paths(over, exp.kind.file_keys, base)
    if smoke:
        over["smoke"] = True
    search = Search.parse({}, where, schema.check_keys) if single else exp.parsed
    refuse_searched_overrides(over, search, where)
    points, configs = _resolve_grid(exp.kind, exp.settings, search, over, where)
    grid_size = len(points)
    only = list(only or [])
    if smoke:
        only += smoke_seed_filter(points, only)
    if only:  # on the values as configured: --smoke must not change what a filter matches
        as_configured = configs if not smoke else [
            exp.kind.resolve(exp.settings, search.layer(p), {**over, "smoke": False})
            for p in points]
        keep = only_filter.select(only_filter.parse_only(only, schema), search.section, points,
                                  as_configured, schema)
        search = search.restrict([points[i] for i in keep])
        configs = [configs[i] for i in keep]
    exp.kind.check_plan(configs, where)
    first = configs[0]
    out = output or exp.kind.output_setting(first)
    out_dir = base / Path(out).expanduser() if out else base / "results" / exp.stem
    return SweepPlan(kind=exp.kind, name=first.name, out_dir=out_dir.resolve(),
                     settings=exp.settings, overrides=over, parsed=search, configs=configs,
                     only=only, grid_size=grid_size, num_samples=num_samples)


def refuse_searched_overrides(overrides: dict[str, Any], search: Search, where: str) -> None:
    """An override may not set a key the search varies (a grid or sampled key, or one a case
    sets): every trial would run the override's value under its grid value's name, and the
    report would count identical trials as seeds (as a grid value listed twice would)."""
    owners: dict[str, str] = {}
    for key, (spec_kind, args) in search.specs.items():
        if is_case_key(key):
            owners.update({k: key for case in args for k in case if k != NAME})
        else:
            owners[key] = key if spec_kind == "grid" else ""
    for key, value in overrides.items():
        if key == "smoke" or key not in owners:
            continue
        owner = owners[key]
        if is_case_key(owner):
            what = f"the cases of search '{owner}' set"
            fix = (f"pick cases with --only {owner}=NAME (only=[...] from Python), or take "
                   f"{key} out of the cases")
        elif owner:
            what = "the search section's grid varies"
            fix = (f"run part of the grid with --only {key}={value} (only=[...] from Python), "
                   f"or take {key} out of the search section to set it for every trial")
        else:
            what = "the search section samples"
            fix = f"narrow its range in the search section, or take {key} out of it"
        raise ConfigError(
            f"override {key}={value} sets a key {what} in {where}: every trial would run "
            f"{key}={value} under a name that says otherwise, and the report would count "
            f"identical trials as seeds; {fix}")


def _plan_recorded(sweep_dir: Path, overrides: Any, output: str | None, smoke: bool,
                   only: list[str] | None, num_samples: int) -> SweepPlan:
    """The plan of the sweep recorded in ``sweep_dir/sweep.yaml``, with the same trials (that
    they ran what the record says is checked by ``sweep_dir.check_output``)."""
    sweep_dir = sweep_dir.expanduser().resolve()
    record_path = sweep_dir / SWEEP_FILE
    if not record_path.is_file() and _holds_trials(sweep_dir):
        raise ConfigError(
            f"{sweep_dir} holds a sweep's trials but no {SWEEP_FILE} (deleted?), so it cannot "
            f"be resumed as recorded; resume it with the experiment YAML it was launched from: "
            f"`kdci-ray sweep CONFIG --output {sweep_dir} --resume` (each started trial is "
            f"checked against it), or start it again with `CONFIG --output {sweep_dir} "
            f"--overwrite`")
    if not record_path.is_file():
        raise ConfigError(
            f"{sweep_dir} is a directory but not a kdci-ray sweep directory (no {SWEEP_FILE}); "
            f"pass an experiment YAML, or the directory of a sweep to resume"
        )
    if overrides or smoke or only or num_samples != 1 or (
            output and Path(output).expanduser().resolve() != sweep_dir):
        raise ConfigError(
            f"{sweep_dir} is a recorded sweep: it is resumed exactly as launched (its "
            f"{SWEEP_FILE}); drop the key=value overrides, --smoke, --only, num_samples and "
            f"--output, or run the experiment YAML into a new --output"
        )
    try:
        record = load_record(sweep_dir) or {}
    except BadRecord as exc:
        raise ConfigError(f"{exc}; pass the experiment YAML with --output {sweep_dir} --resume "
                          f"to resume it (each started trial is checked against it), or with "
                          f"--output {sweep_dir} --overwrite to start again") from None
    where = str(record_path)
    kind = kind_named(str(record.get("kind") or DEFAULT_KIND), where)
    settings = record.get("settings") or {}
    over = dict(record.get("overrides") or {})
    kind.schema.check_keys(settings, f"{record_path} (settings)")
    kind.schema.check_keys(over, f"{record_path} (overrides)")
    search = Search.parse(record.get("search") or {}, where, kind.schema.check_keys)
    points, configs = _resolve_grid(kind, settings, search, over, where)
    return SweepPlan(kind=kind, name=str(record.get("name") or configs[0].name),
                     out_dir=sweep_dir, settings=settings, overrides=over, parsed=search,
                     configs=configs, only=list(record.get("only") or []),
                     grid_size=len(points), num_samples=int(record.get("num_samples") or 1))


def _holds_trials(directory: Path) -> bool:
    """Tune's experiment state or a started trial (a ``config.yaml``) is there."""
    return any(directory.glob("experiment_state-*.json")) or \
        any(directory.glob("*/config.yaml"))


def _resolve_grid(kind: ExperimentKind, settings: dict[str, Any], search: Search,
                  over: dict[str, Any], where: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The grid points of ``search`` and each one's resolved (validated) config; every value a
    sampled key can draw is checked too, so no trial fails on one."""
    points = search.points()
    if not points or search.count() == 0:
        raise ConfigError(f"{where}: the search section expands to zero trials")
    configs = [kind.resolve(settings, search.layer(point), over) for point in points]
    space = search.param_space() if search.sampled() else {}
    for key in search.sampled():
        for value in sampled_values(space[key]):
            for point in points:
                try:
                    kind.resolve(settings, search.layer({**point, key: value}), over)
                except ConfigError as exc:
                    raise ConfigError(f"{where}: search key '{key}' can draw {value!r}, which "
                                      f"a trial would refuse: {exc}") from None
    return points, configs


def check_inputs(plan: SweepPlan, log=print) -> None:
    """Before any trial: the kind reads every input once and does the work its trials share."""
    plan.kind.check_inputs(plan, log)
