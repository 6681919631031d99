"""The Tune driver: a sweep is a Ray Tune grid whose every trial trains through Ray Train.

Ray Train V2 way: each Tune *function* trial builds a ``TorchTrainer`` and calls ``fit()``; the
trainer's ``TuneReportCallback`` forwards the workers' reports to Tune. The trial itself holds no
CPU (only the Train workers do), and Tune never stops a trial early (a stopped Train-driving trial
would keep its workers' CPUs).

Everything a user can get wrong is checked before the first trial starts: every grid point is
resolved into a full config (and every value a sampled spec can draw is checked), the inputs are
checked and the shared work done in ``kdci_ray.tune.pretrial``, and the output directory must be
new or hold the same sweep to resume (``kdci_ray.tune.sweep_dir``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdci_ray.config import (
    ConfigError,
    ExperimentConfig,
    parse_overrides,
    resolve,
    save_resolved,
    to_flat,
)
from kdci_ray.results import report
from kdci_ray.search import only as only_filter
from kdci_ray.search.cases import case_lookup, config_layer, expand, load_sweep_file
from kdci_ray.search.space import build_param_space, check_sampled, grid_points
from kdci_ray.train.cluster_wait import watch_cluster
from kdci_ray.train.run_logs import stopped_reason
from kdci_ray.tune.naming import trial_dirname
from kdci_ray.tune.sweep_dir import (
    SWEEP_FILE,
    BadRecord,
    load_record,
)

HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's marker resource of the head node
LOCAL_RAY_ENV = {  # a Ray started on this machine (no RAY_ADDRESS): the defaults it runs with
    "RAY_AUTH_MODE": "disabled",  # nobody else can reach it
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",  # a failed worker is noticed at once
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # one machine is never preempted: one actor
}                                                 # fewer for every trial to start


@dataclass
class SweepPlan:
    name: str
    out_dir: Path
    settings: dict[str, Any]  # YAML settings (fixed keys)
    overrides: dict[str, Any]  # command-line overrides (win over sampled values)
    search: dict[str, Any]  # as run: cut to the --only filters
    configs: list[ExperimentConfig]  # one per grid point (validation and teacher set-up)
    only: list[str] = field(default_factory=list)  # the --only filters, as given
    grid_size: int = 0  # grid points before --only


def smoke_seed_filter(points: list[dict[str, Any]], only: list[str]) -> list[str]:
    """Smoke mode runs the first seed of a searched ``seed`` axis (seeds add no code path):
    ``["seed=<first>"]``, or ``[]`` without such an axis or when ``--only`` already picks seeds."""
    if any(item.partition("=")[0].strip() == "seed" for item in only):
        return []
    seeds = [p["seed"] for p in points if "seed" in p]
    return [f"seed={seeds[0]}"] if len(set(map(repr, seeds))) > 1 else []


def plan_sweep(config_path: str | Path, overrides: list[str] | None = None,
               output: str | None = None, smoke: bool = False, single: bool = False,
               launch_dir: Path | None = None, only: list[str] | None = None) -> SweepPlan:
    """Parse and validate a sweep without starting Ray; ``single`` ignores the search section;
    ``smoke`` keeps the first value of a searched ``seed`` axis (``smoke_seed_filter``).

    ``only`` (``["method=dafl", ...]``) keeps the grid points whose resolved configs match, see
    ``kdci_ray.search.only``; data and checkpoints are not read here. ``config_path`` may also be
    an existing sweep directory: the sweep recorded in its ``sweep.yaml`` (to resume it)."""
    if Path(config_path).expanduser().is_dir():
        return _plan_recorded(Path(config_path), overrides, output, smoke, only)
    exp = load_sweep_file(config_path)
    where = str(exp.path)
    over = parse_overrides(overrides or [])
    if smoke:
        over["smoke"] = True
    search = {} if single else exp.search
    points, configs = _resolve_grid(exp.settings, search, over, where)
    grid_size = len(points)
    only = list(only or [])
    if smoke:
        only += smoke_seed_filter(points, only)
    if only:  # on the values as configured: --smoke must not change what a filter matches
        as_configured = configs if not smoke else [
            resolve(exp.settings, config_layer(p), {**over, "smoke": False}) for p in points]
        keep = only_filter.select(only_filter.parse_only(only), search, points, as_configured)
        search = only_filter.restrict(search, [points[i] for i in keep], where)
        configs = [configs[i] for i in keep]
    sweep_trainer(configs, where)
    first = configs[0]
    out = output or first.run.output
    base = launch_dir or Path.cwd()
    out_dir = Path(out).expanduser() if out else base / "results" / exp.stem
    return SweepPlan(name=first.name, out_dir=out_dir.resolve(), settings=exp.settings,
                     overrides=over, search=search, configs=configs, only=list(only or []),
                     grid_size=grid_size)


def _plan_recorded(sweep_dir: Path, overrides: list[str] | None, output: str | None,
                   smoke: bool, only: list[str] | None) -> SweepPlan:
    """The plan of the sweep recorded in ``sweep_dir/sweep.yaml``, with the same trials (that
    they ran what the record says is checked by ``sweep_dir.check_output``)."""
    from kdci_ray.config import check_keys

    sweep_dir = sweep_dir.expanduser().resolve()
    record_path = sweep_dir / SWEEP_FILE
    if not record_path.is_file():
        raise ConfigError(
            f"{sweep_dir} is a directory but not a kdci-ray sweep directory (no {SWEEP_FILE}); "
            f"pass an experiment YAML, or the directory of a sweep to resume"
        )
    if overrides or smoke or only or (output and Path(output).expanduser().resolve()
                                      != sweep_dir):
        raise ConfigError(
            f"{sweep_dir} is a recorded sweep: it is resumed exactly as launched (its "
            f"{SWEEP_FILE}); drop the key=value overrides, --smoke, --only and --output, or run "
            f"the experiment YAML into a new --output"
        )
    try:
        record = load_record(sweep_dir) or {}
    except BadRecord as exc:
        raise ConfigError(f"{exc}; pass the experiment YAML with --output {sweep_dir} --resume "
                          f"to resume it (each started trial is checked against it), or with "
                          f"--output {sweep_dir} --overwrite to start again") from None
    search = record.get("search") or {}
    settings = record.get("settings") or {}
    over = dict(record.get("overrides") or {})
    check_keys(settings, f"{record_path} (settings)")
    check_keys(over, f"{record_path} (overrides)")
    points, configs = _resolve_grid(settings, search, over, str(record_path))
    return SweepPlan(name=str(record.get("name") or configs[0].name), out_dir=sweep_dir,
                     settings=settings, overrides=over, search=search, configs=configs,
                     only=list(record.get("only") or []), grid_size=len(points))


def _resolve_grid(settings: dict[str, Any], search: dict[str, Any], over: dict[str, Any],
                  where: str) -> tuple[list[dict[str, Any]], list[ExperimentConfig]]:
    """The grid points of ``search`` and each one's resolved (validated) config; every value a
    sampled spec can draw is checked too (``_check_sampled``), so no trial fails on one."""
    points = grid_points(search, where)
    space = build_param_space(search, where)  # validates the specs' own shape
    if not points:
        raise ConfigError(f"{where}: the search section expands to zero trials")
    configs = [resolve(settings, config_layer(point), over) for point in points]
    check_sampled(space, settings, points, over, where)
    return points, configs


def trial_fn(params: dict[str, Any], settings: dict[str, Any], overrides: dict[str, Any],
             cases: dict[str, dict[str, dict[str, Any]]] | None = None,
             sweep_dir: str | None = None) -> None:
    """One Tune trial: resolve its config (case names looked up in ``cases``), save it, train it
    with its ``run.trainer``: in this process (``tune_trial``) or with Ray Train (``ray_train``).

    The run's files (TensorBoard events, checkpoints, ``student.pt``) go straight to the trial's
    directory in the sweep directory, not to Tune's per-session staging copy of it: a trial
    resumed by a later driver (another Ray session) must find its checkpoints there. On a
    multi-node cluster the sweep directory is on shared storage (``cluster.yaml``)."""
    from ray import tune

    context = tune.get_context()
    trial_dir = Path(sweep_dir) / context.get_trial_name() if sweep_dir else \
        Path(context.get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    point = expand(params, cases or {})  # its searched keys are the trial's TensorBoard HParams
    cfg = resolve(settings, config_layer(point), overrides)
    save_resolved(cfg, trial_dir / "config.yaml")
    if cfg.run.trainer == "tune_trial":
        from kdci_ray.train.tune_trial import fit_in_trial

        fit_in_trial(cfg, trial_dir, searched=point)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from kdci_ray.train.ray_train import fit

    fit(cfg, to_flat(cfg), trial_dir, callbacks=[TuneReportCallback()], searched=point)


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


def _max_concurrent(cfg: ExperimentConfig) -> int:
    """``run.max_concurrent_trials``, else as many trials as the cluster's nodes can hold at
    once, counting the nodes an autoscaling cluster may still add (``train.placement``)."""
    from kdci_ray.train.placement import cluster_capacity

    run = cfg.run
    if run.max_concurrent_trials > 0:
        return run.max_concurrent_trials
    return max(1, cluster_capacity(run) // run.workers)


def init_ray() -> bool:
    """Connect to ``RAY_ADDRESS`` or start a local Ray; returns True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):  # a cluster: its auth mode (token) comes from the env
        from kdci_ray import thread_env

        # Ray sets OMP_NUM_THREADS to a worker's CPUs where its node's environment lacks it:
        # every process of this job gets the driver's thread counts (bit-identical numbers, and
        # the teacher cache key they are part of)
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": thread_env()})
    else:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False)
    return True


@contextmanager
def _tune_tensorboard_off() -> Iterator[None]:
    """Rank 0 already writes TensorBoard events with exact tags (``eval/acc``) into each trial
    directory; keep Tune from adding a second, ``ray/tune/``-prefixed copy there. Scoped, so the
    process environment is restored afterwards."""
    key = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


@dataclass
class SweepOutcome:
    table: str  # the Markdown comparison table (also in summary.md)
    errors: list[str]  # one line per failed trial
    unfinished: list[str] = field(default_factory=list)  # trials an interruption left unfinished
    stopped: dict[str, str] = field(default_factory=dict)  # trial -> why it stopped (NaN loss)

    @property
    def interrupted(self) -> bool:
        return bool(self.unfinished)


def _trainable(plan: SweepPlan) -> Any:
    from ray import tune

    fn = tune.with_parameters(trial_fn, settings=plan.settings, overrides=plan.overrides,
                              cases=case_lookup(plan.search), sweep_dir=str(plan.out_dir))
    if sweep_trainer(plan.configs) == "tune_trial":
        from kdci_ray.train.tune_trial import trial_resources

        return tune.with_resources(fn, trial_resources(plan.configs[0]))
    # no CPU (only its Train workers hold some), and on the head node: a trial's driver and its
    # Train controller must not die with a preempted spot worker node
    return tune.with_resources(fn, {"cpu": 0, "memory": 256 * 1024**2, HEAD_NODE_RESOURCE: 0.001})


def _tune_failures(plan: SweepPlan) -> dict[str, Any]:
    """Tune's own trial retries and actor reuse: a ``tune_trial`` trial is retried by Tune (from
    its latest checkpoint, ``run.max_failures`` times) and its process serves the next trial
    (torch and kdci_ray imported once per slot); a ``ray_train`` trial is retried by Ray Train."""
    from ray import tune

    if sweep_trainer(plan.configs) != "tune_trial":
        return {"failure": tune.FailureConfig(max_failures=0), "reuse_actors": False}
    return {"failure": tune.FailureConfig(max_failures=plan.configs[0].run.max_failures),
            "reuse_actors": True}


def check_resources(plan: SweepPlan) -> None:
    """Every distinct resource request of the grid must fit the cluster (Ray initialised)."""
    from kdci_ray.train.placement import check_cluster

    seen = set()
    for cfg in plan.configs:
        r = cfg.run
        key = (r.workers, r.cpus_per_worker, r.use_gpu, r.gpus_per_worker)
        if key not in seen:
            seen.add(key)
            check_cluster(r)


def run_sweep(plan: SweepPlan, resume: bool = False) -> SweepOutcome:
    """Run every trial (``resume``: continue the interrupted sweep in ``plan.out_dir``: finished
    trials are kept, unfinished and failed ones continue from their last checkpoint), then write
    the comparison table and report (failed trials are listed, not fatal)."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    started = init_ray()
    try:
        check_resources(plan)
        if resume:
            tuner = tune.Tuner.restore(str(plan.out_dir), _trainable(plan),
                                       resume_unfinished=True, resume_errored=True)
        else:
            retry = _tune_failures(plan)
            tuner = tune.Tuner(
                _trainable(plan),
                param_space=build_param_space(plan.search),
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=_max_concurrent(plan.configs[0]),
                    reuse_actors=retry["reuse_actors"],
                    trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
                run_config=tune.RunConfig(name=plan.out_dir.name,
                                          storage_path=str(plan.out_dir.parent),
                                          failure_config=retry["failure"],
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                          callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],
                                          verbose=1),
            )
        with _tune_tensorboard_off(), watch_cluster(_log_line):
            results = tuner.fit()
        errors = [_last_line(r.error) for r in results if r.error is not None]
        ended = [Path(r.path).name for r in results
                 if r.error is None and not (r.metrics or {}).get("finished")]
        stopped = {name: reason for name in ended
                   if (reason := stopped_reason(plan.out_dir / name))}
        unfinished = [name for name in ended if name not in stopped]
    finally:
        if started:
            ray.shutdown()
    return SweepOutcome(report(plan.out_dir, title=plan.name), errors, unfinished, stopped)


def _log_line(msg: str) -> None:
    print(f"[kdci-ray] {msg}", flush=True)


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else repr(error)
