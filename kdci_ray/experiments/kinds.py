"""Experiment kinds: what a kind of experiment is, whatever runs it.

A kind (``dfkd``: data-free distillation, ``kdci_ray.experiments.dfkd``; ``skdcgn``: distilling a
counterfactual generative network, ``kdci_ray.experiments.skdcgn``) provides its config schema
(root dataclass, smoke settings, validation, through ``resolve``; its ``save``), which of its
keys name files, checks across a grid's configs, the trial itself (config, directory, searched
point) and its result row. Everything else — the experiment file and its ``search``, ``--only``,
the output directory and its record, resume, the pre-trial steps, placement, Ray, Tune, the
report — is the engine's (``kdci_ray.engine``), the same for every kind; the engine adds its
Ray side to each kind (``kdci_ray.engine.kinds``).

An experiment file names its kind with the top-level key ``kind`` (``kind: skdcgn``); without
it, it is a distillation experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from kdci_ray.config.schema import Schema
from kdci_ray.errors import ConfigError

KIND_KEY = "kind"
DEFAULT_KIND = "dfkd"
KIND_NAMES = ("dfkd", "skdcgn")  # the default first


class ExperimentKind:
    """One kind of experiment; subclasses fill in the hooks (defaults: nothing to do)."""

    name: ClassVar[str]
    schema: ClassVar[Schema]
    # keys naming files or directories: a relative value is made absolute before Ray starts, in
    # an experiment file against that file's directory, on the command line, in a dict or in
    # ``overrides`` against the working directory (a trial runs in a directory of its own)
    file_keys: ClassVar[tuple[str, ...]] = ()

    def resolve(self, *layers: dict[str, Any]) -> Any:
        """The validated config of one trial from dotted-key layers (file, point, overrides)."""
        raise NotImplementedError

    def save(self, cfg: Any, path: Path) -> None:
        """The resolved config as flat YAML (``config.yaml`` of a trial), written atomically."""
        raise NotImplementedError

    def output_setting(self, cfg: Any) -> str:
        """The sweep directory a config names ("" = ``results/<file stem>/``)."""
        return ""

    def check_plan(self, configs: list[Any], where: str) -> None:
        """Checks across the grid's configs (each is already valid on its own)."""

    def run_trial(self, cfg: Any, trial_dir: Path, point: dict[str, Any]) -> dict[str, Any] | None:
        """Inside the trial's process: run it and write its files. A kind that reports as it
        goes (to Tune, through its trainer) returns None; one that reports once returns its
        result row, which the engine reports (with ``finished: 1``)."""
        raise NotImplementedError


def unknown_kind(name: str, where: str = "") -> ConfigError:
    """The error for an experiment kind that does not exist, naming the known ones."""
    src = f"{where}: " if where else ""
    return ConfigError(f"{src}unknown experiment kind '{name}' (known: {', '.join(KIND_NAMES)}); "
                       f"set `kind:` to one of them")


def kind_named(name: str, where: str = "") -> ExperimentKind:
    """The experiment kind called ``name`` (schema, trial, result row; the engine's
    ``kdci_ray.engine.kinds.kind_named`` adds the Ray side); an unknown one is an error."""
    if name == "dfkd":
        from kdci_ray.experiments.dfkd.kind import DFKD

        return DFKD()
    if name == "skdcgn":
        from kdci_ray.experiments.skdcgn.kind import SKDCGN

        return SKDCGN()
    raise unknown_kind(name, where)
