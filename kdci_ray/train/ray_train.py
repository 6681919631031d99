"""The Ray Train adapter (``run.trainer: ray_train``): run the one loop on ``run.workers``
workers with a TorchTrainer. (One CPU worker runs in the Tune trial itself by default:
``kdci_ray.train.tune_trial``; what happens around the loop is shared, ``run_reporter``.)

Ray Train sets up the process group (gloo on CPU, NCCL on GPU); the loop sees torch.distributed
and DDP-wraps what it trains. Rank 0 writes TensorBoard events (exact tags: ``eval/acc``,
``train/loss``, ``kdci/*``...) into the run directory. Every ``run.checkpoint_every`` rounds each
rank puts its resume state into one checkpoint through ``ray.train.report`` (Ray's own pattern);
a worker group that Ray Train restarts after a failure (up to ``run.max_failures`` times), and a
trial that Tune resumes after the driver was interrupted, continue from the latest checkpoint
(``ray.train.get_checkpoint()``: Ray Train V2 restores it from the run's storage when a trainer
of the same name and storage path runs again). Each failure and each resume is appended to
``failures.jsonl`` (by the Train controller, so a worker lost with its node counts too) /
``resumes.jsonl`` in the run directory, every report to ``metrics.jsonl``. A worker group that
cannot be placed yet (an autoscaling cluster booting nodes) waits up to ``run.start_timeout_s``.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train
from ray.train import UserCallback
from ray.train.torch import TorchTrainer

from kdci_ray.environment import CACHES_FILE, log_cache_uses
from kdci_ray.train.resources import worker_bundle
from kdci_ray.train.resume import STUDENT_FILE, newest_resume
from kdci_ray.train.run_logs import FAILURES_FILE
from kdci_ray.train.run_reporter import (
    RunReporter,
    append_record,
    last_line,
    record_stop,
    resume_state,
)
from kdci_ray.train.runtime import Runtime, current_runtime, worker_device

if TYPE_CHECKING:
    from kdci_ray.experiments.dfkd import ExperimentConfig

TRAIN_STORAGE = "train"  # the trainer's directory in the run's: its checkpoint_* and state


def train_runtime(cfg: ExperimentConfig) -> Runtime:
    """This Train worker's rank, world size and device: with ``run.use_gpu`` the GPU Ray Train
    assigned it (``ray.train.torch.get_device()``, whatever its local rank), and a worker that
    was given a GPU but sees no usable CUDA stops with ``GPUUnavailable``."""
    import ray.train.torch

    assigned = ray.train.torch.get_device() if cfg.run.use_gpu else None
    return current_runtime(cfg.run.use_gpu, worker_device(cfg.run.use_gpu, assigned))


def train_func(config: dict[str, Any]) -> None:
    """Per-worker entry point (``train_loop_per_worker``)."""
    from kdci_ray.train.loop import distill

    cfg = config["cfg"]  # resolved by the driver; the workers get the same object
    run_dir = Path(config["run_dir"])
    rank = ray.train.get_context().get_world_rank()
    if rank == 0:
        log_cache_uses(run_dir / CACHES_FILE)  # the cache entries the run uses
    runtime = train_runtime(cfg)

    def send(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = (None if checkpoint_dir is None
                      else ray.train.Checkpoint.from_directory(checkpoint_dir))
        ray.train.report(metrics, checkpoint=checkpoint)

    context = ray.train.get_context()
    resume = newest_resume(run_dir / TRAIN_STORAGE, resume_state(ray.train.get_checkpoint(), rank),
                           cfg.train.rounds, rank, context.get_world_size())
    report = RunReporter(cfg, run_dir, rank, send, searched=config.get("searched"),
                         resume=resume)
    try:
        final = distill(cfg, report, runtime=runtime, resume=resume)
    finally:
        report.close()
    record_stop(final, run_dir, rank)


class FailureRecorder(UserCallback):
    """Appends one ``failures.jsonl`` record per failed worker group, from the Train controller:
    it also sees the workers that cannot say so themselves (a lost node, an OOM kill)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        errors = {rank: last_line(exc) for rank, exc in sorted(worker_exceptions.items())}
        append_record(self.run_dir / FAILURES_FILE, {
            "ranks": list(errors), "error": next(iter(errors.values()), ""),
            "errors": errors, "time": time.time(),
            "traceback": str(next(iter(worker_exceptions.values()), ""))[-4000:]})


def start_attempts(start_timeout_s: float) -> int:
    """Ray Train's ``controller_failure_limit`` that lets a worker group wait about
    ``start_timeout_s`` for its nodes: each start attempt waits
    ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (60 s by default), then counts as one controller
    failure and is retried (the placement request stays with the autoscaler meanwhile)."""
    per_attempt = float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", 60.0))
    return max(1, math.ceil(start_timeout_s / per_attempt))


@contextmanager
def sigint_handler_kept() -> Iterator[None]:
    """Ctrl-C's handler as before the block: Ray Train's ``fit`` installs its own (it aborts its
    controller) and leaves it behind, where a later Ctrl-C would ``sys.exit(0)`` for a run that
    has ended. Outside the main thread (no handler can be set there) nothing to do."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def fit(cfg: ExperimentConfig, run_dir: Path, callbacks: list | None = None,
        searched: dict[str, Any] | None = None) -> ray.train.Result:
    """Train one configuration with Ray Train; the final student lands in ``run_dir/student.pt``.

    Run again with the same ``run_dir`` after an interruption, it continues from the latest
    checkpoint there. ``searched``: the trial's searched point (cases expanded), whose keys are
    TensorBoard HParams (``RunReporter``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run = cfg.run
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": cfg, "run_dir": str(run_dir), "searched": searched or {}},
        scaling_config=ray.train.ScalingConfig(num_workers=run.workers, use_gpu=run.use_gpu,
                                               resources_per_worker=worker_bundle(run)),
        run_config=ray.train.RunConfig(
            name=TRAIN_STORAGE, storage_path=str(run_dir),
            failure_config=ray.train.FailureConfig(
                max_failures=run.max_failures,
                controller_failure_limit=start_attempts(run.start_timeout_s)),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[*(callbacks or []), FailureRecorder(run_dir)],
        ),
    )
    with sigint_handler_kept():
        result = trainer.fit()
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as ckpt_dir:
            shutil.copy2(Path(ckpt_dir) / STUDENT_FILE, run_dir / STUDENT_FILE)
    return result


def fit_under_tune(cfg: ExperimentConfig, run_dir: Path,
                   searched: dict[str, Any] | None = None) -> ray.train.Result:
    """``fit`` inside a Tune trial: each report of the worker group is the trial's report too."""
    from ray.tune.integration.ray_train import TuneReportCallback

    return fit(cfg, run_dir, callbacks=[TuneReportCallback()], searched=searched)
