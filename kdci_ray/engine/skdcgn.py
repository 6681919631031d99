"""The Ray side of the SKDCGN kind (``kdci_ray.experiments.skdcgn``).

Before Ray starts (``check_inputs``) each published teacher is loaded strictly once and checked
against its data, and the Wildlife textures read. Once Ray is up, a trial (one CPU, with
``run.use_gpu`` a share of a GPU) must fit a node of the cluster (``check_trial_placeable``: a
cluster without GPUs is refused before any trial starts). A trial reports its result row once,
when it has finished (``run_trial``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdci_ray.cgn import config as cgn_config
from kdci_ray.engine.kinds import SweepKind, TuneOptions
from kdci_ray.engine.placement import (
    NodeShape,
    alive_shapes,
    autoscaler_max_workers,
    autoscaler_shapes,
    placeable_workers,
)
from kdci_ray.engine.plan import SweepPlan
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.skdcgn.kind import SKDCGN, trial_bundle

__all__ = ["SKDCGNSweep", "check_trial_placeable", "trial_bundle"]


def check_trial_placeable(bundle: dict[str, float], shapes: list[NodeShape],
                          max_added: int | None = None) -> None:
    """One ``ConfigError`` naming the fix when no node of the cluster (alive, or one the
    autoscaler may add: ``kdci_ray.engine.placement``) can hold one trial's ``bundle``."""
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


class SKDCGNSweep(SweepKind, SKDCGN):
    """The SKDCGN kind with its pre-trial steps, placement check and Tune settings."""

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
                  point: dict[str, Any]) -> dict[str, Any]:
        """The kind's trial, then its row reported to Tune once (``finished: 1``)."""
        from ray import tune

        row = super().run_trial(cfg, trial_dir, point)
        tune.report({**{k: v for k, v in row.items() if isinstance(v, (int, float))},
                     "finished": 1.0})
        return row
