"""The SKDCGN kind (``kind: skdcgn``): distil a counterfactual generative network's mechanisms
into small student generators and score their counterfactuals (``kdci_ray.cgn``).

A trial is the whole pipeline (``kdci_ray.cgn.pipeline.run``) in the Tune trial's process: one
CPU and, with ``run.use_gpu``, ``run.gpus_per_trial`` of a GPU, which the pipeline computes on (a
cluster without GPUs is refused before any trial starts; a trial that sees no usable CUDA fails,
never runs on the CPU instead). Trials share teachers and students through the SKDCGN cache
(``kdci_ray.cgn.cache``), so a resumed sweep reruns an unfinished trial quickly. Each trial
directory gets ``config.yaml``, ``metrics.json`` (its result row), ``samples.png`` and
TensorBoard events; the sweep gets the same record, resume, placement check and report handling
as every kind (``kdci_ray.results.skdcgn`` writes its tables).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdci_ray.atomic import atomic_write_text
from kdci_ray.cgn import config as cgn_config
from kdci_ray.engine.kinds import ExperimentKind, TuneOptions
from kdci_ray.engine.plan import SweepPlan
from kdci_ray.errors import ConfigError
from kdci_ray.train.placement import (
    NodeShape,
    alive_shapes,
    autoscaler_max_workers,
    autoscaler_shapes,
    placeable_workers,
)


def trial_bundle(run: cgn_config.CGNRunConfig) -> dict[str, float]:
    """What one SKDCGN trial asks Tune for: one CPU, plus ``run.gpus_per_trial`` of a GPU with
    ``run.use_gpu``."""
    return {"CPU": 1.0, "GPU": float(run.gpus_per_trial)} if run.use_gpu else {"CPU": 1.0}


def check_trial_placeable(bundle: dict[str, float], shapes: list[NodeShape],
                          max_added: int | None = None) -> None:
    """One ``ConfigError`` naming the fix when no node of the cluster (alive, or one the
    autoscaler may add: ``kdci_ray.train.placement``) can hold one trial's ``bundle``."""
    if placeable_workers(bundle, shapes, max_added) >= 1:
        return
    nodes = "; ".join(f"{s.count} x {s.name} (CPU {s.resources.get('CPU', 0):g}, GPU "
                      f"{s.resources.get('GPU', 0):g}{', autoscaled' if s.autoscaled else ''})"
                      for s in shapes) or "no nodes"
    if bundle.get("GPU", 0) > 0 and not any(s.resources.get("GPU", 0) > 0 for s in shapes):
        raise ConfigError(f"run.use_gpu is set but the Ray cluster has no GPU (nodes: {nodes}): "
                          f"add a GPU node (cluster.yaml: a worker node type with GPUs) or set "
                          f"run.use_gpu=false to run the SKDCGN trials on CPUs")
    raise ConfigError(f"no node of the Ray cluster can hold an SKDCGN trial, which asks for "
                      f"{bundle} (nodes: {nodes}): add a node with CPUs"
                      f"{' and GPUs, or set run.use_gpu=false' if 'GPU' in bundle else ''}")


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

    def check_inputs(self, plan: SweepPlan, log) -> None:
        """Each published teacher (``teacher.mode: pretrained``) loaded strictly once and checked
        against its data, and the Wildlife textures read, before Ray starts."""
        from kdci_ray.cgn.cache import pretrained_teacher
        from kdci_ray.cgn.pipeline import load_split

        seen: set[tuple] = set()
        for cfg in plan.configs:
            key = (cfg.teacher.checkpoint, cfg.data.variant, cfg.data.published,
                   cfg.data.textures)
            if key in seen or not (cfg.teacher.mode == "pretrained" or cfg.data.published):
                continue
            seen.add(key)
            try:
                probe = load_split(cfg, "test")
            except (OSError, ValueError) as exc:  # the textures: missing, partial, unreadable
                raise ConfigError(str(exc)) from None
            if cfg.teacher.mode == "pretrained":
                pretrained_teacher(cfg, probe, log)

    def check_resources(self, plan: SweepPlan) -> None:
        """Ray is up: a trial (one CPU, a GPU share with ``run.use_gpu``) must fit a node."""
        import ray

        check_trial_placeable(self.trial_resources(plan),
                              alive_shapes(ray.nodes()) + autoscaler_shapes(),
                              autoscaler_max_workers())

    def trial_resources(self, plan: SweepPlan) -> dict[str, float]:
        return trial_bundle(plan.configs[0].run)

    def tune_options(self, plan: SweepPlan) -> TuneOptions:
        return TuneOptions(max_failures=0, reuse_actors=True)

    def run_trial(self, cfg: cgn_config.CGNConfig, trial_dir: Path,
                  point: dict[str, Any]) -> None:
        from ray import tune

        from kdci_ray.cgn.pipeline import run
        from kdci_ray.results.skdcgn import METRICS_FILE, variant_name
        from kdci_ray.train.runtime import limit_threads, worker_device

        limit_threads()
        # inside a Tune trial Ray set CUDA_VISIBLE_DEVICES to the trial's GPU; GPUUnavailable
        # when run.use_gpu is set and no CUDA is usable
        device = worker_device(cfg.run.use_gpu)
        metrics = run(cfg, trial_dir, log=lambda msg: print(msg, flush=True), device=device)
        row = {"variant": variant_name(point), "seed": cfg.seed, **metrics}
        atomic_write_text(trial_dir / METRICS_FILE, json.dumps(row, indent=2))
        tune.report({**{k: v for k, v in row.items() if isinstance(v, (int, float))},
                     "finished": 1.0})

    def report(self, sweep_dir: Path, title: str, log=None) -> str:
        from kdci_ray.results.skdcgn import write_all

        return write_all(sweep_dir, title, log)
