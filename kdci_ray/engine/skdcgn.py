"""The SKDCGN kind (``kind: skdcgn``): distil a counterfactual generative network's mechanisms
into small student generators and score their counterfactuals (``kdci_ray.cgn``).

A trial is the whole pipeline (``kdci_ray.cgn.pipeline.run``) in the Tune trial's process, one
CPU; trials share teachers and students through the SKDCGN cache (``kdci_ray.cgn.cache``), so a
resumed sweep reruns an unfinished trial quickly. Each trial directory gets ``config.yaml``,
``metrics.json`` (its result row), ``samples.png`` and TensorBoard events; the sweep gets the
same record, resume, placement check and report handling as every kind
(``kdci_ray.results.skdcgn`` writes its tables).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdci_ray.atomic import atomic_write_text
from kdci_ray.cgn import config as cgn_config
from kdci_ray.config import ConfigError
from kdci_ray.engine.kinds import ExperimentKind, TuneOptions
from kdci_ray.engine.plan import SweepPlan


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
        """Input files (a published teacher's checkpoint, the Wildlife textures) must be absolute
        paths: a trial runs in its own directory, where a relative one would name another file."""
        for cfg in configs:
            for key, path in (("teacher.checkpoint", cfg.teacher.checkpoint),
                              ("data.textures", cfg.data.textures)):
                if path.strip() and not Path(path).expanduser().is_absolute():
                    raise ConfigError(f"{where}: {key} {path!r} is relative; a trial runs in "
                                      f"its own directory: give the absolute path "
                                      f"({Path(path).expanduser().resolve()})")

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
        import ray

        if ray.cluster_resources().get("CPU", 0) < 1:
            raise ConfigError("an SKDCGN trial needs one CPU and the Ray cluster has none; "
                              "add a node with CPUs")

    def trial_resources(self, plan: SweepPlan) -> dict[str, float]:
        return {"CPU": 1.0}

    def tune_options(self, plan: SweepPlan) -> TuneOptions:
        return TuneOptions(max_failures=0, reuse_actors=True)

    def run_trial(self, cfg: cgn_config.CGNConfig, trial_dir: Path,
                  point: dict[str, Any]) -> None:
        from ray import tune

        from kdci_ray.cgn.pipeline import run
        from kdci_ray.results.skdcgn import METRICS_FILE, variant_name
        from kdci_ray.train.runtime import limit_threads

        limit_threads()
        metrics = run(cfg, trial_dir, log=lambda msg: print(msg, flush=True))
        row = {"variant": variant_name(point), "seed": cfg.seed, **metrics}
        atomic_write_text(trial_dir / METRICS_FILE, json.dumps(row, indent=2))
        tune.report({**{k: v for k, v in row.items() if isinstance(v, (int, float))},
                     "finished": 1.0})

    def report(self, sweep_dir: Path, title: str, log=None) -> str:
        from kdci_ray.results.skdcgn import write_all

        return write_all(sweep_dir, title, log)
