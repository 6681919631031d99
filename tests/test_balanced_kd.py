"""Class-balanced KD weights (``train.balance_beta``): each KD sample weighted by
``(sum_y p_T(y|x) / pi(y))^beta`` normalised to mean 1, ``pi`` the teacher's arg-max histogram
over every KD batch so far (importance weighting for label shift), for every method's
``student_loss``; off (0) leaves the step exactly as before."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.kdci import label_shift
from kdci_ray.kdci.label_shift import balanced_weights_unchecked
from kdci_ray.methods import METHODS
from kdci_ray.methods.base import Method
from kdci_ray.methods.losses import kd_loss, weighted_kd_loss
from kdci_ray.train.kd_step import KDStep
from kdci_ray.train.loop import Collect, distill
from kdci_ray.train.runtime import Runtime

CPU = torch.device("cpu")
# loading a CPU checkpoint into meta modules copies nothing (the host-read test's stand-in device)
pytestmark = pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the weights


def test_weights_have_mean_one_and_beta_zero_gives_ones() -> None:
    g = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(32, 5, generator=g) * 3, dim=1)
    prior = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    for beta in (0.5, 1.0, 2.0):
        w = balanced_weights_unchecked(probs, prior, beta)
        assert w.shape == (32,) and w.dtype == torch.float32
        assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
        assert w.std().item() > 0.05  # not a constant
        expected = (probs.double() / prior.double()).sum(1) ** beta
        assert torch.allclose(w.double(), expected / expected.mean(), atol=1e-6)
    assert torch.equal(balanced_weights_unchecked(probs, prior, 0.0), torch.ones(32))


def test_the_step_helper_agrees_with_label_shiftbalanced_weights_unchecked() -> None:
    """What the KD step calls is ``label_shift.balanced_weights`` without its checks."""
    g = torch.Generator().manual_seed(1)
    probs = F.softmax(torch.randn(20, 4, generator=g) * 2, dim=1)
    prior = torch.tensor([0.7, 0.2, 0.1, 0.0])  # a class never seen: clamped to 1e-6
    for beta in (0.5, 1.0):
        assert torch.allclose(balanced_weights_unchecked(probs, prior, beta),
                              label_shift.balanced_weights(probs, prior, beta), atol=1e-6)


class _FixedBatch(Method):
    """A stub method for one KD step: the same inputs every draw, plain ``student_loss``
    recording the weights it was given."""

    name = "fixed_batch"

    def __init__(self, x: torch.Tensor, kd_temperature: float = 1.0) -> None:
        self.x = x
        self.cfg = SimpleNamespace(kd_temperature=kd_temperature)
        self.seen: list[torch.Tensor | None] = []

    def sample(self, batch_size: int) -> torch.Tensor:
        return self.x

    def student_loss(self, student_logits, teacher_logits, weights=None):
        self.seen.append(None if weights is None else weights.detach().clone())
        return super().student_loss(student_logits, teacher_logits, weights=weights)


class _Teacher(nn.Module):
    """Logits ``10 * one_hot(labels)`` for the fixed batch: one-hot posteriors (nearly)."""

    def __init__(self, labels: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.logits = 10.0 * F.one_hot(labels, num_classes).float()

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits)


class _Student(nn.Module):
    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.fc(x))


def _one_step(settings: dict, beta: float, labels: torch.Tensor, num_classes: int):
    cfg = resolve(settings, {"train.balance_beta": beta, "train.batch_size": len(labels)})
    torch.manual_seed(0)
    method = _FixedBatch(torch.randn(len(labels), 6))
    student = _Student(6, num_classes)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = KDStep(cfg, method, _Teacher(labels, num_classes), student, None, opt, sched,
                  Runtime(0, 1, CPU), num_classes)  # no counts yet: the first KD batch
    assert step() is None
    return method.seen, step


def test_one_hot_posteriors_under_a_skewed_prior_get_a_balanced_weighted_histogram(
        tiny_settings) -> None:
    """The first KD batch already has a prior (the counts after adding it): a 60/30/10 batch of
    one-hot posteriors is weighted to (nearly) equal class totals; off, nothing is passed."""
    c = 3
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate((60, 30, 10))])
    seen, step = _one_step(tiny_settings, 1.0, labels, c)
    (w,) = seen
    assert w is not None and w.shape == (100,) and not w.requires_grad
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
    plain = torch.bincount(labels, minlength=c).double()
    weighted = torch.zeros(c, dtype=torch.float64).index_add_(0, labels, w.double())
    assert plain.max() / plain.min() == 6.0
    assert weighted.max() / weighted.min() < 1.05  # the half count keeps it from exactly 1
    assert step.counts() == [60, 30, 10]
    sums = step.take_sums()
    assert sums["train/balance_w_max"] == pytest.approx(w.max().item())

    seen, step = _one_step(tiny_settings, 0.0, labels, c)
    assert seen == [None]  # off: student_loss called exactly as without the key
    assert "train/balance_w_max" not in step.take_sums()


def test_a_half_exponent_balances_half_way(tiny_settings) -> None:
    c = 3
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate((60, 30, 10))])
    (w,), _ = _one_step(tiny_settings, 0.5, labels, c)
    weighted = torch.zeros(c, dtype=torch.float64).index_add_(0, labels, w.double())
    ratio = (weighted.max() / weighted.min()).item()
    assert 1.5 < ratio < 3.0  # ~ sqrt(6): between plain (6) and balanced (1)


# ----------------------------------------------------------------------------- the losses


def test_weighted_kd_is_plain_kd_at_unit_weights_and_weights_each_sample() -> None:
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert torch.allclose(weighted_kd_loss(s, t, torch.ones(8), 4.0), kd_loss(s, t, 4.0),
                          atol=1e-6)
    w = torch.zeros(8)
    w[3] = 2.0
    one = kd_loss(s[3:4], t[3:4], 4.0)  # batch mean of one sample = its own KL
    assert torch.allclose(weighted_kd_loss(s, t, w, 4.0), one * 2 / 8, atol=1e-6)


def test_every_method_takes_sample_weights(tiny_settings) -> None:
    """Every ``student_loss`` accepts ``weights``; DFND multiplies its class weights by them."""
    from kdci_ray.methods.dfnd import DFND

    for name, cls in METHODS.items():
        assert "weights" in cls.student_loss.__code__.co_varnames, name
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    w = torch.rand(8, generator=g) * 2
    dfnd = DFND.__new__(DFND)
    cfg = resolve(tiny_settings, {"method": "dfnd", "dfnd.adaptation": False})
    dfnd.cfg, dfnd.ctx = cfg.method_config, SimpleNamespace(num_classes=10)
    dfnd.weights = torch.linspace(0.5, 1.5, 10)
    labels = t.argmax(1)
    got = dfnd.student_loss(s, t, weights=w)["kd"]
    want = weighted_kd_loss(s, t, dfnd.weights[labels] * w, cfg.method_config.kd_temperature)
    assert torch.allclose(got, want, atol=1e-6)
    plain = weighted_kd_loss(s, t, dfnd.weights[labels], cfg.method_config.kd_temperature)
    assert torch.equal(dfnd.student_loss(s, t)["kd"], plain)


# ----------------------------------------------------------------------------- runs


@pytest.mark.parametrize("method", ["dfnd", "fast"])
def test_a_balanced_run_finishes_and_trains_a_different_student(tiny_settings, method) -> None:
    runs = {}
    for beta in (0.0, 1.0):
        rep = Collect()
        final = distill(resolve(tiny_settings, {"method": method, "train.balance_beta": beta}),
                        rep)
        runs[beta] = (final, rep.state["state_dict"])
    final, state = runs[1.0]
    assert final["finished"] == 1.0
    assert all(math.isfinite(v) for v in final.values() if isinstance(v, float)), final
    assert final["train/balance_w_max"] > 1.0  # the weights (mean 1) are spread
    assert "train/balance_w_max" not in runs[0.0][0]
    assert not _equal_states(state, runs[0.0][1])


@pytest.mark.parametrize("method", ["dfnd", "fast"])
def test_a_balanced_run_resumed_mid_run_matches_the_uninterrupted_run(tiny_settings,
                                                                     method) -> None:
    """Nothing new to checkpoint: the prior is the class counts, which a checkpoint holds."""
    cfg = resolve(tiny_settings, {"method": method, "train.balance_beta": 1.0,
                                  "train.rounds": 3, "train.eval_every": 1, "pool.size": 400})
    whole = Collect()
    final = distill(cfg, whole)
    resumed = Collect()
    after = distill(cfg, resumed, resume=whole.snapshots[0].resume)
    assert [m["round"] for _, m in resumed.history] == [2, 3]
    assert _equal_states(resumed.state["state_dict"], whole.state["state_dict"])
    for key in ("eval/acc", "train/loss", "train/balance_w_max", "lr"):
        assert after[key] == final[key], key


@pytest.mark.parametrize("method", ["dfnd", "fast"])
def test_balanced_weights_never_read_the_device_back(tiny_settings, method) -> None:
    """The weights stay on the device: a KD step still reads back once (the non-finite check)."""
    from device_checks import HostReads
    from test_gpu_paths import _cpu_run, _on_meta

    run = _cpu_run({**tiny_settings, "train.balance_beta": 1.0}, method, kdci=False)
    cfg, data = run[0], run[1]
    assert cfg.train.balance_beta == 1.0
    teacher_m, student_m, method_m, _, rt = _on_meta(*run)
    opt = torch.optim.SGD(student_m.parameters(), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = KDStep(cfg, method_m, teacher_m, student_m, None, opt, sched, rt, data.num_classes)
    student_m.train()
    with HostReads().active() as reads:
        for _ in range(2):
            assert step() is None
    assert reads.count == 2, reads.where
    assert "train/balance_w_max" in step.sums


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("beta", [-1.0, float("nan"), float("inf"), 4.5])
def test_a_bad_balance_beta_is_refused(tiny_settings, beta) -> None:
    with pytest.raises(ConfigError, match=r"train\.balance_beta"):
        resolve(tiny_settings, {"train.balance_beta": beta})


def test_balance_beta_defaults_off_and_takes_the_issues_values(tiny_settings) -> None:
    assert resolve(tiny_settings).train.balance_beta == 0.0
    for beta in (0.5, 1.0, 4.0):
        assert resolve(tiny_settings, {"train.balance_beta": beta}).train.balance_beta == beta
