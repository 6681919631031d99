"""The SKDCGN kind (``kind: skdcgn``): distil a counterfactual generative network's mechanisms
into small student generators and score their counterfactuals (``kdci_ray.cgn``).

A trial is the whole pipeline (``kdci_ray.cgn.pipeline.run``) in the trial's process: one CPU
and, with ``run.use_gpu``, ``run.gpus_per_trial`` of a GPU, which the pipeline computes on (a
trial that sees no usable CUDA fails, never runs on the CPU instead). Trials share teachers and
students through the SKDCGN cache (``kdci_ray.cgn.cache``), so a resumed sweep reruns an
unfinished trial quickly. Each trial directory gets ``config.yaml``, ``metrics.json`` (its result
row, ``row``), ``samples.png`` and TensorBoard events. The pre-trial steps, the placement check
and the Tune side are ``kdci_ray.engine.skdcgn``'s; the tables ``kdci_ray.results.skdcgn``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdci_ray.cgn import config as cgn_config
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.kinds import ExperimentKind
from kdci_ray.experiments.skdcgn.row import write_row


def trial_bundle(run: cgn_config.CGNRunConfig) -> dict[str, float]:
    """What one SKDCGN trial asks for: one CPU, plus ``run.gpus_per_trial`` of a GPU with
    ``run.use_gpu``."""
    return {"CPU": 1.0, "GPU": float(run.gpus_per_trial)} if run.use_gpu else {"CPU": 1.0}


class SKDCGN(ExperimentKind):
    name = "skdcgn"
    schema = cgn_config.CGN_SCHEMA
    file_keys = ("teacher.checkpoint", "data.textures")

    def resolve(self, *layers: dict[str, Any]) -> cgn_config.CGNConfig:
        return cgn_config.resolve(*layers)

    def save(self, cfg: cgn_config.CGNConfig, path: Path) -> None:
        cgn_config.save(cfg, path)

    def output_setting(self, cfg: cgn_config.CGNConfig) -> str:
        return ""  # results/<file stem>/ under the launch directory, like every kind

    def check_plan(self, configs: list[Any], where: str) -> None:
        """Every trial asks for the same resources (Tune takes one request per sweep). Input
        files (``file_keys``) are absolute by now: the front door made them so."""
        bundles = {tuple(sorted(trial_bundle(cfg.run).items())) for cfg in configs}
        if len(bundles) > 1:
            raise ConfigError(f"{where}: its trials ask for different resources "
                              f"({', '.join(str(dict(b)) for b in sorted(bundles))}); Tune gives "
                              f"every trial of a sweep the same: set run.use_gpu and "
                              f"run.gpus_per_trial in the settings, not per case")

    def run_trial(self, cfg: cgn_config.CGNConfig, trial_dir: Path,
                  point: dict[str, Any]) -> dict[str, Any]:
        """The pipeline on the trial's device (``GPUUnavailable`` when ``run.use_gpu`` is set
        and no CUDA is usable: inside a Tune trial Ray set ``CUDA_VISIBLE_DEVICES`` to its GPU),
        then its row in ``metrics.json``; returns the row."""
        from kdci_ray.cgn.pipeline import run
        from kdci_ray.train.runtime import limit_threads, worker_device

        limit_threads()
        device = worker_device(cfg.run.use_gpu)
        metrics = run(cfg, trial_dir, log=lambda msg: print(msg, flush=True), device=device)
        return write_row(trial_dir, point, cfg.seed, metrics)
