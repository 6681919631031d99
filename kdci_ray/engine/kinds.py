"""Experiment kinds: what the one sweep engine needs from a kind of experiment.

A kind (``dfkd``: data-free distillation, ``kdci_ray.engine.dfkd``; ``skdcgn``: distilling a
counterfactual generative network, ``kdci_ray.engine.skdcgn``) provides its config schema (root
dataclass, smoke settings, validation, through ``resolve``), the shared work before any trial,
what one trial asks the cluster for, the trial itself (config, directory, searched point) and
its results report. Everything else — the experiment file and its ``search``, ``--only``, the
output directory and its record, resume, Ray, Tune — is the engine's, the same for every kind.

An experiment file names its kind with the top-level key ``kind`` (``kind: skdcgn``); without
it, it is a distillation experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kdci_ray.config.schema import Schema
from kdci_ray.errors import ConfigError

if TYPE_CHECKING:
    from kdci_ray.engine.plan import SweepPlan

KIND_KEY = "kind"
DEFAULT_KIND = "dfkd"


@dataclass(frozen=True)
class TuneOptions:
    """How Tune treats a kind's trials: its own retries (``max_failures``), whether one trial
    process serves the next (``reuse_actors``), and whether a scheduler may stop a trial early."""

    max_failures: int = 0
    reuse_actors: bool = True
    early_stop_ok: bool = True
    why_no_early_stop: str = ""


class ExperimentKind:
    """One kind of experiment; subclasses fill in the hooks (defaults: nothing to do)."""

    name: ClassVar[str]
    schema: ClassVar[Schema]
    summary_columns: ClassVar[tuple[str, ...]] = ()
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

    def check_inputs(self, plan: SweepPlan, log) -> None:
        """Before Ray starts a trial: read every input once, do the work the trials share."""

    def check_resources(self, plan: SweepPlan) -> None:
        """Ray is up: refuse a trial the cluster can never place."""

    def trial_resources(self, plan: SweepPlan) -> dict[str, float]:
        """What one trial asks Tune for."""
        return {"CPU": 1.0}

    def max_concurrent(self, plan: SweepPlan) -> int:
        """Trials at once (0: as many as the cluster's resources allow)."""
        return 0

    def tune_options(self, plan: SweepPlan) -> TuneOptions:
        return TuneOptions()

    def run_trial(self, cfg: Any, trial_dir: Path, point: dict[str, Any]) -> None:
        """Inside the Tune trial's process: run it, write its files, report to Tune (the last
        report has ``finished: 1``)."""
        raise NotImplementedError

    def report(self, sweep_dir: Path, title: str, log=None) -> str:
        """Rebuild the sweep's tables and ``report.md``; returns the summary Markdown."""
        raise NotImplementedError


def kind_named(name: str, where: str = "") -> ExperimentKind:
    """The kind called ``name``; an unknown one is an error naming the known ones."""
    from kdci_ray.engine.dfkd import DFKD
    from kdci_ray.engine.skdcgn import SKDCGN

    kinds = {k.name: k for k in (DFKD(), SKDCGN())}
    if name not in kinds:
        src = f"{where}: " if where else ""
        raise ConfigError(f"{src}unknown experiment kind '{name}' (known: "
                          f"{', '.join(kinds)}); set `kind:` to one of them")
    return kinds[name]
