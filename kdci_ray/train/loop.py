"""The one distillation loop, shared by every DFKD method (runs with or without Ray).

``distill`` builds a run once (data, teacher, student, the method, KDCI when ``kdci.enabled``,
the optimiser), restores a checkpoint's state when resuming, then per round: the method's
``synthesize()`` and KDCI's ``start_round`` (the dictionary refresh when due: every round for
generated substitution data, once for a fixed pool); ``kd_steps`` KD steps (``KDStep``: sample a
batch, teacher under no_grad, student forward, with KDCI its ``adjust`` (compensated logits),
``method.student_loss``, step); when due an evaluation (the raw student, ``eval/acc``, and with
KDCI the compensated one, ``eval/acc_kdci``) and a checkpoint. KDCI's whole life cycle is one
``kdci_ray.kdci.KDCI``, built by ``kdci_ray.train.kdci_setup.build_kdci``. Under
torch.distributed each rank draws its own substitution data and DDP averages the gradients of
the student, the KDCI attention and the method's generator. A non-finite loss (or student
weights) stops the run on every rank before it touches the weights (or a checkpoint): the last
report says ``stopped_nonfinite = 1`` and ``stop_reason`` words it; the run returns normally, so
nothing retries a deterministic NaN.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from kdci_ray.cache import cache_dir
from kdci_ray.kdci import KDCI
from kdci_ray.methods import METHODS, MethodContext
from kdci_ray.models import create_model
from kdci_ray.train.datasets import load_data
from kdci_ray.train.evaluate import accuracy, predict_logits
from kdci_ray.train.kd_step import KDStep, nonfinite_weights
from kdci_ray.train.kdci_setup import build_kdci
from kdci_ray.train.numerics import numerics, to_memory_format
from kdci_ray.train.readings import model_logits, realised_prior_metrics, shift_readings
from kdci_ray.train.resume import Progress, Snapshot, capture, restore
from kdci_ray.train.runtime import (
    Runtime,
    current_runtime,
    limit_threads,
    seed_everything,
    worker_threads,
)
from kdci_ray.train.teacher import load_teacher

if TYPE_CHECKING:
    from kdci_ray.experiments.dfkd import ExperimentConfig


def open_world(cfg: ExperimentConfig, data) -> Any:
    """The unlabeled pool of a sampling-based method, in the teacher's input format."""
    from kdci_ray.data.pool_sources import build_open_world

    p = cfg.pool
    return build_open_world(p.source, p.path, size=p.size, channels=data.channels,
                            image_size=data.image_size, seed=p.seed, min_scale=p.min_scale,
                            transform=p.transform)


def method_context(cfg: ExperimentConfig, data, teacher: nn.Module, student: nn.Module,
                   rt: Runtime) -> MethodContext:
    """What a method sees of the run (each rank synthesises its own data: per-rank seed)."""
    method_cls = METHODS[cfg.method]
    return MethodContext(teacher=teacher, student=student, num_classes=data.num_classes,
                         channels=data.channels, image_size=data.image_size, device=rt.device,
                         seed=cfg.seed * 1000 + rt.rank, rounds=cfg.train.rounds, rank=rt.rank,
                         world_size=rt.world_size, wrap=rt.wrap, mean=data.mean, std=data.std,
                         open_world=open_world(cfg, data) if method_cls.needs_open_world else None,
                         cache_dir=cache_dir() / "selections", imbalance=cfg.shift.imbalance,
                         strict_shift=not cfg.smoke)


class Reporter(Protocol):
    """Receives every evaluation, on every rank; ``snapshot`` (this rank's checkpoint) on the
    checkpoint rounds (every ``run.checkpoint_every`` rounds, and always the last)."""

    def __call__(self, metrics: dict[str, float], step: int,
                 snapshot: Snapshot | None) -> None: ...


class Collect:
    """The in-process reporter: keeps every report and checkpoint (tests and the plain Python API
    use it); ``state`` is the final student."""

    def __init__(self) -> None:
        self.history: list[tuple[int, dict[str, float]]] = []
        self.snapshots: list[Snapshot] = []
        self.state: dict[str, Any] | None = None

    def __call__(self, metrics: dict[str, float], step: int,
                 snapshot: Snapshot | None) -> None:
        self.history.append((step, dict(metrics)))
        if snapshot is not None:
            self.snapshots.append(snapshot)
            if snapshot.final:
                self.state = snapshot.student


def _lr_lambda(cfg: ExperimentConfig) -> Callable[[int], float]:
    total = cfg.train.rounds * cfg.train.kd_steps
    if cfg.train.lr_schedule == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _checkpoint_round(cfg: ExperimentConfig, rounds_done: int) -> bool:
    every = cfg.run.checkpoint_every or cfg.train.eval_every
    return rounds_done % every == 0 or rounds_done == cfg.train.rounds


def stop_reason(metrics: dict[str, float]) -> str:
    """Why the run whose final metrics these are stopped early ("" when it did not)."""
    if not metrics.get("stopped_nonfinite"):
        return ""
    rnd = int(metrics["stopped_round"])
    what = (f"loss ({metrics['stopped_loss']}) in round {rnd}, KD step "
            f"{int(metrics['stopped_kd_step'])}" if "stopped_loss" in metrics
            else f"student weights after round {rnd}")
    return f"non-finite {what}; train.lr may be too high"


def distill(cfg: ExperimentConfig, report: Reporter | None = None,
            runtime: Runtime | None = None,
            resume: dict[str, Any] | None = None) -> dict[str, float]:
    """Train a student from the teacher without data; returns the final metrics.

    ``runtime``: rank, world size and device (default: this process's, ``current_runtime``:
    the CPU, or with ``run.use_gpu`` this worker's GPU, never silently the CPU).
    ``resume``: this rank's state from a checkpoint (``Snapshot.resume``, on any device); the
    run continues with the round after it and ends as the uninterrupted run would have. A
    non-finite loss or student stops it early (``stop_reason`` of the returned metrics)."""
    rt = runtime or current_runtime(cfg.run.use_gpu)
    limit_threads(worker_threads(cfg.run, rt.device))
    with numerics(cfg.run):
        return Distillation(cfg, rt, resume).run(report or Collect())


def build_optimizer(cfg: ExperimentConfig, student: nn.Module,
                    kdci: KDCI | None) -> tuple[torch.optim.Optimizer, Any]:
    """SGD over the student (and KDCI's attention, at its own rate) and the LR schedule."""
    params = [{"params": student.parameters(), "lr": cfg.train.lr}]
    if kdci is not None:
        params.append(kdci.param_group(cfg.train.lr))
    opt = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                          weight_decay=cfg.train.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))


class Distillation:
    """One run of the loop: its objects, built once (``_build``), where it starts
    (``_restore``), and its rounds (``run``): a synthesis, the KD steps, and when due an
    evaluation and a checkpoint."""

    def __init__(self, cfg: ExperimentConfig, rt: Runtime,
                 resume: dict[str, Any] | None = None) -> None:
        self.cfg, self.rt = cfg, rt
        self._build()
        progress = self._restore(resume)
        self.first_round, self.step = progress.round, progress.step
        self.teacher_acc = progress.teacher_acc
        self.kd_step = KDStep(cfg, self.method, self.teacher, self.student_ddp, self.kdci,
                              self.opt, self.sched, rt, self.data.num_classes,
                              progress.class_counts)
        self.started = time.perf_counter() - progress.elapsed_s
        self.last_eval_step = self.step

    def _build(self) -> None:
        """Data, teacher, student (DDP-wrapped for the steps), method, KDCI, optimiser; the
        same initial weights on every rank."""
        cfg, rt = self.cfg, self.rt
        seed_everything(cfg.seed)
        self.data = load_data(cfg)
        self.teacher = load_teacher(cfg, self.data, rt.device)
        self.student = create_model(cfg.student.arch, self.data.num_classes,
                                    self.data.channels).to(rt.device)
        to_memory_format(cfg.run, self.teacher, self.student)
        self.student_ddp = rt.wrap(self.student)
        method_cls = METHODS[cfg.method]
        ctx = method_context(cfg, self.data, self.teacher, self.student, rt)
        self.method = method_cls(cfg.method_config, ctx)
        self.kdci = build_kdci(cfg, method_cls.substitution, self.data, rt)
        self.opt, self.sched = build_optimizer(cfg, self.student, self.kdci)

    def parts(self) -> dict[str, Any]:
        """What a checkpoint captures and a resume restores (``kdci_ray.train.resume``)."""
        return {"rank": self.rt.rank, "world_size": self.rt.world_size, "student": self.student,
                "optimizer": self.opt, "scheduler": self.sched, "method": self.method,
                "kdci": self.kdci}

    def _restore(self, resume: dict[str, Any] | None) -> Progress:
        """A checkpoint's state loaded into the fresh objects, or round 0 (where the teacher's
        test accuracy is measured, once per run)."""
        if resume is not None:
            return restore(resume, **self.parts())
        teacher_acc = accuracy(*predict_logits(self.teacher, self.data, self.rt.device))
        return Progress(round=0, step=0, elapsed_s=0.0, teacher_acc=teacher_acc)

    def run(self, report: Reporter) -> dict[str, float]:
        """The remaining rounds; the final metrics (a stopped run's: reported without a
        checkpoint, so nothing non-finite is saved)."""
        final: dict[str, float] = {}
        for rnd in range(self.first_round, self.cfg.train.rounds):
            logs = self._synthesize(rnd)
            stopped = self._kd_steps(rnd)
            if stopped is None and self._evaluates_after(rnd) and self._weights_nonfinite():
                stopped = self._stopped(rnd, self.cfg.train.kd_steps)
            if stopped is not None:
                report(stopped, self.step, None)
                return stopped
            if self._evaluates_after(rnd):
                counts = self.kd_step.counts()
                final = self._evaluate(rnd, logs, counts)
                report(final, self.step, self._checkpoint(rnd, final, counts))
        return final

    def _synthesize(self, rnd: int) -> dict[str, float]:
        """The method's synthesis of round ``rnd``, then KDCI's round start (its refresh when
        due); their logs."""
        logs = {f"synth/{k}": v for k, v in self.method.synthesize(rnd).items()}
        if self.kdci is not None:
            logs.update(self.kdci.start_round(rnd, self.teacher, self.method))
        return logs

    def _kd_steps(self, rnd: int) -> dict[str, float] | None:
        """The round's KD steps (none while the method holds KD back); the stop metrics of a
        non-finite loss, else None."""
        self.student.train()
        for i in range(self.cfg.train.kd_steps if self.method.kd_active(rnd) else 0):
            bad = self.kd_step()
            if bad is not None:
                return self._stopped(rnd, i + 1, bad)
            self.step += 1
        return None

    def _evaluates_after(self, rnd: int) -> bool:
        return (rnd + 1) % self.cfg.train.eval_every == 0 or rnd + 1 == self.cfg.train.rounds

    def _weights_nonfinite(self) -> bool:
        return nonfinite_weights(self.student, self.kdci.module if self.kdci is not None else None)

    def _stopped(self, rnd: int, steps_in_round: int,
                 loss: float | None = None) -> dict[str, float]:
        """The last report of a run stopped by a non-finite loss (``loss``) or student."""
        metrics = {"eval/teacher_acc": self.teacher_acc, "round": rnd, "step": self.step,
                   "lr": self.sched.get_last_lr()[0],
                   "time/elapsed_s": time.perf_counter() - self.started,
                   "finished": 0.0, "stopped_nonfinite": 1.0, "stopped_round": rnd + 1,
                   "stopped_kd_step": steps_in_round}
        if loss is not None:
            metrics["stopped_loss"] = loss
        return metrics

    def _evaluate(self, rnd: int, logs: dict[str, float], counts: list[int]) -> dict[str, float]:
        """The evaluation after round ``rnd``: the student raw and compensated
        (:func:`evaluate_student`; ``counts``: the teacher's arg-max counts so far, naming the
        rare class under a shift), the step metrics averaged since the last one, the round's
        logs."""
        cfg = self.cfg
        rare = int(torch.tensor(counts).argmin()) if cfg.shift.imbalance else None
        reference = self.kdci is not None and self.kdci.needs_reference
        readings = cfg.shift.readings and rnd + 1 == cfg.train.rounds
        heldout = self._heldout_logits() if reference or readings else (None, None)
        fitted = self._fit_reference(counts, *heldout) if reference else {}
        metrics = evaluate_student(self.student, self.kdci, self.data, self.rt, rare)
        metrics.update(fitted)
        if cfg.shift.imbalance or cfg.shift.readings:
            metrics.update(realised_prior_metrics(torch.tensor(counts)))
        posteriors = self.kd_step.take_posteriors()  # those since the last evaluation
        if readings:
            metrics.update(self._readings(counts, rare, posteriors, *heldout))
        n = max(1, self.step - self.last_eval_step)
        metrics.update({k: v / n for k, v in self.kd_step.take_sums().items()})
        self.last_eval_step = self.step
        metrics.update(logs)
        metrics.update({"eval/teacher_acc": self.teacher_acc, "round": rnd + 1, "step": self.step,
                        "lr": self.sched.get_last_lr()[0],
                        "time/elapsed_s": time.perf_counter() - self.started,
                        "finished": float(rnd + 1 == cfg.train.rounds)})
        return metrics

    def _heldout_logits(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Student and teacher logits on the method's held-out substitution inputs
        (``shift.heldout`` of them; ``(None, None)`` when it has none)."""
        n = self.cfg.shift.heldout
        heldout = self.method.heldout_batch(n) if n else None
        if heldout is None or not len(heldout):
            return None, None
        return model_logits(self.student, heldout), model_logits(self.teacher, heldout)

    def _fit_reference(self, counts: list[int], student_h: torch.Tensor,
                       teacher_h: torch.Tensor) -> dict[str, float]:
        """``kdci.fusion: teacher_ref[_scalar]``: the class bias fitted before an evaluation,
        from both models' logits on the held-out inputs."""
        return self.kdci.fit_reference(student_h, teacher_h, torch.tensor(counts),
                                       self.cfg.shift.ridge)

    def _readings(self, counts: list[int], rare: int | None, posteriors: torch.Tensor | None,
                  student_h: torch.Tensor | None,
                  teacher_h: torch.Tensor | None) -> dict[str, float]:
        """The post-hoc label-shift readings of the final student (``shift.readings``,
        ``kdci_ray.train.readings``): nothing it does changes the student or a random stream."""
        cfg = self.cfg
        logits, labels = predict_logits(self.student, self.data, self.rt.device)
        return shift_readings(torch.tensor(counts), logits, labels,
                              kd_posteriors=posteriors,
                              heldout_student=student_h, heldout_teacher=teacher_h,
                              ridge=cfg.shift.ridge, rare=rare)

    def _checkpoint(self, rnd: int, metrics: dict[str, float],
                    counts: list[int]) -> Snapshot | None:
        """This rank's checkpoint after round ``rnd`` when one is due (a copy: training on does
        not change it), else None."""
        if not _checkpoint_round(self.cfg, rnd + 1):
            return None
        done = Progress(round=rnd + 1, step=self.step, elapsed_s=metrics["time/elapsed_s"],
                        teacher_acc=self.teacher_acc, class_counts=counts)
        student = copy.deepcopy(deployable_state(self.student, self.kdci, self.cfg, self.data))
        return Snapshot(student=student, resume=capture(done, **self.parts()),
                        final=rnd + 1 == self.cfg.train.rounds)


def _recalls(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C,)`` per-class recall on the test split (NaN for a class with no test sample)."""
    pred = logits.argmax(1)
    hits = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    return torch.where(total > 0, hits / total.clamp_min(1), torch.nan)


def evaluate_student(student: nn.Module, kdci: KDCI | None, data, rt: Runtime,
                     rare: int | None = None) -> dict[str, float]:
    """Raw student (``eval/acc``, the deployable model) and, with KDCI, the compensated one
    (``eval/acc_kdci``: raw logits + the adjustment); lowest per-class recall; under a shift,
    the recall of ``rare`` (the class the substitution data had least of)."""
    logits, labels = predict_logits(student, data, rt.device)
    outputs = {"": logits}
    kdci_metrics: dict[str, float] = {}
    if kdci is not None:
        outputs["_kdci"], kdci_metrics = kdci.evaluate(logits)
    metrics: dict[str, float] = {}
    for suffix, out in outputs.items():
        recalls = _recalls(out, labels, data.num_classes)
        metrics[f"eval/acc{suffix}"] = accuracy(out, labels)
        metrics[f"eval/recall_min{suffix}"] = float(recalls.nan_to_num(2.0).min())
        if rare is not None:
            metrics[f"eval/recall_rare{suffix}"] = float(recalls[rare])
    metrics.update(kdci_metrics)
    if rare is not None:
        metrics["eval/rare_class"] = float(rare)
    return metrics


def deployable_state(student: nn.Module, kdci: KDCI | None, cfg: ExperimentConfig,
                     data) -> dict[str, Any]:
    """The deployable student (``student.pt``); with KDCI also its attention and what rebuilds
    it, so ``kdci_ray.kdci.load_student(path, compensated=True)`` gives the compensated model."""
    state: dict[str, Any] = {"state_dict": student.state_dict(), "arch": cfg.student.arch,
                             "method": cfg.method, "num_classes": data.num_classes,
                             "channels": data.channels}
    if kdci is not None:
        state.update(kdci.deploy_state())
    return state
