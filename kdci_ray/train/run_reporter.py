"""What a trial's process does around the one loop, whichever Ray layer runs it.

Both trainers (``run.trainer``) use this: ``ray_train`` (a TorchTrainer worker group,
``kdci_ray.train.ray_train``) and ``tune_trial`` (the loop inside the Tune trial's own process,
``kdci_ray.train.tune_trial``). Rank 0 writes TensorBoard events with exact tags (``eval/acc``,
``train/loss``, ``kdci/*``...) and appends every report to ``metrics.jsonl`` in the run directory;
a continuation from a checkpoint is appended to ``resumes.jsonl``; a run stopped on a non-finite
loss writes ``stopped.json``. Checkpoints are handed to the Ray layer's own ``report`` (Ray's
pattern: a temporary directory it persists), which is the only thing the two trainers differ in.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdci_ray.atomic import atomic_write_text
from kdci_ray.config import ExperimentConfig, save_resolved
from kdci_ray.train.resume import (
    METRICS_FILE,
    RESUMES_FILE,
    Snapshot,
    load_resume_state,
    save_snapshot,
)

INJECTED_MARK = ".injected_failure"

# the Ray layer's report: (metrics, checkpoint directory or None) -> None
SendReport = Callable[[dict[str, float], "str | None"], None]


class InjectedFailure(RuntimeError):
    """Raised once by ``run.inject_failure_round`` (tests of the restart path)."""


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended (a record per failure or resume, never rewritten)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def resume_state(checkpoint: Any, run_dir: Path, rank: int) -> dict[str, Any] | None:
    """This rank's resume state from a Ray checkpoint (``None``: a fresh start); rank 0 records
    the continuation in ``resumes.jsonl``."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as ckpt_dir:
        state = load_resume_state(Path(ckpt_dir), rank)
    if rank == 0:
        append_record(run_dir / RESUMES_FILE, {"round": state["round"], "step": state["step"],
                                               "time": time.time()})
    return state


class RunReporter:
    """The loop's ``Reporter`` in a trial: TensorBoard and ``metrics.jsonl`` on rank 0, every
    report (and checkpoint) to ``send``; ``close()`` when the loop is done."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, rank: int,
                 send: SendReport) -> None:
        from tensorboardX import SummaryWriter

        self.cfg, self.run_dir, self.rank, self.send = cfg, Path(run_dir), rank, send
        self.writer = SummaryWriter(str(run_dir), flush_secs=10) if rank == 0 else None

    def __call__(self, metrics: dict[str, float], step: int, snapshot: Snapshot | None) -> None:
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
            append_record(self.run_dir / METRICS_FILE, {**metrics, "time": time.time()})
        if snapshot is None:
            self.send(metrics, None)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                save_snapshot(Path(tmp), snapshot, self.rank)
                if self.rank == 0:
                    save_resolved(self.cfg, Path(tmp) / "config.yaml")
                self.send(metrics, tmp)
        self._maybe_inject(metrics)

    def _maybe_inject(self, metrics: dict[str, float]) -> None:
        inject = self.cfg.run.inject_failure_round
        mark = self.run_dir / INJECTED_MARK
        if self.rank == 0 and inject and metrics["round"] >= inject and not mark.exists():
            mark.touch()
            raise InjectedFailure(f"run.inject_failure_round={inject}: failing once after "
                                  f"round {int(metrics['round'])}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def record_stop(final: dict[str, float], run_dir: Path, rank: int) -> None:
    """A non-finite loss stopped the run: ``stopped.json`` says why (stopped, not failed: a
    retry would repeat it)."""
    from kdci_ray.train.run_logs import STOPPED_FILE
    from kdci_ray.train.task import stop_reason

    reason = stop_reason(final)
    if rank == 0 and reason:
        atomic_write_text(run_dir / STOPPED_FILE, json.dumps(
            {"reason": reason, "round": int(final["stopped_round"]), "time": time.time()}) + "\n")


def last_line(exc: BaseException) -> str:
    """``Type: last non-empty line of the message``: a failure in one line."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"
