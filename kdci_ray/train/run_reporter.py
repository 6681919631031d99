"""What a trial's process does around the one loop, whichever Ray layer runs it.

Both trainers (``run.trainer``) use this: ``ray_train`` (a TorchTrainer worker group,
``kdci_ray.train.ray_train``) and ``tune_trial`` (the loop inside the Tune trial's own process,
``kdci_ray.train.tune_trial``). Rank 0 writes TensorBoard events with exact tags (``eval/acc``,
``train/loss``, ``kdci/*``...) and appends every report to ``metrics.jsonl`` in the run directory;
a run stopped on a non-finite loss writes ``stopped.json``. Bookkeeping (``round``, ``step``,
``finished``, ``stopped_*``, flags) goes to ``metrics.jsonl`` and the Ray report but is no
TensorBoard scalar. Each trial's event file holds a TensorBoard HParams session (``method``,
``kdci.enabled``, ``kdci.k``, ``seed`` and every searched key; metrics ``eval/acc``,
``eval/acc_kdci``).

An attempt that finds an earlier one's logs, from a checkpoint or from the start (Tune resumed or
retried the trial, Ray Train restarted its workers, the driver was stopped before it registered
the last checkpoint), is a continuation (``run_logs.begin_continuation``): recorded in
``resumes.jsonl``, ``metrics.jsonl`` cut back to the rounds it continues from, and its event file
opened with a purge step just past the step it continues from, so TensorBoard hides what earlier
attempts logged after it: readers see each round and step once. Checkpoints are handed to the Ray
layer's own ``report`` (Ray's pattern: a temporary directory it persists), which is the only thing
the two trainers differ in.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdci_ray.atomic import atomic_write_text
from kdci_ray.config.cases import NAME, case_name, is_case_key
from kdci_ray.train.resume import (
    Snapshot,
    load_resume_state,
    save_snapshot,
)
from kdci_ray.train.run_logs import METRICS_FILE, begin_continuation, has_earlier_attempt

if TYPE_CHECKING:
    from kdci_ray.experiments.dfkd import ExperimentConfig

INJECTED_MARK = ".injected_failure"

# the Ray layer's report: (metrics, checkpoint directory or None) -> None
SendReport = Callable[[dict[str, float], "str | None"], None]

# report keys that are bookkeeping, not measurements: metrics.jsonl and the Ray report keep them
# (the results tables read them there), TensorBoard's scalar charts do not
NOT_SCALARS = frozenset({"round", "step", "finished", "eval/rare_class", "kdci/cached",
                         "kdci/backend_cuml", "kdci/minibatch"})
NOT_SCALAR_PREFIXES = ("stopped_",)
ALWAYS_HPARAMS = ("method", "kdci.enabled", "kdci.k", "seed")
HPARAM_METRICS = ("eval/acc", "eval/acc_kdci")  # the scalars of these tags are the metric values


class InjectedFailure(RuntimeError):
    """Raised once by ``run.inject_failure_round`` (tests of the restart path)."""


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended (a record per failure or resume, never rewritten)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def resume_state(checkpoint: Any, rank: int) -> dict[str, Any] | None:
    """This rank's resume state from a Ray checkpoint (``None``: a fresh start)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as ckpt_dir:
        return load_resume_state(Path(ckpt_dir), rank)


def open_events(run_dir: Path, resume: dict[str, Any] | None) -> Any:
    """Rank 0's TensorBoard writer for this attempt; a continuation (``resume``, or logs of an
    earlier attempt in ``run_dir``) is recorded first and purges the steps past its start."""
    from tensorboardX import SummaryWriter

    purge_step, suffix = None, ""
    if resume is not None or has_earlier_attempt(run_dir):
        rounds_done, step = (int(resume["round"]), int(resume["step"])) if resume else (0, 0)
        suffix = begin_continuation(run_dir, rounds_done, step)
        # the suffix also keeps an attempt started in the same second from reusing (truncating)
        # an earlier attempt's file (``events.out.tfevents.<seconds>.<host>``)
        purge_step = step + 1 if resume is not None else 0
    return SummaryWriter(str(run_dir), flush_secs=10, purge_step=purge_step,
                         filename_suffix=suffix)


def is_scalar(key: str) -> bool:
    """Whether a report key is a TensorBoard scalar (a measurement, not a counter or a flag)."""
    return key not in NOT_SCALARS and not key.startswith(NOT_SCALAR_PREFIXES)


def hparam_value(value: Any) -> str | float | bool | None:
    """An HParams value: str, float or bool (``None``: left out)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def searched_config_keys(searched: dict[str, Any]) -> list[str]:
    """The config keys a trial's searched point sets: its own keys, with each case group
    (``cases``/``cases.<group>``, expanded to its mapping) replaced by the case's keys."""
    keys: list[str] = []
    for key, value in searched.items():
        if not is_case_key(key):
            keys.append(key)
        elif isinstance(value, dict):
            keys.extend(k for k in value if k != NAME)
    return keys


def trial_hparams(cfg: ExperimentConfig, searched: dict[str, Any] | None) -> dict[str, Any]:
    """The trial's HParams: ``method``, ``kdci.enabled``, ``kdci.k``, ``seed`` and every key it
    searched (``searched``: the Tune point with its cases expanded), values from the resolved
    config; a case group is named by its Tune parameter (``cases``, ``cases.<group>``) with the
    case's name as value, and each key the case sets is an hparam of its own."""
    searched = searched or {}
    flat = cfg.to_flat()
    out: dict[str, Any] = {}
    for key in [*ALWAYS_HPARAMS, *searched]:
        if is_case_key(key):
            out[key] = case_name(searched[key])
        else:
            out[key] = flat[key] if key in flat else searched.get(key)
    for key in searched_config_keys(searched):
        out.setdefault(key, flat.get(key))
    return {k: v for k, v in ((k, hparam_value(v)) for k, v in out.items()) if v is not None}


def hparams_summaries(cfg: ExperimentConfig, searched: dict[str, Any] | None) -> tuple[Any, ...]:
    """``(experiment, session_start, session_end)`` summaries of the trial's HParams session.

    ``eval/acc_kdci`` is a metric when this trial runs KDCI or the sweep searches
    ``kdci.enabled`` (every trial of a sweep then declares the same experiment: TensorBoard
    takes the first run's)."""
    from tensorboardX.summary import hparams

    values, metrics = trial_hparams(cfg, searched), list(HPARAM_METRICS)
    if not (values["kdci.enabled"] or "kdci.enabled" in searched_config_keys(searched or {})):
        metrics.remove("eval/acc_kdci")
    return hparams(values, {tag: 0.0 for tag in metrics})


def session_end_summary(success: bool) -> Any:
    """The HParams session-end summary with status ``STATUS_SUCCESS`` or ``STATUS_FAILURE``."""
    from tensorboardX.proto.api_pb2 import Status
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    status = Status.Value("STATUS_SUCCESS" if success else "STATUS_FAILURE")
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=status,
                                                                end_time_secs=time.time()))
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="hparams", content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=meta)])


class RunReporter:
    """The loop's ``Reporter`` in a trial: TensorBoard and ``metrics.jsonl`` on rank 0, every
    report (and checkpoint) to ``send``; ``close()`` when the loop is done.

    ``searched``: the trial's searched point (Tune parameter -> value, cases expanded), whose
    keys become HParams; ``resume``: the resume state the run continues from (``resume_state``;
    ``open_events`` says what a continuation does to the run's logs).
    The HParams session ends with the last report: success when it finishes the run, failure
    when it stops it (a non-finite loss). A run that raises is left without an end: Ray may
    retry it from a checkpoint, and TensorBoard keeps the first session end it reads."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, rank: int,
                 send: SendReport, searched: dict[str, Any] | None = None,
                 resume: dict[str, Any] | None = None) -> None:
        self.cfg, self.run_dir, self.rank, self.send = cfg, Path(run_dir), rank, send
        self.writer = None
        if rank == 0:
            self.writer = open_events(self.run_dir, resume)
            file_writer = self.writer.file_writer
            for summary in hparams_summaries(cfg, searched)[:2]:
                file_writer.add_summary(summary)
            self.writer.flush()

    def __call__(self, metrics: dict[str, float], step: int, snapshot: Snapshot | None) -> None:
        if self.writer is not None:
            for key, value in metrics.items():
                if is_scalar(key):
                    self.writer.add_scalar(key, value, step)
            if metrics.get("finished") or metrics.get("stopped_nonfinite"):
                self.writer.file_writer.add_summary(
                    session_end_summary(success=bool(metrics.get("finished"))), step)
            self.writer.flush()
            append_record(self.run_dir / METRICS_FILE, {**metrics, "time": time.time()})
        if snapshot is None:
            self.send(metrics, None)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                save_snapshot(Path(tmp), snapshot, self.rank)
                if self.rank == 0:  # the resolved config, as the trial's config.yaml
                    atomic_write_text(Path(tmp) / "config.yaml",
                                      yaml.safe_dump(self.cfg.to_flat(), sort_keys=False))
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
    from kdci_ray.train.loop import stop_reason
    from kdci_ray.train.run_logs import STOPPED_FILE

    reason = stop_reason(final)
    if rank == 0 and reason:
        atomic_write_text(run_dir / STOPPED_FILE, json.dumps(
            {"reason": reason, "round": int(final["stopped_round"]), "time": time.time()}) + "\n")


def last_line(exc: BaseException) -> str:
    """``Type: last non-empty line of the message``: a failure in one line."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"
