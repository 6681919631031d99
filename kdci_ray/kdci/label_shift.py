"""Post-hoc label-shift corrections of a distilled student (pure torch math).

A student distilled from synthetic data inherits the class prior of its KD batches rather than the
one of the deployment data. The helpers here measure that prior and undo it with a class bias on
the logits:

- the realised prior of the KD batches (the teacher's arg-max histogram) and a finite, centred log
  prior for logit adjustment (Menon et al., 2021, "Long-tail learning via logit adjustment",
  ICLR);
- the EM estimate of a new class prior from a model's posteriors (Saerens, Latinne & Decaestecker,
  2002, "Adjusting the outputs of a classifier to new a priori probabilities", Neural
  Computation 14(1));
- class-balancing sample weights and the fit of a class bias ``b`` (or of a scale ``tau`` along a
  log prior, ``b = -tau * direction``) that brings ``softmax(s(x) + b)`` closest, in weighted KL,
  to a target posterior.

Everything computes in float64 and returns float32 tensors (or Python floats) on the input's
device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adjusted_accuracy", "balanced_weights", "balanced_weights_unchecked", "em_prior",
           "fit_class_bias", "fit_prior_scale", "log_prior", "realised_prior", "smoothed_prior",
           "teacher_reference"]

_ARMIJO = 1e-4
_MAX_HALVINGS = 40
_GRAD_TOL = 1e-10
# Stop when the Newton decrement (twice the predicted decrease) is under this times the size of the
# terms the objective is summed from: no line search can see a smaller decrease in float64.
_DECREMENT_TOL = 1e-14


def _counts64(counts: Tensor) -> Tensor:
    c = torch.as_tensor(counts).detach().to(torch.float64)
    if c.dim() != 1 or c.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D tensor, got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise ValueError("counts must be finite")
    if (c < 0).any():
        raise ValueError("counts must be non-negative")
    return c


def realised_prior(counts: Tensor) -> Tensor:
    """Shares ``counts / counts.sum()`` of a ``(C,)`` histogram; all-zero counts -> uniform."""
    c = _counts64(counts)
    total = c.sum()
    out = torch.full_like(c, 1.0 / c.numel()) if total == 0 else c / total
    return out.to(torch.float32)


def smoothed_prior(counts: Tensor) -> Tensor:
    """Shares ``(n + 1/2) / (N + C/2)`` of a ``(C,)`` histogram (Jeffreys' half count: a class
    never seen keeps a finite log), in the counts' dtype and device and without value checks, so
    a KD step can call it without reading the device back."""
    c = counts.detach()
    return (c + 0.5) / (c.sum() + 0.5 * c.numel())


def log_prior(counts: Tensor) -> Tensor:
    """Centred log prior ``log((n + 1/2) / (N + C/2))`` minus its class mean (Jeffreys' half count
    keeps a class never seen finite). Returns ``(C,)`` summing to ~0."""
    lp = torch.log(smoothed_prior(_counts64(counts)))
    return (lp - lp.mean()).to(torch.float32)


def _probs64(probs: Tensor, name: str = "probs") -> Tensor:
    p = probs.detach().to(torch.float64)
    if p.dim() != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, C) tensor, got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return p


def _prior64(prior: Tensor | None, c: int, device: torch.device, name: str) -> Tensor:
    if prior is None:
        return torch.full((c,), 1.0 / c, dtype=torch.float64, device=device)
    p = prior.detach().to(device=device, dtype=torch.float64)
    if p.shape != (c,):
        raise ValueError(f"{name} must have shape ({c},), got {tuple(p.shape)}")
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return p


def em_prior(probs: Tensor, source_prior: Tensor | None = None, iters: int = 200,
             tol: float = 1e-8) -> Tensor:
    """Saerens et al. (2002) EM estimate of the class prior of the inputs behind ``probs`` (N, C),
    posteriors of a model trained under ``source_prior`` (None = uniform). Returns ``(C,)`` shares.
    """
    p = _probs64(probs)
    n, c = p.shape
    source = _prior64(source_prior, c, p.device, "source_prior").clamp_min(1e-12)
    rows = p / p.sum(dim=1, keepdim=True).clamp_min(1e-300)
    prior = rows.mean(dim=0)
    for _ in range(max(int(iters), 0)):
        w = rows * (prior / source)
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-300)
        new = w.mean(dim=0)
        change = (new - prior).abs().max().item()
        prior = new
        if change < tol:
            break
    return (prior / prior.sum()).to(torch.float32)


def balanced_weights_unchecked(probs: Tensor, prior: Tensor, beta: float) -> Tensor:
    """:func:`balanced_weights`' math, in float64, returned as float32 on the device, without
    its value checks (they read the device back to the host): what a KD step calls, its one
    read being the loss's non-finite check, where a non-finite weight shows up."""
    p = probs.detach().double()
    w = (p / prior.detach().double().clamp_min(1e-6)).sum(dim=1) ** float(beta)
    return (w / w.mean()).float()


def balanced_weights(probs: Tensor, prior: Tensor, beta: float = 1.0) -> Tensor:
    """Per-sample weights ``(sum_y probs[x, y] / prior[y]) ** beta`` normalised to mean 1
    (``prior`` clamped below at 1e-6); ``beta = 0`` gives all ones. Returns ``(N,)``."""
    p = _probs64(probs)
    pr = _prior64(prior, p.shape[1], p.device, "prior")
    if beta == 0:
        return torch.ones(p.shape[0], dtype=torch.float32, device=probs.device)
    w = balanced_weights_unchecked(p, pr, beta)
    if not torch.isfinite(w).all():
        raise ValueError("weights are degenerate (all zero or not finite)")
    return w


def _problem(student_logits: Tensor, target_probs: Tensor, weights: Tensor | None,
             ridge: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """float64 logits, row-normalised targets, weights summing to 1 and the target entropy term."""
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    s = student_logits.detach().to(torch.float64)
    if s.dim() != 2 or s.shape[0] == 0:
        raise ValueError(f"student_logits must be a non-empty (N, C) tensor, got {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("student_logits must be finite")
    t = _probs64(target_probs, "target_probs").to(s.device)
    if t.shape != s.shape:
        raise ValueError(f"target_probs shape {tuple(t.shape)} != logits {tuple(s.shape)}")
    t = t / t.sum(dim=1, keepdim=True).clamp_min(1e-300)
    if weights is None:
        w = torch.full((s.shape[0],), 1.0 / s.shape[0], dtype=torch.float64, device=s.device)
    else:
        w = weights.detach().to(device=s.device, dtype=torch.float64)
        if w.shape != (s.shape[0],) or not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite, non-negative and of shape (N,)")
        if w.sum() <= 0:
            raise ValueError("weights must not all be zero")
        w = w / w.sum()
    neg_entropy = (w * torch.xlogy(t, t).sum(dim=1)).sum()
    return s, t, w, neg_entropy


def _objective(s: Tensor, t: Tensor, w: Tensor, neg_entropy: Tensor, ridge: float,
               b: Tensor) -> Tensor:
    """``mean_w KL(t || softmax(s + b)) + ridge * ||b||^2``."""
    cross = -(w * (t * torch.log_softmax(s + b, dim=1)).sum(dim=1)).sum()
    return neg_entropy + cross + ridge * (b * b).sum()


def _grad_hess(s: Tensor, t: Tensor, w: Tensor, ridge: float,
               b: Tensor) -> tuple[Tensor, Tensor]:
    p = torch.softmax(s + b, dim=1)
    g = (w[:, None] * (p - t)).sum(dim=0) + 2.0 * ridge * b
    wp = w[:, None] * p
    h = torch.diag(wp.sum(dim=0)) - wp.T @ p
    h = h + 2.0 * ridge * torch.eye(b.numel(), dtype=b.dtype, device=b.device)
    return g, h


def fit_class_bias(student_logits: Tensor, target_probs: Tensor, weights: Tensor | None = None,
                   ridge: float = 1e-3, iters: int = 100) -> Tensor:
    """Class bias ``b`` (C,) minimising ``mean_w KL(target || softmax(s + b)) + ridge ||b||^2``
    by damped Newton (exact gradient and Hessian, backtracking line search). Returned centred."""
    s, t, w, ne = _problem(student_logits, target_probs, weights, ridge)
    c = s.shape[1]
    b = torch.zeros(c, dtype=torch.float64, device=s.device)
    # The softmax Hessian is singular along the all-ones direction; the gradient (and so every
    # Newton step from b = 0) is orthogonal to it, so adding 11^T / C leaves the step unchanged on
    # the centred subspace and makes the system solvable when ridge = 0.
    ones = torch.full((c, c), 1.0 / c, dtype=torch.float64, device=s.device)
    f = _objective(s, t, w, ne, ridge, b)
    scale = 1.0 + abs(ne.item()) + abs(f.item())
    for _ in range(max(int(iters), 0)):
        g, h = _grad_hess(s, t, w, ridge, b)
        g = g - g.mean()
        if torch.linalg.vector_norm(g) < _GRAD_TOL:
            break
        d = -torch.linalg.solve(h + ones, g)
        d = d - d.mean()
        slope = (g * d).sum()
        if slope >= 0:
            d, slope = -g, -(g * g).sum()
        if -slope < _DECREMENT_TOL * scale:
            break  # what is left to gain is below float64 round-off
        step, accepted = 1.0, False
        for _ in range(_MAX_HALVINGS):
            cand = b + step * d
            f_new = _objective(s, t, w, ne, ridge, cand)
            if f_new <= f + _ARMIJO * step * slope:
                b, f, accepted = cand, f_new, True
                break
            step *= 0.5
        if not accepted:
            break
    return (b - b.mean()).to(device=student_logits.device, dtype=torch.float32)


def fit_prior_scale(student_logits: Tensor, target_probs: Tensor, direction: Tensor,
                    weights: Tensor | None = None, ridge: float = 1e-3,
                    iters: int = 100) -> float:
    """Scale ``tau`` of the bias ``b = -tau * direction`` (a centred log prior, see
    :func:`log_prior`) minimising the :func:`fit_class_bias` objective; 1-D damped Newton."""
    s, t, w, ne = _problem(student_logits, target_probs, weights, ridge)
    d = direction.detach().to(device=s.device, dtype=torch.float64)
    if d.shape != (s.shape[1],) or not torch.isfinite(d).all():
        raise ValueError(f"direction must be finite with shape ({s.shape[1]},)")
    d = d - d.mean()  # a no-op for log_prior output; a constant shift never changes softmax
    if torch.linalg.vector_norm(d) == 0:
        return 0.0
    tau = 0.0
    f = _objective(s, t, w, ne, ridge, -tau * d)
    scale = 1.0 + abs(ne.item()) + abs(f.item())
    for _ in range(max(int(iters), 0)):
        g, h = _grad_hess(s, t, w, ridge, -tau * d)
        g1 = -(g * d).sum()
        if abs(g1.item()) < _GRAD_TOL:
            break
        h1 = (d @ h @ d).item()
        delta = -g1.item() / h1 if h1 > 0 else -g1.item()
        if abs(g1.item() * delta) < _DECREMENT_TOL * scale:
            break  # what is left to gain is below float64 round-off
        step, accepted = 1.0, False
        for _ in range(_MAX_HALVINGS):
            cand = tau + step * delta
            f_new = _objective(s, t, w, ne, ridge, -cand * d)
            if f_new <= f + _ARMIJO * step * g1.item() * delta:
                tau, f, accepted = cand, f_new, True
                break
            step *= 0.5
        if not accepted:
            break
    return float(tau)


def teacher_reference(student_logits: Tensor, teacher_logits: Tensor,
                      direction: Tensor | None = None,
                      ridge: float = 1e-3) -> tuple[Tensor, float | None]:
    """The label-free ``teacher_ref`` correction (issue 25) from both models' logits on held-out
    substitution inputs: the class bias whose ``softmax(s + b)`` matches the teacher's posteriors
    in KL, each input weighted so the teacher's classes count equally (``balanced_weights`` over
    the teacher's mean posterior on these inputs), with a ridge. With ``direction`` (a centred log
    prior) the scalar variant: only ``tau`` in ``b = -tau * direction``. ``(b, tau)``; ``tau`` is
    None for the vector fit."""
    probs = torch.softmax(teacher_logits.detach().to(torch.float64), dim=1)
    weights = balanced_weights(probs, probs.mean(0))
    if direction is None:
        return fit_class_bias(student_logits, probs, weights, ridge=ridge), None
    tau = fit_prior_scale(student_logits, probs, direction, weights, ridge=ridge)
    d = direction.detach().to(torch.float64)
    return (-tau * (d - d.mean())).to(device=student_logits.device, dtype=torch.float32), tau


def adjusted_accuracy(logits: Tensor, bias: Tensor, labels: Tensor) -> float:
    """Accuracy (fraction in [0, 1]) of ``argmax(logits + bias)`` against ``labels``."""
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (N, C) tensor, got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    bias = bias.to(device=logits.device, dtype=torch.float64)
    pred = (logits.detach().to(torch.float64) + bias).argmax(dim=1)
    return float((pred == labels.to(pred.device)).to(torch.float64).mean().item())
