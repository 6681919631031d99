"""The data-free distillation kind (``kind: dfkd``, the default): six DFKD methods with or
without KDCI, each trial one run of the loop (``kdci_ray.train.loop``).

A trial runs the loop with its ``run.trainer``: in the Tune trial's own process (``tune_trial``,
one CPU worker; ``kdci_ray.train.tune_trial``) or on a Ray Train worker group (``ray_train``:
``kdci_ray.train.ray_train``); either reports each evaluation as it goes. A grid must use one
trainer, and ``kdci.backend: cuml`` without ``RAY_ADDRESS`` needs cuML and a GPU on this
machine (a cluster's GPUs are checked by the engine once Ray is up). The pre-trial steps and the
Ray side of a sweep of this kind are ``kdci_ray.engine.dfkd``'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd.config import ExperimentConfig
from kdci_ray.experiments.dfkd.keys import DFKD_SCHEMA
from kdci_ray.experiments.dfkd.resolve import resolve, save_resolved
from kdci_ray.experiments.dfkd.validate import clusters_with_cuml
from kdci_ray.experiments.kinds import ExperimentKind


class DFKD(ExperimentKind):
    name = "dfkd"
    schema = DFKD_SCHEMA
    file_keys = ("data.root", "teacher.checkpoint", "kdci.source_checkpoint", "pool.path",
                 "run.output")

    def resolve(self, *layers: dict[str, Any]) -> ExperimentConfig:
        return resolve(*layers)

    def save(self, cfg: ExperimentConfig, path: Path) -> None:
        save_resolved(cfg, path)

    def output_setting(self, cfg: ExperimentConfig) -> str:
        return cfg.run.output

    def check_plan(self, configs: list[ExperimentConfig], where: str) -> None:
        sweep_trainer(configs, where)
        check_cuml_here(configs, where)

    def run_trial(self, cfg: ExperimentConfig, trial_dir: Path, point: dict[str, Any]) -> None:
        if cfg.run.trainer == "tune_trial":
            from kdci_ray.train.tune_trial import fit_in_trial

            fit_in_trial(cfg, trial_dir, searched=point)
            return
        from kdci_ray.train.ray_train import fit_under_tune

        fit_under_tune(cfg, trial_dir, searched=point)


def sweep_trainer(configs: list[ExperimentConfig], where: str = "the sweep") -> str:
    """The one ``run.trainer`` of a sweep's trials. Mixed trainers are refused: Tune's trial
    retries and resources are set per sweep, and a Train-driving trial must not be retried by
    Tune on top of Ray Train's own restarts."""
    kinds = {cfg.run.trainer for cfg in configs}
    if len(kinds) > 1:
        raise ConfigError(
            f"{where}: its trials resolve to different run.trainer values "
            f"({', '.join(sorted(kinds))}; auto picks tune_trial only for one CPU worker without "
            f"run.worker_resources): set run.trainer to one of them in the settings"
        )
    return kinds.pop()


def cuml_trials(configs: list[ExperimentConfig]) -> int:
    """Trials whose KDCI clusters with cuML (``kdci.backend: cuml``, KDCI on)."""
    return sum(map(clusters_with_cuml, configs))


CUML_FIX = ("set kdci.backend: auto (cuML where a GPU and cuML are present, else scikit-learn) "
            "or sklearn")


def check_cuml_here(configs: list[ExperimentConfig], where: str) -> None:
    """Without ``RAY_ADDRESS`` every trial runs on this machine: ``kdci.backend: cuml`` needs
    cuML and a CUDA GPU here (on a cluster, ``engine.dfkd.check_cuml_cluster`` asks the
    cluster)."""
    if os.environ.get("RAY_ADDRESS") or not cuml_trials(configs):
        return
    from kdci_ray.cluster import cuml_backend

    if not cuml_backend.available():
        raise ConfigError(f"{where}: kdci.backend=cuml clusters on a GPU with cuML, but this "
                          f"machine has no CUDA GPU with cuML (the gpu extra), and without "
                          f"RAY_ADDRESS every trial runs here; {CUML_FIX}")
