"""Label-shift corrections (kdci_ray.kdci.label_shift): priors, EM prior, weights, bias fits."""

from __future__ import annotations

import pytest
import torch

from kdci_ray.kdci.label_shift import (
    adjusted_accuracy,
    balanced_weights,
    em_prior,
    fit_class_bias,
    fit_prior_scale,
    log_prior,
    realised_prior,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _objective(s: torch.Tensor, t: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None = None,
               ridge: float = 0.0) -> torch.Tensor:
    """Independent float64 statement of the fitted objective (weighted KL + ridge)."""
    s, t, b = s.double(), t.double(), b.double()
    w = torch.ones(s.shape[0], dtype=torch.float64) if w is None else w.double()
    kl = (torch.xlogy(t, t) - t * torch.log_softmax(s + b, dim=1)).sum(dim=1)
    return (w * kl).sum() / w.sum() + ridge * (b * b).sum()


# --- realised_prior / log_prior -------------------------------------------------------------------

def test_realised_prior_is_the_argmax_histogram_share():
    # Only classes 1, 3 and 4 of 6 ever win the arg-max.
    labels = torch.tensor([1, 1, 3, 4, 4, 4, 1, 3])
    logits = torch.nn.functional.one_hot(labels, 6).float() * 3.0
    counts = torch.bincount(logits.argmax(dim=1), minlength=6)
    got = realised_prior(counts)
    assert got.dtype == torch.float32 and got.shape == (6,)
    assert torch.equal(got, counts.float() / labels.numel())
    assert torch.equal(got == 0, torch.tensor([True, False, True, False, False, True]))
    assert torch.equal(realised_prior(torch.zeros(4)), torch.full((4,), 0.25))
    with pytest.raises(ValueError):
        realised_prior(torch.tensor([3.0, -1.0, 2.0]))


def test_realised_prior_has_no_zero_class_where_a_k_lt_c_dictionary_has_two():
    # 10 classes; every class wins the teacher's arg-max somewhere. A K = 8 dictionary (one
    # prototype per cluster, classes 8 and 9 merged into the clusters of 0 and 1) yields prototypes
    # whose arg-maxes can cover at most 8 classes: a prior read off them has zero classes.
    c, k, per = 10, 8, 30
    gen = _gen(0)
    sizes = torch.tensor([per] * 8 + [per // 2] * 2)
    labels = torch.repeat_interleave(torch.arange(c), sizes)
    teacher = torch.randn(labels.numel(), c, generator=gen) * 0.5
    teacher += 5.0 * torch.nn.functional.one_hot(labels, c)
    cluster = torch.where(labels >= k, labels - k, labels)
    prototypes = torch.stack([teacher[cluster == j].mean(dim=0) for j in range(k)])
    proto_hist = torch.bincount(prototypes.argmax(dim=1), minlength=c)
    assert (proto_hist == 0).sum() >= c - k  # the failure mode, constructed

    hist = torch.bincount(teacher.argmax(dim=1), minlength=c)
    prior = realised_prior(hist)
    assert (prior > 0).all()
    assert torch.allclose(prior, hist.float() / labels.numel(), rtol=0, atol=1e-7)
    assert (realised_prior(proto_hist) == 0).sum() >= c - k


def test_log_prior_finite_and_centred_with_a_zero_count():
    counts = torch.tensor([50.0, 0.0, 30.0, 20.0])
    lp = log_prior(counts)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    assert abs(lp.sum().item()) < 1e-5
    ref = torch.log((counts.double() + 0.5) / (100.0 + 2.0))
    assert torch.allclose(lp.double(), ref - ref.mean(), atol=1e-6)
    assert lp.argmin().item() == 1 and lp.argmax().item() == 0


# --- em_prior -------------------------------------------------------------------------------------

def _gaussian_posteriors(target: torch.Tensor, source: torch.Tensor, n: int,
                         seed: int) -> torch.Tensor:
    """Exact Bayes posteriors under ``source`` for 1-D unit Gaussians at -2.5, 0, 2.5, samples drawn
    with class prior ``target``."""
    gen = _gen(seed)
    mu = torch.tensor([-2.5, 0.0, 2.5], dtype=torch.float64)
    y = torch.multinomial(target, n, replacement=True, generator=gen)
    x = mu[y] + torch.randn(n, generator=gen, dtype=torch.float64)
    return torch.softmax(-0.5 * (x[:, None] - mu) ** 2 + source.log(), dim=1)


def test_em_prior_recovers_a_known_target_prior():
    target = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    probs = _gaussian_posteriors(target, torch.full((3,), 1 / 3, dtype=torch.float64), 20000, 1)
    est = em_prior(probs.float())
    assert est.dtype == torch.float32 and abs(est.sum().item() - 1) < 1e-5
    err = (est.double() - target).abs().max().item()
    naive = (probs.mean(dim=0) - target).abs().max().item()
    assert err < 0.02
    assert err < naive - 0.02  # the mean posterior is pulled towards the (uniform) source prior


def test_em_prior_with_a_non_uniform_source_prior():
    target = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    source = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    probs = _gaussian_posteriors(target, source, 20000, 2)
    err = (em_prior(probs, source).double() - target).abs().max().item()
    wrong = (em_prior(probs).double() - target).abs().max().item()  # source taken as uniform
    assert err < 0.02
    assert err < wrong / 2


# --- balanced_weights -----------------------------------------------------------------------------

def test_balanced_weights_mean_one_beta_zero_and_uniform_class_mass():
    probs = torch.softmax(torch.randn(64, 5, generator=_gen(3)), dim=1)
    prior = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    w = balanced_weights(probs, prior)
    assert w.shape == (64,) and w.dtype == torch.float32
    assert abs(w.mean().item() - 1) < 1e-6 and w.std() > 0
    assert torch.equal(balanced_weights(probs, prior, beta=0.0), torch.ones(64))

    counts = torch.tensor([40, 30, 15, 10, 5])
    labels = torch.repeat_interleave(torch.arange(5), counts)
    onehot = torch.nn.functional.one_hot(labels, 5).float()
    w = balanced_weights(onehot, counts.float() / counts.sum())
    mass = torch.zeros(5).index_add_(0, labels, w)
    assert torch.allclose(mass, torch.full((5,), mass.mean().item()), rtol=1e-5)
    assert abs(w.mean().item() - 1) < 1e-6


# --- fit_class_bias -------------------------------------------------------------------------------

def test_fit_class_bias_is_zero_when_the_student_matches():
    t = torch.randn(200, 6, generator=_gen(4)) * 2
    b = fit_class_bias(t, torch.softmax(t, dim=1))
    assert b.shape == (6,) and b.dtype == torch.float32
    assert b.abs().max().item() < 1e-6


def test_fit_class_bias_recovers_a_known_bias():
    c = 10
    t = torch.randn(2000, c, generator=_gen(5), dtype=torch.float64) * 2
    b0 = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.0, 0.7, -0.2, 0.4, -0.8, 0.3], dtype=torch.float64)
    b0 = b0 - b0.mean()
    s, target = t - b0, torch.softmax(t, dim=1)
    b = fit_class_bias(s.float(), target.float(), ridge=0.0)
    assert abs(b.sum().item()) < 1e-5
    assert (b.double() - b0).abs().max().item() < 1e-3
    assert _objective(s, target, b) < _objective(s, target, torch.zeros(c)) - 0.01

    w = torch.rand(2000, generator=_gen(6), dtype=torch.float64) * 3
    bw = fit_class_bias(s, target, weights=w, ridge=0.0)
    assert (bw.double() - b0).abs().max().item() < 1e-3


def test_fit_class_bias_is_the_ridge_optimum():
    # Noisy (non-realisable) targets with a ridge: the gradient of the objective vanishes at b.
    gen = _gen(7)
    s = torch.randn(500, 4, generator=gen, dtype=torch.float64)
    target = torch.softmax(s + torch.tensor([0.8, -0.3, 0.1, -0.6], dtype=torch.float64)
                           + torch.randn(500, 4, generator=gen, dtype=torch.float64), dim=1)
    w = torch.rand(500, generator=gen, dtype=torch.float64) + 0.1
    b = fit_class_bias(s, target, weights=w, ridge=0.05).double().requires_grad_(True)
    _objective(s, target, b, w, ridge=0.05).backward()
    assert b.grad.abs().max().item() < 1e-6
    # one-hot targets: the cross-entropy ("oracle") bias beats no bias
    labels = target.argmax(dim=1)
    onehot = torch.nn.functional.one_hot(labels, 4).double()
    bo = fit_class_bias(s, onehot)
    assert _objective(s, onehot, bo) < _objective(s, onehot, torch.zeros(4))


# --- fit_prior_scale ------------------------------------------------------------------------------

def test_fit_prior_scale_recovers_tau_and_is_zero_when_matching():
    t = torch.randn(1000, 8, generator=_gen(8), dtype=torch.float64) * 2
    direction = log_prior(torch.tensor([300.0, 200, 150, 120, 100, 80, 40, 10]))
    target = torch.softmax(t, dim=1)
    tau0 = 0.8
    s = t + tau0 * direction.double()
    tau = fit_prior_scale(s, target, direction, ridge=0.0)
    assert isinstance(tau, float) and abs(tau - tau0) < 1e-4
    tau_r = fit_prior_scale(s, target, direction)  # the default ridge only shrinks it slightly
    assert 0 < tau0 - tau_r < 0.05
    assert abs(fit_prior_scale(t, target, direction)) < 1e-8
    assert fit_prior_scale(t - tau0 * direction.double(), target, direction, ridge=0.0) < -0.79


# --- adjusted_accuracy ----------------------------------------------------------------------------

def test_adjusted_accuracy_hand_made():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.5], [1.0, 0.0, 1.5], [0.2, 0.0, -1.0]])
    labels = torch.tensor([0, 2, 2, 1])
    assert adjusted_accuracy(logits, torch.zeros(3), labels) == pytest.approx(0.5)
    # +0.9 on class 2 flips row 1 to class 2; +0.3 on class 1 flips row 3 to class 1
    assert adjusted_accuracy(logits, torch.tensor([0.0, 0.3, 0.9]), labels) == pytest.approx(1.0)
    assert adjusted_accuracy(logits, torch.tensor([0.0, 0.0, -5.0]), labels) == pytest.approx(0.25)
