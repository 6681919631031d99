"""The one loader of experiment files (and of the same content given as a Python dict).

An experiment is flat dotted keys (or one level of nesting), an optional ``kind`` (``dfkd``, the
default, or ``skdcgn``), and an optional ``search`` section with grid/sampled keys and
``cases`` (``kdci_ray.search``). Every key is checked against the kind's schema, with the file
named in the error; the search is parsed once (``Search``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdci_ray.config import ConfigError
from kdci_ray.config.files import read_yaml
from kdci_ray.engine.kinds import DEFAULT_KIND, KIND_KEY, ExperimentKind, kind_named
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


def load_experiment(config: str | Path | dict[str, Any], kind: str | None = None) -> Experiment:
    """Read and check an experiment file (or a dict of the same content); ``kind`` forces one
    (``kdci-ray cgn``), which the file may only repeat."""
    if isinstance(config, dict):
        raw, path, where = dict(config), None, "the experiment given"
    else:
        path = Path(config).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (expected a flat YAML experiment "
                              f"file)")
        raw, where = read_yaml(path) or {}, str(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, got "
                              f"{type(raw).__name__}")
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
            settings = _files_beside(settings, exp_kind.file_keys, path.parent)
        schema.check_keys(settings, where)
        schema.check_keys({k: v for k, v in search.items() if k != CASES},
                          f"{where} (search section)")
        parsed = Search.parse(search, where, schema.check_keys)
    except ConfigError:
        if named is None and kind is None:
            _suggest_kind(raw, search, where)
        raise
    return Experiment(exp_kind, path, settings, parsed)


def _files_beside(settings: dict[str, Any], keys: tuple[str, ...],
                  base: Path) -> dict[str, Any]:
    """``settings`` with each relative file path of ``keys`` made absolute against ``base`` (the
    experiment file's directory), so that a file in the repository can name data beside it."""
    out = dict(settings)
    for key in keys:
        value = out.get(key)
        if isinstance(value, str) and value.strip() and not Path(value).expanduser().is_absolute():
            out[key] = str((base / value).resolve())
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
