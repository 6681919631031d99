"""The one loader of experiment files (and of the same content given as a Python dict).

An experiment is flat dotted keys (or one level of nesting), an optional ``kind`` (``dfkd``, the
default, or ``skdcgn``), and an optional ``search`` section with grid/sampled keys and
``cases`` (``kdci_ray.search``). Every key is checked against the kind's schema, with the file
named in the error; the search is parsed once (``Search``). Relative input paths (each kind's
``file_keys``) are made absolute here, once: in a file against the file's directory, in a dict
against the working directory, as command-line values are (``kdci_ray.engine.plan``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdci_ray.config.files import read_yaml
from kdci_ray.engine.kinds import DEFAULT_KIND, KIND_KEY, ExperimentKind, kind_named
from kdci_ray.errors import ConfigError
from kdci_ray.search import Search
from kdci_ray.search.cases import CASES


@dataclass
class Experiment:
    """A parsed experiment: its kind, fixed settings (dotted keys, ``name`` defaulted to the
    file's stem) and its search."""

    kind: ExperimentKind
    path: Path | None
    settings: dict[str, Any]
    parsed: Search

    @property
    def search(self) -> dict[str, Any]:
        """The ``search:`` section as written."""
        return self.parsed.section

    @property
    def stem(self) -> str:
        return self.path.stem if self.path else str(self.settings.get("name", "experiment"))


def load_experiment(config: str | Path | dict[str, Any], kind: str | None = None,
                    base: Path | None = None) -> Experiment:
    """Read and check an experiment file (or a dict of the same content); ``kind`` forces one
    (``kdci-ray cgn``), which the file may only repeat. Relative input paths (the kind's
    ``file_keys``, in the settings and the search) are made absolute: a file's against its own
    directory, a dict's against ``base`` (default: the working directory)."""
    if isinstance(config, dict):
        raw, path, where = dict(config), None, "the experiment given"
    else:
        path = Path(config).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (expected a flat YAML experiment "
                              f"file)")
        raw, where = read_yaml(path), str(path)
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, got "
                              f"{type(raw).__name__}")
    if not raw:
        raise ConfigError(f"{where} is empty: an experiment names at least its method or kind "
                          f"(e.g. `method: dafl`, `kind: skdcgn`) and usually a search section; "
                          f"see tune_configs/quickstart.yaml")
    paths_base = path.parent if path is not None else (base or Path.cwd())
    named = raw.pop(KIND_KEY, None)
    if kind is not None and named is not None and named != kind:
        raise ConfigError(f"{where} is a '{named}' experiment, not '{kind}': run it with "
                          f"`kdci-ray sweep`")
    exp_kind = kind_named(str(kind or named or DEFAULT_KIND), where)
    search = raw.pop("search", None) or {}
    if not isinstance(search, dict):
        raise ConfigError(f"{where}: 'search' must be a mapping of key: {{grid: [...]}}")
    schema = exp_kind.schema
    try:
        settings = schema.flatten(raw, where)
        if path is not None:
            settings.setdefault("name", path.stem)
        settings = absolute_paths(settings, exp_kind.file_keys, paths_base)
        search = _search_paths(search, exp_kind.file_keys, paths_base)
        schema.check_keys(settings, where)
        schema.check_keys({k: v for k, v in search.items() if k != CASES},
                          f"{where} (search section)")
        parsed = Search.parse(search, where, schema.check_keys)
    except ConfigError:
        if named is None and kind is None:
            _suggest_kind(raw, search, where)
        raise
    return Experiment(exp_kind, path, settings, parsed)


def absolute_path(value: Any, base: Path) -> Any:
    """``value`` read against ``base`` when it is a relative path (``~`` counts as absolute);
    anything else (empty, absolute, not a string) as given."""
    if isinstance(value, str) and value.strip() and not Path(value).expanduser().is_absolute():
        return str((base / value).resolve())
    return value


def absolute_paths(settings: dict[str, Any], keys: tuple[str, ...],
                   base: Path) -> dict[str, Any]:
    """``settings`` (dotted keys) with each relative path of ``keys`` made absolute against
    ``base``: an experiment file's directory, or the working directory for the command line."""
    return {k: absolute_path(v, base) if k in keys else v for k, v in settings.items()}


def _search_paths(search: dict[str, Any], keys: tuple[str, ...], base: Path) -> dict[str, Any]:
    """The ``search`` section with relative paths of ``keys`` made absolute: the values of a
    grid or choice over such a key, and those a case sets (dotted or nested one level). A
    malformed entry is left for ``Search.parse`` to name."""
    out = dict(search)
    for key, spec in search.items():
        if key == CASES:
            out[key] = _cases_paths(spec, keys, base)
        elif key in keys and isinstance(spec, list):
            out[key] = [absolute_path(v, base) for v in spec]
        elif key in keys and isinstance(spec, dict) and len(spec) == 1:
            ((spec_kind, values),) = spec.items()
            if spec_kind in ("grid", "choice") and isinstance(values, list):
                out[key] = {spec_kind: [absolute_path(v, base) for v in values]}
    return out


def _cases_paths(spec: Any, keys: tuple[str, ...], base: Path) -> Any:
    if isinstance(spec, dict):
        return {group: _cases_paths(entries, keys, base) for group, entries in spec.items()}
    if not isinstance(spec, list):
        return spec
    return [_case_paths(case, keys, base) if isinstance(case, dict) else case for case in spec]


def _case_paths(case: dict[str, Any], keys: tuple[str, ...], base: Path) -> dict[str, Any]:
    out = {}
    for key, value in case.items():
        if isinstance(value, dict) and isinstance(key, str):
            value = {sub: absolute_path(v, base) if f"{key}.{sub}" in keys else v
                     for sub, v in value.items()}
        elif key in keys:
            value = absolute_path(value, base)
        out[key] = value
    return out


def _suggest_kind(raw: dict[str, Any], search: dict[str, Any], where: str) -> None:
    """A file without ``kind`` whose keys are all another kind's, some of them not
    distillation keys: say so (raises)."""
    default = set(kind_named(DEFAULT_KIND).schema.valid_keys())
    for name in ("skdcgn",):
        other = kind_named(name).schema
        try:
            keys = {**other.flatten(raw), **{k: v for k, v in search.items() if k != CASES}}
            other.check_keys(keys)
        except ConfigError:
            continue
        if set(keys) <= default:
            continue
        raise ConfigError(f"{where} holds {name.upper()} keys but no `kind: {name}`: add that "
                          f"line (the experiment kind; without it a file is a distillation "
                          f"experiment)")
