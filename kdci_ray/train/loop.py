"""The one distillation loop, shared by every DFKD method (runs with or without Ray).

Per round: ``method.synthesize()``; with KDCI, its hook's ``on_round`` (the dictionary refresh
when due: every round for generated substitution data, once for a fixed pool); then ``kd_steps``
times: sample a batch, teacher under no_grad, student forward, with KDCI the hook's ``on_batch``
(compensated logits), ``method.student_loss``, step. KDCI's whole life cycle is one
``kdci_ray.kdci.KDCIHook``; ``build_kdci_hook`` here is the only place that branches on
``kdci.enabled``. Under torch.distributed each rank draws its own substitution data and DDP
averages the gradients of the student, the KDCI attention and the method's generator. A
non-finite loss (or student weights) stops the run on every rank before it touches the weights
(or a checkpoint): the last report says ``stopped_nonfinite = 1`` and ``stop_reason`` words it;
the run returns normally, so nothing retries a deterministic NaN.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdci_ray.cache import cache_dir
from kdci_ray.config import ExperimentConfig
from kdci_ray.kdci import KDCIHook
from kdci_ray.kdci.plugin import collective_device
from kdci_ray.methods import METHODS, Method, MethodContext
from kdci_ray.models import create_model
from kdci_ray.train.datasets import load_data
from kdci_ray.train.evaluate import accuracy, predict_logits
from kdci_ray.train.kdci_setup import dictionary_store, load_source_model
from kdci_ray.train.numerics import autocast, format_input, numerics, to_memory_format
from kdci_ray.train.resume import Progress, Snapshot, capture, restore
from kdci_ray.train.runtime import (
    Runtime,
    current_runtime,
    limit_threads,
    seed_everything,
    worker_threads,
)
from kdci_ray.train.teacher import load_teacher


def open_world(cfg: ExperimentConfig, data) -> Any:
    """The unlabeled pool of a sampling-based method, in the teacher's input format."""
    from kdci_ray.data.openworld import build_open_world

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


def build_kdci_hook(cfg: ExperimentConfig, method_cls: type[Method], data,
                    rt: Runtime) -> KDCIHook | None:
    """The run's KDCI hook (None without ``kdci.enabled``): built from the config, the method's
    description of its substitution data, the data (classes) and the runtime (device, DDP wrap);
    with ``kdci.source: model`` the other model is loaded here, with ``kdci.cache`` the store."""
    if not cfg.kdci.enabled:
        return None
    kc = cfg.kdci
    source_model = load_source_model(cfg, data, rt.device) if kc.source == "model" else None
    return KDCIHook.from_config(cfg, method_cls.substitution, data.num_classes, rt.device,
                                wrap=rt.wrap, source_model=source_model,
                                store=dictionary_store() if kc.cache else None)


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


def _nonfinite_loss(loss: Tensor, rt: Runtime) -> float | None:
    """This step's loss if it is NaN or inf on this rank or any other (NaN first), else None:
    every rank must stop at the same step. The KD step's one read back to the host."""
    flags = torch.stack([loss.detach().isnan(), loss.detach().isinf()]).float()
    if rt.distributed:
        flags = flags.to(collective_device(rt.device))
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    nan, inf, value = torch.cat([flags.to(loss.device),
                                 loss.detach().double().view(1).to(loss.device)]).tolist()
    if nan:
        return math.nan
    if inf:
        return value if math.isinf(value) else math.inf
    return None


def _nonfinite_weights(*modules: nn.Module | None) -> bool:
    """Any NaN / inf among the floating-point weights and buffers (the same on every rank)."""
    checks = [torch.isfinite(t).all() for m in modules if m is not None
              for t in m.state_dict().values() if t.is_floating_point()]
    return bool(checks) and not bool(torch.stack(checks).all())


class KDStep:
    """One KD step of the loop, and what it accumulates between evaluations, on the device.

    ``__call__`` draws a batch, runs the teacher (no grad) and the student, applies the KDCI hook
    when there is one, and steps the student's optimiser. Its one read back to the host is the
    non-finite check of the loss (every rank stops at the same step, before the weights are
    touched); the teacher's arg-max counts and the summed losses stay on the device until
    :meth:`take_sums` (an evaluation) reads them."""

    def __init__(self, cfg: ExperimentConfig, method: Method, teacher: nn.Module,
                 student: nn.Module, hook: KDCIHook | None, opt: torch.optim.Optimizer,
                 sched: Any, rt: Runtime, num_classes: int,
                 class_counts: list[int] | None = None) -> None:
        self.cfg, self.method, self.teacher, self.student = cfg, method, teacher, student
        self.hook, self.opt, self.sched, self.rt = hook, opt, sched, rt
        self.num_classes = num_classes
        # the teacher's arg-max over every KD batch so far: which class the substitution data
        # lacks (restored from a checkpoint when resuming)
        self.class_counts = torch.zeros(num_classes, dtype=torch.long, device=rt.device)
        if class_counts is not None:
            self.class_counts += torch.tensor(class_counts, dtype=torch.long).to(rt.device)
        self.classes = torch.arange(num_classes, device=rt.device)
        self.sums: dict[str, Tensor] = {}

    def _add(self, name: str, value: Tensor) -> None:
        value = value.detach().double()  # summed as the float64 a host-side sum would use
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    def __call__(self) -> float | None:
        """One step; the non-finite loss that stopped it (nothing was updated), else None."""
        cfg, run = self.cfg, self.cfg.run
        x = format_input(run, self.method.sample(cfg.train.batch_size).to(self.rt.device))
        with autocast(run, self.rt.device):
            with torch.no_grad():
                t_logits = self.teacher(x).logits
            self.class_counts += (t_logits.argmax(1, keepdim=True) == self.classes).sum(0)
            s_logits = self.student(x).logits
            if self.hook is not None:  # compensated logits (raw ones when post-hoc)
                s_logits, step_logs = self.hook.on_batch(s_logits, t_logits)
                for name, value in step_logs.items():
                    self._add(name, value)
            losses = self.method.student_loss(s_logits.float(), t_logits.float())
        bad = _nonfinite_loss(losses["loss"], self.rt)
        if bad is not None:
            return bad
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.opt.step()
        self.method.after_student_step()
        self.sched.step()
        for name, value in losses.items():
            self._add(f"train/{name}", value)
        return None

    def take_sums(self) -> dict[str, float]:
        """The summed step metrics since the last call, read back (an evaluation's one read)."""
        names = list(self.sums)
        values = torch.stack([self.sums[n] for n in names]).tolist() if names else []
        self.sums = {}
        return dict(zip(names, values, strict=True))

    def counts(self) -> list[int]:
        return self.class_counts.tolist()


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
        return _distill(cfg, report or Collect(), rt, resume)


def _distill(cfg: ExperimentConfig, report: Reporter, rt: Runtime,
             resume: dict[str, Any] | None) -> dict[str, float]:
    seed_everything(cfg.seed)  # same initial weights on every rank
    data = load_data(cfg)
    teacher = load_teacher(cfg, data, rt.device)
    student = create_model(cfg.student.arch, data.num_classes, data.channels).to(rt.device)
    to_memory_format(cfg.run, teacher, student)
    student_ddp = rt.wrap(student)

    method_cls = METHODS[cfg.method]
    ctx = method_context(cfg, data, teacher, student, rt)
    method = method_cls(cfg.method_config, ctx)

    params = [{"params": student.parameters(), "lr": cfg.train.lr}]
    hook = build_kdci_hook(cfg, method_cls, data, rt)
    if hook is not None:
        params.append(hook.param_group(cfg.train.lr))
    opt = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                          weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))

    parts = {"rank": rt.rank, "world_size": rt.world_size, "student": student,
             "optimizer": opt, "scheduler": sched, "method": method, "kdci": hook}
    if resume is not None:
        progress = restore(resume, **parts)
    else:
        progress = Progress(round=0, step=0, elapsed_s=0.0,
                            teacher_acc=accuracy(*predict_logits(teacher, data, rt.device)))
    teacher_acc, step = progress.teacher_acc, progress.step
    kd_step = KDStep(cfg, method, teacher, student_ddp, hook, opt, sched, rt,
                     data.num_classes, progress.class_counts)
    start, last_eval_step = time.perf_counter() - progress.elapsed_s, step
    final: dict[str, float] = {}

    def stop(rnd: int, steps_in_round: int, loss: float | None = None) -> dict[str, float]:
        metrics = {"eval/teacher_acc": teacher_acc, "round": rnd, "step": step,
                   "lr": sched.get_last_lr()[0], "time/elapsed_s": time.perf_counter() - start,
                   "finished": 0.0, "stopped_nonfinite": 1.0, "stopped_round": rnd + 1,
                   "stopped_kd_step": steps_in_round}
        if loss is not None:
            metrics["stopped_loss"] = loss
        report(metrics, step, None)
        return metrics

    for rnd in range(progress.round, cfg.train.rounds):
        logs = {f"synth/{k}": v for k, v in method.synthesize(rnd).items()}
        if hook is not None:
            logs.update(hook.on_round(rnd, teacher, method))
        student.train()
        for i in range(cfg.train.kd_steps if method.kd_active(rnd) else 0):
            bad = kd_step()
            if bad is not None:
                return stop(rnd, i + 1, bad)
            step += 1
        last = rnd + 1 == cfg.train.rounds
        if (rnd + 1) % cfg.train.eval_every == 0 or last:
            if _nonfinite_weights(student, hook.module if hook is not None else None):
                return stop(rnd, cfg.train.kd_steps)
            counts = kd_step.counts()
            rare = int(torch.tensor(counts).argmin()) if cfg.shift.imbalance else None
            metrics = _evaluate(student, hook, data, rt, rare)
            n = max(1, step - last_eval_step)
            metrics.update({k: v / n for k, v in kd_step.take_sums().items()})
            last_eval_step = step
            metrics.update(logs)
            metrics.update({"eval/teacher_acc": teacher_acc, "round": rnd + 1, "step": step,
                            "lr": sched.get_last_lr()[0],
                            "time/elapsed_s": time.perf_counter() - start,
                            "finished": float(last)})
            snapshot = None
            if _checkpoint_round(cfg, rnd + 1):
                done = Progress(round=rnd + 1, step=step, elapsed_s=metrics["time/elapsed_s"],
                                teacher_acc=teacher_acc, class_counts=counts)
                student_state = copy.deepcopy(_state(student, hook, cfg, data))
                snapshot = Snapshot(student=student_state, resume=capture(done, **parts),
                                    final=last)
            report(metrics, step, snapshot)
            final = metrics
    return final


def _recalls(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C,)`` per-class recall on the test split (NaN for a class with no test sample)."""
    pred = logits.argmax(1)
    hits = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    return torch.where(total > 0, hits / total.clamp_min(1), torch.nan)


def _evaluate(student: nn.Module, hook: KDCIHook | None, data, rt: Runtime,
              rare: int | None = None) -> dict[str, float]:
    """Raw student (``eval/acc``, the deployable model) and, with KDCI, the compensated one
    (``eval/acc_kdci``: raw logits + the adjustment); lowest per-class recall; under a shift,
    the recall of ``rare`` (the class the substitution data had least of)."""
    logits, labels = predict_logits(student, data, rt.device)
    outputs = {"": logits}
    kdci_metrics: dict[str, float] = {}
    if hook is not None:
        outputs["_kdci"], kdci_metrics = hook.evaluate(logits)
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


def _state(student: nn.Module, hook: KDCIHook | None, cfg: ExperimentConfig,
           data) -> dict[str, Any]:
    """The deployable student (``student.pt``); with KDCI also the adjustment and what rebuilds
    it, so ``kdci_ray.kdci.load_student(path, compensated=True)`` gives the compensated model."""
    state: dict[str, Any] = {"state_dict": student.state_dict(), "arch": cfg.student.arch,
                             "method": cfg.method, "num_classes": data.num_classes,
                             "channels": data.channels}
    if hook is not None:
        state.update(hook.deploy_state())
    return state
