"""One KD step of the distillation loop (``kdci_ray.train.loop``) and its non-finite checks.

A step draws a substitution batch, runs the teacher (no grad) and the student, applies KDCI's
adjustment when the run has KDCI, weights each sample's KD term towards balanced classes when
``train.balance_beta`` > 0, and steps the optimiser; the metrics it sums stay on the device
until an evaluation reads them. Its one read back to the host is the non-finite check of the loss,
agreed by every rank, so every rank stops at the same step before any weight is touched.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdci_ray.kdci import KDCI
from kdci_ray.kdci.collectives import collective_device
from kdci_ray.kdci.label_shift import balanced_weights_unchecked, smoothed_prior
from kdci_ray.methods import Method
from kdci_ray.train.numerics import autocast, format_input
from kdci_ray.train.runtime import Runtime

if TYPE_CHECKING:
    from kdci_ray.experiments.dfkd import ExperimentConfig


POSTERIORS_KEPT = 65_536  # teacher posteriors kept for the EM prior (shift.readings)


def nonfinite_loss(loss: Tensor, rt: Runtime) -> float | None:
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


def nonfinite_weights(*modules: nn.Module | None) -> bool:
    """Any NaN / inf among the floating-point weights and buffers (the same on every rank)."""
    checks = [torch.isfinite(t).all() for m in modules if m is not None
              for t in m.state_dict().values() if t.is_floating_point()]
    return bool(checks) and not bool(torch.stack(checks).all())


class KDStep:
    """One KD step of the loop, and what it accumulates between evaluations, on the device.

    ``__call__`` draws a batch, runs the teacher (no grad) and the student, applies KDCI's
    adjustment when there is one, and steps the student's optimiser. Its one read back to the
    host is the non-finite check of the loss (every rank stops at the same step, before the
    weights are touched); the teacher's arg-max counts and the summed losses stay on the device
    until :meth:`take_sums` (an evaluation) reads them."""

    def __init__(self, cfg: ExperimentConfig, method: Method, teacher: nn.Module,
                 student: nn.Module, kdci: KDCI | None, opt: torch.optim.Optimizer,
                 sched: Any, rt: Runtime, num_classes: int,
                 class_counts: list[int] | None = None) -> None:
        self.cfg, self.method, self.teacher, self.student = cfg, method, teacher, student
        self.kdci, self.opt, self.sched, self.rt = kdci, opt, sched, rt
        self.num_classes = num_classes
        # the teacher's arg-max over every KD batch so far: which class the substitution data
        # lacks (restored from a checkpoint when resuming)
        self.class_counts = torch.zeros(num_classes, dtype=torch.long, device=rt.device)
        if class_counts is not None:
            self.class_counts += torch.tensor(class_counts, dtype=torch.long).to(rt.device)
        self.classes = torch.arange(num_classes, device=rt.device)
        self.sums: dict[str, Tensor] = {}
        # with shift.readings: the teacher's posteriors on the KD batches since the last
        # evaluation (the EM prior's input; checkpoints are taken at evaluations, so a resumed
        # run collects the same ones), at most POSTERIORS_KEPT rows, the latest
        self.posteriors: list[Tensor] | None = [] if cfg.shift.readings else None

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
            if self.posteriors is not None:
                self._keep_posteriors(t_logits)
            s_logits = self.student(x).logits
            if self.kdci is not None:  # compensated logits (raw ones when post-hoc)
                s_logits, step_logs = self.kdci.adjust(s_logits, t_logits)
                for name, value in step_logs.items():
                    self._add(name, value)
            beta = cfg.train.balance_beta
            if beta > 0:  # class-balanced KD: weights from the teacher's posteriors and prior
                w = self._balance_weights(t_logits, beta)
                losses = self.method.student_loss(s_logits.float(), t_logits.float(), weights=w)
            else:
                losses = self.method.student_loss(s_logits.float(), t_logits.float())
        bad = nonfinite_loss(losses["loss"], self.rt)
        if bad is not None:
            return bad
        if beta > 0:
            self._add("train/balance_w_max", w.max())
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.opt.step()
        self.method.after_student_step()
        self.sched.step()
        for name, value in losses.items():
            self._add(f"train/{name}", value)
        return None

    def _balance_weights(self, t_logits: Tensor, beta: float) -> Tensor:
        """``train.balance_beta``'s per-sample KD weights, on the device (no read back): the
        teacher's posteriors over the prior ``pi`` = its arg-max counts so far, this batch
        included, half-count smoothed ``(n + 1/2) / (N + C/2)``."""
        prior = smoothed_prior(self.class_counts.double())
        return balanced_weights_unchecked(torch.softmax(t_logits.float(), dim=1), prior, beta)

    def take_sums(self) -> dict[str, float]:
        """The summed step metrics since the last call, read back (an evaluation's one read)."""
        names = list(self.sums)
        values = torch.stack([self.sums[n] for n in names]).tolist() if names else []
        self.sums = {}
        return dict(zip(names, values, strict=True))

    def _keep_posteriors(self, t_logits: Tensor) -> None:
        self.posteriors.append(torch.softmax(t_logits.detach().float(), dim=1))
        while sum(len(p) for p in self.posteriors[1:]) >= POSTERIORS_KEPT:
            self.posteriors.pop(0)

    def take_posteriors(self) -> Tensor | None:
        """The kept teacher posteriors (CPU), emptied; None without ``shift.readings``."""
        if self.posteriors is None:
            return None
        kept = torch.cat(self.posteriors).cpu() if self.posteriors else None
        self.posteriors = []
        return kept

    def counts(self) -> list[int]:
        return self.class_counts.tolist()
