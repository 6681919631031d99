"""The one-process trainer (``run.trainer: tune_trial``): the loop inside the Tune trial itself.

A trial with one CPU worker gains nothing from a TorchTrainer but pays for it: a Train controller,
a worker process, a synchronisation actor, a placement-group cleaner and a dataset manager, each
importing Ray and torch, 12 to 15 s of a 2-core machine per trial (``benchmarks/ray_overhead.py``).
Here the Tune trial's process runs ``distill`` directly and reports with ``ray.tune.report``;
Tune persists its checkpoints in the trial directory (``checkpoint_*``), retries a failed trial
from the latest one (``run.max_failures``, Tune's ``FailureConfig``) and resumes an interrupted
sweep from it. The run directory gets the same files as under Ray Train (``run_reporter``), and
the failure record (``failures.jsonl``) is written by the trial, since there is no controller.

The trial persists each checkpoint itself, before the driver hears of it: a driver stopped in
between (Ctrl-C, a kill) saves a Tune state that lacks the trial's latest checkpoints. A resumed
trial therefore continues from the latest one it finds in its directory (``resume.newest_resume``).
"""

from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdci_ray.atomic import atomic_write
from kdci_ray.train.resume import STUDENT_FILE, newest_resume
from kdci_ray.train.run_logs import FAILURES_FILE
from kdci_ray.train.run_reporter import (
    RunReporter,
    append_record,
    last_line,
    record_stop,
    resume_state,
)

if TYPE_CHECKING:
    from kdci_ray.experiments.dfkd import ExperimentConfig


def fit_in_trial(cfg: ExperimentConfig, run_dir: Path,
                 searched: dict[str, Any] | None = None) -> dict[str, float]:
    """Train one configuration in this (Tune trial) process; the final student lands in
    ``run_dir/student.pt``. Returns the final metrics. ``searched``: the trial's searched point
    (cases expanded), whose keys are TensorBoard HParams (``RunReporter``)."""
    from ray import tune

    from kdci_ray.train.loop import distill

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    def send(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None:
            tune.report(metrics)
            return
        if metrics.get("finished"):  # the deployable student beside the trial's checkpoints
            with open(Path(checkpoint_dir) / STUDENT_FILE, "rb") as src:
                atomic_write(run_dir / STUDENT_FILE, lambda dst: shutil.copyfileobj(src, dst))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    report = None
    try:
        resume = newest_resume(run_dir, _tune_state(tune.get_checkpoint()), cfg.train.rounds)
        report = RunReporter(cfg, run_dir, 0, send, searched=searched, resume=resume)
        final = distill(cfg, report, resume=resume)
    except Exception as exc:  # Tune retries the trial from its latest checkpoint
        record_failure(run_dir, exc)
        raise
    finally:
        if report is not None:
            report.close()
    record_stop(final, run_dir, 0)
    return final


def _tune_state(checkpoint: Any) -> dict[str, Any] | None:
    """The state of the checkpoint Tune restores the trial from; None for none, and for the
    empty stand-in of one a killed driver deleted (``runner.stand_in_for_deleted_checkpoints``)."""
    if checkpoint is None:
        return None
    local = Path(checkpoint.path)
    if local.is_dir() and not any(local.iterdir()):
        return None
    return resume_state(checkpoint, 0)


def record_failure(run_dir: Path, exc: BaseException) -> None:
    """One ``failures.jsonl`` record, in the shape the Train controller writes."""
    error = last_line(exc)
    append_record(run_dir / FAILURES_FILE, {
        "ranks": [0], "error": error, "errors": {"0": error}, "time": time.time(),
        "traceback": "".join(traceback.format_exception(exc))[-4000:]})


def trial_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """What a ``tune_trial`` trial asks Tune for: one worker's bundle (``worker_bundle``)."""
    from kdci_ray.train.resources import worker_bundle

    return worker_bundle(cfg.run)
