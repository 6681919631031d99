"""The thin Ray layer of the engine: start (or join) Ray, check the cluster once, run a planned
sweep as a Ray Tune experiment of function trials, and hand the directory to the results code.

Every kind's trial is the same Tune function (``trial_fn``): resolve its config from the
recorded settings, its point and the overrides, save it, and let the kind run it
(``ExperimentKind.run_trial``). The run's files go straight to the trial's directory in the
sweep directory, not to Tune's per-session staging copy: a trial resumed by a later driver
(another Ray session) must find its checkpoints there. On a multi-node cluster the sweep
directory is on shared storage (``cluster.yaml``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdci_ray.config import ConfigError
from kdci_ray.engine.kinds import kind_named
from kdci_ray.engine.naming import trial_dirname
from kdci_ray.engine.plan import SweepPlan
from kdci_ray.search import Search
from kdci_ray.search.cases import expand
from kdci_ray.train.cluster_wait import watch_cluster
from kdci_ray.train.run_logs import stopped_reason

LOCAL_RAY_ENV = {  # a Ray started on this machine (no RAY_ADDRESS): the defaults it runs with
    "RAY_AUTH_MODE": "disabled",  # nobody else can reach it
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",  # a failed worker is noticed at once
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # one machine is never preempted: one actor
}                                                 # fewer for every trial to start


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


def check_resources(plan: SweepPlan) -> None:
    """Every trial of the plan must fit the cluster (Ray initialised)."""
    plan.kind.check_resources(plan)


def trial_fn(params: dict[str, Any], kind: str, settings: dict[str, Any],
             overrides: dict[str, Any], search: Search, sweep_dir: str | None = None) -> None:
    """One Tune trial of any kind: resolve, save ``config.yaml``, run it."""
    from ray import tune

    context = tune.get_context()
    trial_dir = Path(sweep_dir) / context.get_trial_name() if sweep_dir else \
        Path(context.get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    exp_kind = kind_named(kind)
    point = expand(params, search.cases())  # its searched keys: the trial's TensorBoard HParams
    cfg = exp_kind.resolve(settings, search.layer(params), overrides)
    exp_kind.save(cfg, trial_dir / "config.yaml")
    exp_kind.run_trial(cfg, trial_dir, point)


@contextmanager
def _tune_tensorboard_off() -> Iterator[None]:
    """Trials write TensorBoard events with exact tags (``eval/acc``) into their directories;
    keep Tune from adding a second, ``ray/tune/``-prefixed copy there. Scoped, so the process
    environment is restored afterwards."""
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
    stopped: dict[str, str] = field(default_factory=dict)  # trial -> why it stopped early
    result_grid: Any = None  # Tune's ResultGrid

    @property
    def interrupted(self) -> bool:
        return bool(self.unfinished)


def _trainable(plan: SweepPlan) -> Any:
    from ray import tune

    fn = tune.with_parameters(trial_fn, kind=plan.kind.name, settings=plan.settings,
                              overrides=plan.overrides, search=plan.parsed,
                              sweep_dir=str(plan.out_dir))
    return tune.with_resources(fn, plan.kind.trial_resources(plan))


def check_tuning(plan: SweepPlan, scheduler: Any = None, search_alg: Any = None) -> None:
    """A scheduler that stops trials early only where the kind's trials can be stopped safely;
    a search algorithm only with a sampled search (it has nothing to choose in a grid)."""
    from ray.tune.schedulers import FIFOScheduler

    options = plan.kind.tune_options(plan)
    if scheduler is not None and type(scheduler) is not FIFOScheduler \
            and not options.early_stop_ok:
        raise ConfigError(f"scheduler {type(scheduler).__name__} stops trials early, which this "
                          f"sweep cannot allow: {options.why_no_early_stop}; run without a "
                          f"scheduler, or with run.trainer=tune_trial (one CPU worker per trial)")
    if search_alg is not None and not plan.parsed.sampled():
        raise ConfigError(f"search algorithm {type(search_alg).__name__} needs sampled keys "
                          f"(uniform, loguniform, randint, choice) in the search section; this "
                          f"one is a grid only")


def run_sweep(plan: SweepPlan, resume: bool = False, callbacks: list | None = None,
              search_alg: Any = None, scheduler: Any = None, metric: str | None = None,
              mode: str | None = None) -> SweepOutcome:
    """Run every trial (``resume``: continue the interrupted sweep in ``plan.out_dir``: finished
    trials are kept, unfinished and failed ones continue from their last checkpoint), then write
    the tables and report (failed trials are listed, not fatal)."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from kdci_ray.results import report

    started = init_ray()
    try:
        check_resources(plan)
        check_tuning(plan, scheduler, search_alg)
        options = plan.kind.tune_options(plan)
        if resume:
            tuner = tune.Tuner.restore(str(plan.out_dir), _trainable(plan),
                                       resume_unfinished=True, resume_errored=True)
        else:
            if (search_alg is not None or scheduler is not None) and metric is None:
                metric, mode = "eval/acc", mode or "max"
            tuner = tune.Tuner(
                _trainable(plan),
                param_space=plan.parsed.param_space(),
                tune_config=tune.TuneConfig(
                    num_samples=plan.num_samples, search_alg=search_alg, scheduler=scheduler,
                    metric=metric, mode=mode,
                    max_concurrent_trials=plan.kind.max_concurrent(plan) or None,
                    reuse_actors=options.reuse_actors,
                    trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name=plan.out_dir.name, storage_path=str(plan.out_dir.parent),
                    failure_config=tune.FailureConfig(max_failures=options.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), *(callbacks or [])],
                    verbose=1),
            )
        with _tune_tensorboard_off(), watch_cluster(_log_line):
            results = tuner.fit()
        outcome = _outcome(plan, results, early_stops=scheduler is not None)
    finally:
        if started:
            ray.shutdown()
    outcome.table = report(plan.out_dir, title=plan.name)
    return outcome


def _outcome(plan: SweepPlan, results: Any, early_stops: bool) -> SweepOutcome:
    """Failed, stopped and unfinished trials. A trial that ended without ``finished`` was
    stopped (its ``stopped.json`` says why, or the scheduler stopped it when every trial ended
    normally) or left unfinished by an interruption."""
    errors = [_last_line(r.error) for r in results if r.error is not None]
    ended = [Path(r.path).name for r in results
             if r.error is None and not (r.metrics or {}).get("finished")]
    stopped = {name: reason for name in ended
               if (reason := stopped_reason(plan.out_dir / name))}
    all_ended = results.num_terminated + results.num_errors == len(results)
    if early_stops and all_ended:
        stopped.update({name: "stopped early by the scheduler" for name in ended
                        if name not in stopped})
    unfinished = [name for name in ended if name not in stopped]
    return SweepOutcome("", errors, unfinished, stopped, results)


def _log_line(msg: str) -> None:
    print(f"[kdci-ray] {msg}", flush=True)


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else repr(error)
