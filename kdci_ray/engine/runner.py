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

import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdci_ray.engine.cluster_wait import watch_cluster
from kdci_ray.engine.kinds import kind_named
from kdci_ray.engine.naming import trial_dirname
from kdci_ray.engine.plan import SweepPlan
from kdci_ray.environment import CACHES_FILE, log_cache_uses
from kdci_ray.errors import ConfigError
from kdci_ray.search import Search
from kdci_ray.search.cases import expand
from kdci_ray.train.run_logs import stopped_reason

LOCAL_RAY_ENV = {  # a Ray started on this machine (no RAY_ADDRESS): the defaults it runs with
    "RAY_AUTH_MODE": "disabled",  # nobody else can reach it
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",  # a failed worker is noticed at once
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # one machine is never preempted: one actor
}                                                 # fewer for every trial to start


def init_ray() -> bool:
    """Connect to ``RAY_ADDRESS`` or start a local Ray; returns True when we started it. Ctrl-C
    meanwhile is held until Ray is up, which is then shut down before ``KeyboardInterrupt``."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:  # a cluster: its auth mode (token) comes from the env
        from kdci_ray.threads import thread_env

        check_address(address)
        with held_sigint() as held:
            try:
                # Ray sets OMP_NUM_THREADS to a worker's CPUs where its node's environment lacks
                # it: every process of this job gets the driver's thread counts (bit-identical
                # numbers, and the teacher cache key they are part of)
                ray.init(address=address, runtime_env={"env_vars": thread_env()})
            except ConnectionError as exc:  # address=auto with no cluster on this machine
                raise ConfigError(f"{NO_CLUSTER.format(address)} ({exc})") from None
    else:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
        with held_sigint() as held:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=False)
    if held:
        shutdown_ray()
        raise KeyboardInterrupt
    return True


def shutdown_ray() -> None:
    """``ray.shutdown()``, Ctrl-C held until it is done."""
    import ray

    with held_sigint():
        ray.shutdown()


@contextmanager
def held_sigint() -> Iterator[list[int]]:
    """Hold Ctrl-C (SIGINT) for the block: the list it yields gets the signals received, for
    the caller to act on after it. Outside the main thread (no handler can be set) a no-op."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


CONNECT_WAIT_S = 15.0  # how long RAY_ADDRESS may take to answer (a head node still starting)


NO_CLUSTER = ("nothing answers at RAY_ADDRESS={}: start the cluster (`ray up` / `ray start "
              "--head`) or unset RAY_ADDRESS to run on a local Ray")


def check_address(address: str, wait_s: float = CONNECT_WAIT_S) -> None:
    """Something must accept connections at ``RAY_ADDRESS`` (``host:port``, ``ray://host:port``,
    any ``scheme://host:port``) within ``wait_s``; else a ``ConfigError`` (Ray itself retries
    for minutes, warning every few seconds). ``auto`` is left to Ray, which fails at once
    without a cluster."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return
    hosts = [host.strip("[]")]
    if hosts[0] in ("localhost", "127.0.0.1", "::1"):  # Ray connects to this node's address
        from ray.util import get_node_ip_address

        hosts.append(get_node_ip_address())
    deadline = time.monotonic() + wait_s
    while True:
        for name in hosts:
            try:
                with socket.create_connection((name, int(port)), timeout=2.0):
                    return
            except OSError:
                pass
        if time.monotonic() >= deadline:
            raise ConfigError(NO_CLUSTER.format(address))
        time.sleep(0.5)


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
    log_cache_uses(trial_dir / CACHES_FILE)  # the cache entries this trial uses
    exp_kind = kind_named(kind)
    point = expand(params, search.cases())  # its searched keys: the trial's TensorBoard HParams
    cfg = exp_kind.resolve(settings, search.layer(params), overrides)
    exp_kind.save(cfg, trial_dir / "config.yaml")
    exp_kind.run_trial(cfg, trial_dir, point)


TUNE_ENV = {  # for the Tune run only
    # the trials' own events have exact tags (eval/acc): no second, ray/tune/-prefixed copy
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # frequent checkpoints make Tune save its state often, by design: no warning each time
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
# Tune's lines about an interrupted run: they name its Python API (``Tuner.restore``); kdci-ray
# says what to run instead
TUNE_INTERRUPT_LINES = ("Experiment has been interrupted", "Training has been interrupted",
                        "Trials did not complete", "Failed to fetch metrics")
TUNE_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis",
                "ray.tune.execution.tune_controller")


class _TuneLines(logging.Filter):
    """Replaces Tune's Ctrl-C line with kdci-ray's; drops its ``Tuner.restore`` hint and, after
    a killed driver, the traceback of deleting a checkpoint that driver had deleted already."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Stop signal received"):  # in Tune's signal handler: unbuffered
            os.write(2, b"[kdci-ray] Ctrl-C: stopping the sweep and saving its state (Ctrl-C "
                        b"again stops at once)\n")
            return False
        error = record.exc_info[1] if record.exc_info else None
        if "Error handling checkpoint" in message and isinstance(error, FileNotFoundError) \
                and "Path not found" in str(error):
            return False
        return not message.startswith(TUNE_INTERRUPT_LINES)


@contextmanager
def _tune_settings() -> Iterator[None]:
    """``TUNE_ENV`` and the Tune log filter, for the Tune run only; and the Ctrl-C handler of
    before it (Tune leaves its own, which only tells a run that has ended to stop)."""
    old = {key: os.environ.get(key) for key in TUNE_ENV}
    os.environ.update(TUNE_ENV)
    lines = _TuneLines()
    for name in TUNE_LOGGERS:
        logging.getLogger(name).addFilter(lines)
    main = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        for name in TUNE_LOGGERS:
            logging.getLogger(name).removeFilter(lines)
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from kdci_ray.results import report, summary

    started = init_ray()
    try:
        check_resources(plan)
        check_tuning(plan, scheduler, search_alg)
        options = plan.kind.tune_options(plan)
        if resume and restorable(plan):
            stand_in_for_deleted_checkpoints(plan.out_dir)
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
        with _tune_settings(), watch_cluster(_log_line):
            results = tuner.fit()
        outcome = _outcome(plan, results, early_stops=scheduler is not None)
    finally:
        if started:
            shutdown_ray()
    if outcome.interrupted and summary(plan.out_dir).empty:  # stopped before any trial began
        outcome.table = "(no trial had started: nothing to report yet)"
    else:
        outcome.table = report(plan.out_dir, title=plan.name)
    return outcome


# Tune's saved state: tuner.pkl (the Tuner's settings) and per driver session
# experiment_state-<session>.json (the trials) and the search state (basic-variant-state-...)
TUNER_FILE = "tuner.pkl"
STATE_FILE = re.compile(r"^(?P<kind>[a-z_-]+)-(?P<session>\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)"
                        r"\.(json|pkl)$")


def restorable(plan: SweepPlan) -> bool:
    """Whether Tune can restore the sweep in ``plan.out_dir`` from its saved state. Tune writes
    it in place: a driver killed meanwhile leaves it cut short. The newest session whose files
    all load is kept, newer ones set aside (``.cut-short``; Tune pairs its newest experiment and
    search states); when none is left, a grid runs again as new (its trials keep their names,
    each continues from its own files), a sampled search is a ``ConfigError``."""
    out = plan.out_dir
    sessions: dict[str, list[Path]] = {}
    for path in out.iterdir():
        if match := STATE_FILE.match(path.name):
            sessions.setdefault(match["session"], []).append(path)
    tuner = out / TUNER_FILE  # written in place at each start: no restore without it
    cut = tuner.is_file() and not _loads(tuner)
    for session in sorted(sessions, reverse=True) if tuner.is_file() and not cut else []:
        files = sessions[session]
        if any(p.name.startswith("experiment_state-") for p in files) \
                and all(_loads(p) for p in files):
            return True
        cut = True
        for path in files:
            path.rename(path.with_name(path.name + ".cut-short"))
    why = ("Tune's saved state was cut short (the driver was killed while writing it)" if cut
           else "Tune had saved no state yet (the driver was stopped first)")
    if plan.parsed.sampled():
        raise ConfigError(f"{out}: {why}, and a sampled search cannot be drawn again: start it "
                          f"anew with --overwrite")
    _log_line(f"{out}: {why}; the grid runs again, each trial from its latest checkpoint")
    return False


def stand_in_for_deleted_checkpoints(out: Path) -> list[Path]:
    """A driver killed after Tune deleted checkpoints past ``num_to_keep`` and before it saved
    its state again leaves a state naming a deleted checkpoint, and Tune refuses to restore that
    trial ("does not exist on storage anymore") on every resume. An empty directory stands in
    for it: the trial continues from its latest checkpoint on disk
    (``resume.newest_resume``); Tune deletes the stand-in in its turn. Returns them."""
    from ray.tune.experiment.trial import _TrainingRunMetadata

    state = json.loads(max(out.glob("experiment_state-*.json")).read_text())
    made = []
    for trial_json, metadata_json in state.get("trial_data", []):
        if json.loads(trial_json).get("status") == "TERMINATED":
            continue
        latest = _TrainingRunMetadata.from_json_state(metadata_json) \
            .checkpoint_manager.latest_checkpoint_result
        checkpoint = latest.checkpoint if latest is not None else None
        if checkpoint is None or checkpoint.filesystem.type_name != "local":
            continue
        path = Path(checkpoint.path)
        if path.parent.is_dir() and not path.exists():
            path.mkdir()
            made.append(path)
    return made


def _loads(path: Path) -> bool:
    """Whether a saved Tune file loads (experiment state: JSON; the others: pickles)."""
    from ray import cloudpickle

    try:
        data = path.read_bytes()
        if path.name.startswith("experiment_state-"):
            json.loads(data)
        else:
            cloudpickle.loads(data)
    except Exception:  # noqa: BLE001 - cut short: unpickling fails in many ways
        return False
    return True


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
