"""The Ray side of the data-free distillation kind (``kdci_ray.experiments.dfkd``).

Before the first trial (``check_inputs``), every input is checked and the shared work done once,
before Ray starts, so a bad input costs seconds, not a cluster: the cache directory is writable;
data readable; each distinct teacher present (the embedded one trained once here), fitting its
architecture and giving finite logits; file-backed pools readable; KDCI's other models trained or
checked; the build-once dictionaries and the pool selections of the sampling-based methods made
(``dictionary_job``; on the cluster's workers when ``RAY_ADDRESS`` is set, waiting visibly for
its nodes). ``kdci.backend: cuml`` on a cluster needs a node with a GPU (checked once Ray is up;
without ``RAY_ADDRESS`` the kind checks this machine while planning).

A trial with ``run.trainer: tune_trial`` holds one worker's bundle in the Tune trial's own
process; with ``ray_train`` the trial holds no CPU, its TorchTrainer's workers do, and Tune never
stops it early: a stopped Train-driving trial would keep its workers' CPUs.
"""

from __future__ import annotations

from typing import Any

from kdci_ray.engine.kinds import SweepKind, TuneOptions
from kdci_ray.engine.plan import SweepPlan
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import ExperimentConfig
from kdci_ray.experiments.dfkd.kind import CUML_FIX, DFKD, cuml_trials, sweep_trainer

HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's marker resource of the head node


class DFKDSweep(SweepKind, DFKD):
    """The distillation kind with its pre-trial steps, placement check and Tune settings."""

    def check_inputs(self, plan: SweepPlan, log) -> None:
        check_dfkd_inputs(plan, log)

    def check_resources(self, plan: SweepPlan) -> None:
        """Every distinct worker request of the grid must fit the cluster, and one with a GPU
        must be there for ``kdci.backend: cuml``."""
        import ray

        from kdci_ray.engine.placement import alive_shapes, autoscaler_shapes, check_cluster

        check_cuml_cluster(plan.configs, alive_shapes(ray.nodes()) + autoscaler_shapes())
        seen = set()
        for cfg in plan.configs:
            r = cfg.run
            key = (r.workers, r.cpus_per_worker, r.use_gpu, r.gpus_per_worker)
            if key not in seen:
                seen.add(key)
                check_cluster(r)

    def trial_resources(self, plan: SweepPlan) -> dict[str, float]:
        if sweep_trainer(plan.configs) == "tune_trial":
            from kdci_ray.train.tune_trial import trial_resources

            return trial_resources(plan.configs[0])
        # no CPU (only its Train workers hold some), and on the head node: a trial's driver and
        # its Train controller must not die with a preempted spot worker node
        return {"CPU": 0, "memory": 256 * 1024**2, HEAD_NODE_RESOURCE: 0.001}

    def max_concurrent(self, plan: SweepPlan) -> int:
        """``run.max_concurrent_trials``, else as many trials as the cluster's nodes can hold
        at once, counting the nodes an autoscaling cluster may still add."""
        from kdci_ray.engine.placement import cluster_capacity

        run = plan.configs[0].run
        if run.max_concurrent_trials > 0:
            return run.max_concurrent_trials
        return max(1, cluster_capacity(run) // run.workers)

    def tune_options(self, plan: SweepPlan) -> TuneOptions:
        """A ``tune_trial`` trial is retried by Tune from its latest checkpoint and its process
        serves the next trial; a ``ray_train`` trial is retried by Ray Train, and must never be
        stopped by Tune (its workers' CPUs would leak)."""
        if sweep_trainer(plan.configs) != "tune_trial":
            return TuneOptions(max_failures=0, reuse_actors=False, early_stop_ok=False,
                               why_no_early_stop=(
                                   "its trials drive Ray Train worker groups (run.trainer: "
                                   "ray_train), and a trial Tune stops early keeps its workers' "
                                   "CPUs: the next trial then waits forever"))
        return TuneOptions(max_failures=plan.configs[0].run.max_failures, reuse_actors=True)


def check_cuml_cluster(configs: list[ExperimentConfig], shapes: list[Any]) -> None:
    """``kdci.backend: cuml`` on a cluster none of whose nodes (alive, or one its autoscaler
    may add: ``NodeShape``) has a GPU is refused before any trial."""
    if not cuml_trials(configs) or any(s.resources.get("GPU", 0) > 0 for s in shapes):
        return
    nodes = ", ".join(f"{s.count} x {s.name}" for s in shapes) or "no nodes"
    raise ConfigError(f"kdci.backend=cuml clusters on a GPU with cuML, but no node of the Ray "
                      f"cluster has a GPU (nodes: {nodes}); add a GPU node type, or {CUML_FIX}")


def check_dfkd_inputs(plan: SweepPlan, log=print) -> None:
    """Data readable, teacher present and fitting its architecture (the embedded teacher is trained
    once here, not per trial), and the file-backed open-world pools of MosaicKD / DFND present."""
    import torch

    from kdci_ray.cache import check_cache_dir
    from kdci_ray.train.datasets import load_data
    from kdci_ray.train.teacher import check_finite, ensure_teacher, load_teacher, teacher_path

    check_cache_dir()
    datasets: dict[tuple, Any] = {}
    seen: set[tuple] = set()
    for cfg in plan.configs:
        d = cfg.data
        data_key = (d.name, d.root, d.image_size, d.test_fraction, d.split_seed)
        if data_key not in datasets:
            datasets[data_key] = load_data(cfg)  # raises a clear error for a missing data path
        data = datasets[data_key]
        _check_pool(cfg, data, seen)
        key = (teacher_path(cfg), cfg.teacher.arch, data_key)
        if key in seen:
            continue
        seen.add(key)
        ensure_teacher(cfg, log)
        teacher = load_teacher(cfg, data, torch.device("cpu"))  # one that does not fit fails
        check_finite(teacher, data, teacher_path(cfg))  # and one with NaN weights
    _prepare_kdci(plan, datasets, log)


def _prepare_kdci(plan: SweepPlan, datasets: dict[tuple, Any], log) -> None:
    """KDCI's shared work before any trial (``dictionary_job.prepare_kdci``): other models,
    build-once dictionaries and pool selections; on a cluster the pools are scored on its
    workers (Ray joined and the scorers' placement checked first; run_sweep reuses the link)."""
    from kdci_ray.engine.dictionary_job import prepare_kdci

    def connect() -> None:
        from kdci_ray.engine.runner import init_ray

        init_ray()
        plan.kind.check_resources(plan)  # before asking the autoscaler for nodes

    prepare_kdci(plan.configs, log, datasets=datasets, connect=connect)


def _check_pool(cfg: ExperimentConfig, data: Any, seen: set[tuple]) -> None:
    """Open a file-backed pool once (headers only: a missing or malformed pool fails here)."""
    from kdci_ray.methods import METHODS
    from kdci_ray.train.loop import open_world

    p = cfg.pool
    key = ("pool", p.source, p.path, p.size, p.transform, data.channels, data.image_size)
    if not METHODS[cfg.method].needs_open_world or p.source == "embedded" or key in seen:
        return
    seen.add(key)
    open_world(cfg, data)
