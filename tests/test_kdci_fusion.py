"""KDCI's fusion readings, the positive control, the fixed Table 4 "w/o P(z)", the controlled
class-imbalance shift, the loop's shift metrics and the compensated student's export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kdci_ray.data.shift import class_profile, quota_select, quotas
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.kdci import (
    CompensatedStudent,
    KDCIAttention,
    build_dictionary,
    load_student,
)
from kdci_ray.kdci.ablations import apply_ablations
from kdci_ray.methods import METHODS, MethodContext
from kdci_ray.models import create_model
from kdci_ray.train.loop import Collect, distill
from kdci_ray.train.resume import STUDENT_FILE

C, K = 10, 8


def module(fusion: str, projection: bool = False, seed: int = 0) -> KDCIAttention:
    torch.manual_seed(seed)
    m = KDCIAttention(C, K, hidden=16, fusion=fusion, projection=projection)
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(K, C, generator=g) * 5
    props = torch.softmax(torch.randn(K, generator=g), 0)
    m.set_dictionary(protos, props)
    return m


def logits(n: int = 32) -> torch.Tensor:
    return torch.randn(n, C, generator=torch.Generator().manual_seed(2)) * 3


def test_softmax_prior_is_capped_by_the_largest_weighted_prototype() -> None:
    m = module("softmax")
    prior = m(logits())[0] - logits()
    cap = (m.proportions.unsqueeze(1) * m.prototypes).norm(dim=1).max()
    assert float(prior.detach().norm(dim=1).max()) <= float(cap) + 1e-5


def test_expectation_is_a_convex_combination_weighted_by_p() -> None:
    m = module("expectation")
    s = logits()
    prior, lam = m.prior(s)
    weighted = lam * m.proportions
    expected = (weighted / weighted.sum(1, keepdim=True)) @ m.prototypes
    assert torch.allclose(prior, expected, atol=1e-5)
    # a full logit vector's scale, far beyond the softmax reading's ~1/K cap
    soft = module("softmax")
    assert prior.norm(dim=1).mean() > 2 * soft.prior(s)[0].norm(dim=1).mean()


def test_scaled_starts_as_softmax_and_its_scale_stays_bounded() -> None:
    s = logits()
    scaled, soft = module("scaled"), module("softmax")
    assert scaled.scale() == pytest.approx(1.0)
    assert torch.allclose(scaled(s)[0], soft(s)[0], atol=1e-5)
    opt = torch.optim.SGD([scaled.scale_logit], lr=100.0)
    for _ in range(20):  # push the scale up as hard as possible
        opt.zero_grad()
        (-scaled.prior(s)[0].norm()).backward()
        opt.step()
    assert 1.0 < scaled.scale() <= K


def test_log_prior_is_the_realised_histogram_with_no_zero_class_when_k_is_below_c() -> None:
    """Issue 25: with K = 8 prototypes for 10 classes, a prior read off the prototypes' arg-max
    gives two classes a share of 0 (+1.9 logits each at tau = -0.5); the realised prior (the
    teacher's arg-max histogram over the KD batches) has every class the batches had."""
    m = KDCIAttention(10, 8, hidden=4, fusion="log_prior", tau=-1.0)
    m.set_dictionary(torch.eye(10)[:8] * 5, torch.full((8,), 1 / 8))  # classes 8, 9 own none
    labels = torch.tensor([c for c in range(10) for _ in range(c + 1)])  # 1, 2, ..., 10 each
    teacher = torch.nn.functional.one_hot(labels, 10).float() * 4 + torch.randn(len(labels), 10)
    m.count(teacher[:20])
    m.count(teacher[20:])  # counted batch by batch
    hist = torch.bincount(teacher.argmax(1), minlength=10).float()
    assert torch.equal(m.class_prior(), hist / hist.sum())
    assert (m.class_prior() > 0).all()
    log_pi = torch.log((hist + 0.5) / (hist.sum() + 5.0))
    expected = -(log_pi - log_pi.mean())
    assert torch.allclose(m.log_prior(), expected)
    a, b = m(torch.randn(4, 10))[0], m(torch.zeros(4, 10))[0]
    assert torch.allclose(b, expected.expand(4, 10))  # the same vector whatever the input
    assert torch.allclose(a - a.detach().clone(), torch.zeros_like(a))
    assert not any(p.requires_grad for p in m.parameters())
    assert "class_counts" in m.state_dict()  # deployed and resumed with the student


def test_projection_starts_as_identity_and_trains() -> None:
    s = logits()
    plain, projected = module("expectation"), module("expectation", projection=True)
    assert torch.allclose(plain(s)[0], projected(s)[0], atol=1e-5)
    assert projected.projection is not None and projected.projection.weight.requires_grad


def test_unknown_fusion_is_refused_in_the_config() -> None:
    with pytest.raises(ConfigError, match="kdci.fusion"):
        resolve({"kdci.enabled": True, "kdci.fusion": "softmx"})


def test_without_p_is_p_equal_one_and_uniform_p_stays_one_over_k() -> None:
    feats = torch.randn(200, C, generator=torch.Generator().manual_seed(0))
    d = build_dictionary(feats, k=K, seed=0)
    g = torch.Generator().manual_seed(0)
    without = apply_ablations(d, feats, random_z=False, uniform_p=False, generator=g,
                              without_p=True)
    uniform = apply_ablations(d, feats, random_z=False, uniform_p=True, generator=g)
    assert torch.equal(without.proportions, torch.ones(K))
    assert torch.allclose(uniform.proportions, torch.full((K,), 1.0 / K))
    a, b = module("softmax"), module("softmax")
    a.set_dictionary(d.prototypes, without.proportions)
    b.set_dictionary(d.prototypes, uniform.proportions)
    s = logits()
    ratio = (a(s)[0] - s).detach().norm() / (b(s)[0] - s).detach().norm()
    assert float(ratio) == pytest.approx(K, rel=1e-4)  # the prior K times larger
    with pytest.raises(ConfigError, match="contradict"):
        resolve({"kdci.enabled": True, "kdci.uniform_p": True, "kdci.without_p": True})


# ----------------------------------------------------------------------------- the shift knob


def test_class_profile_and_quotas() -> None:
    p = class_profile(10, 64)
    assert float(p.sum()) == pytest.approx(1.0)
    assert float(p[0] / p[-1]) == pytest.approx(64, rel=1e-4)
    assert torch.all(p[:-1] > p[1:])
    assert torch.allclose(class_profile(10, 1), torch.full((10,), 0.1))
    q = quotas(p.numpy(), 1000)
    assert q.sum() == 1000 and np.abs(q - 1000 * p.numpy()).max() < 1


def test_quota_select_ranks_classes_by_availability_and_keeps_the_best() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [10, 60, 30])  # class 1 most available, then 2, then 0
    scores = rng.random(100)
    picked = quota_select(scores, labels, 21, ratio=4.0, num_classes=3)
    counts = np.bincount(labels[picked], minlength=3)
    assert counts.tolist() == quotas(class_profile(3, 4.0).numpy(), 21)[[2, 0, 1]].tolist()
    for c in range(3):  # within a class, the highest scores
        members = np.flatnonzero(labels == c)
        best = members[np.argsort(-scores[members])[:counts[c]]]
        assert set(best) == set(picked[labels[picked] == c])
    with pytest.raises(ValueError, match="class 0 needs .* has 10"):
        quota_select(scores, labels, 90, ratio=1.0, num_classes=3)
    capped = quota_select(scores, labels, 90, ratio=1.0, num_classes=3, strict=False)
    assert np.bincount(labels[capped], minlength=3).tolist() == [10, 30, 30]


def test_conditional_targets_follow_the_profile_and_default_draws_are_unchanged() -> None:
    method_cls = METHODS["fast"]
    teacher = create_model("tiny_cnn", 10, 1)

    def method(imbalance: float):
        ctx = MethodContext(teacher=teacher, student=teacher, num_classes=10, channels=1,
                            image_size=16, device=torch.device("cpu"), seed=3, rounds=1,
                            imbalance=imbalance)
        return method_cls(method_cls.Config(latent_dim=8, width=4, batch_size=8), ctx)

    plain = method(0).sample_targets(4000)
    assert torch.equal(plain[:50], torch.randint(10, (4000,),
                       generator=torch.Generator().manual_seed(3))[:50])
    shifted = torch.bincount(method(16).sample_targets(4000), minlength=10).float() / 4000
    assert torch.allclose(shifted, class_profile(10, 16), atol=0.02)
    assert int(shifted.argmin()) == 9


@pytest.mark.parametrize("bad", [-1, 0.5, math.inf])
def test_bad_imbalance_is_refused(bad) -> None:
    with pytest.raises(ConfigError, match="shift.imbalance"):
        resolve({"method": "fast", "shift.imbalance": bad})


def test_imbalance_needs_classes_to_skew() -> None:
    with pytest.raises(ConfigError, match="no conditional targets"):
        resolve({"method": "dafl", "shift.imbalance": 8})


# ----------------------------------------------------------------------------- loop and export


def test_shifted_run_reports_rare_class_and_prior_ratio(tiny_settings) -> None:
    cfg = resolve(tiny_settings, {"method": "fast", "shift.imbalance": 16, "kdci.enabled": True,
                                  "kdci.fusion": "expectation", "kdci.space": "log_probs"})
    rep = Collect()
    final = distill(cfg, rep)
    for key in ("eval/recall_rare", "eval/recall_rare_kdci", "eval/recall_min", "eval/prior_ratio",
                "kdci/prior_ratio", "eval/acc_kdci"):
        assert math.isfinite(final[key]), key
    assert final["eval/prior_ratio"] > 0
    assert 0 <= final["eval/rare_class"] < 10
    assert rep.state is not None and "kdci_module" in rep.state
    vanilla = distill(resolve(tiny_settings, {"method": "fast"}))
    assert "eval/recall_rare" not in vanilla and "eval/recall_min" in vanilla


def test_a_pool_that_cannot_fill_the_quotas_is_refused(tiny_settings) -> None:
    cfg = resolve(tiny_settings, {"method": "dfnd", "shift.imbalance": 16, "dfnd.select_n": 400})
    with pytest.raises(ValueError, match="cannot fill the class quotas.*raise pool.size"):
        distill(cfg)


def test_post_hoc_control_trains_the_vanilla_student(tiny_settings) -> None:
    vanilla, control = Collect(), Collect()
    distill(resolve(tiny_settings, {"method": "dafl"}), vanilla)
    final = distill(resolve(tiny_settings, {"method": "dafl", "kdci.enabled": True,
                                            "kdci.fusion": "log_prior", "kdci.tau": -0.5,
                                            "kdci.train_through": False}), control)
    for name, tensor in vanilla.state["state_dict"].items():
        assert torch.equal(tensor, control.state["state_dict"][name]), name
    assert final["eval/prior_ratio"] > 0
    with pytest.raises(ConfigError, match="needs a fixed fusion"):
        resolve({"kdci.enabled": True, "kdci.train_through": False})


def test_compensated_student_round_trip(tiny_settings, tmp_path) -> None:
    cfg = resolve(tiny_settings, {"method": "dafl", "kdci.enabled": True,
                                  "kdci.fusion": "scaled", "kdci.projection": True})
    rep = Collect()
    final = distill(cfg, rep)
    path = tmp_path / STUDENT_FILE
    torch.save(rep.state, path)
    raw, comp = load_student(path), load_student(path, compensated=True)
    assert isinstance(comp, CompensatedStudent)
    x = torch.randn(5, 1, 16, 16)
    adjusted, _ = comp.attention(raw(x).logits)
    assert torch.allclose(comp(x).logits, adjusted)
    assert not torch.allclose(comp(x).logits, raw(x).logits)
    assert "eval/acc_kdci" in final
    vanilla = Collect()
    distill(resolve(tiny_settings, {"method": "dafl"}), vanilla)
    torch.save(vanilla.state, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="without KDCI"):
        load_student(tmp_path / "plain.pt", compensated=True)


def test_log_probs_space_clusters_log_probabilities(tiny_settings) -> None:
    from kdci_ray.kdci import KDCI, KDCIConfig

    teacher = create_model("tiny_cnn", 10, 1).eval()
    kdci = KDCI(KDCIConfig(k=4, space="log_probs", features="source"), 10, torch.device("cpu"))
    kdci.refresh(teacher, torch.randn(64, 1, 16, 16))
    assert torch.all(torch.logsumexp(kdci.module.prototypes, dim=1) <= 1e-5)


# ----------------------------------------------------------------------------- the benchmark


def test_shift_benchmark_plans_levels_arms_seeds_and_smoke_runs_one_seed(repo_root) -> None:
    from kdci_ray.engine import plan_sweep

    path = repo_root / "tune_configs" / "kdci_shift.yaml"
    text = path.read_text()
    assert text.startswith("# kdci-ray sweep tune_configs/kdci_shift.yaml")
    assert "PASS RULE" in text  # written in the header, before any run
    plan = plan_sweep(path)
    assert len(plan.configs) == 300
    assert {c.shift.imbalance for c in plan.configs} == {1, 8, 64}
    assert {c.method for c in plan.configs} == {"dfnd", "fast"}
    assert len({c.seed for c in plan.configs}) >= 10
    assert all(c.pool.seed == c.seed for c in plan.configs)  # every seed draws its own pool
    arms = {(c.kdci.enabled, c.kdci.fusion, c.train.balance_beta, c.shift.readings)
            for c in plan.configs}
    assert arms == {(False, "softmax", 0.0, True), (True, "softmax", 0.0, False),
                    (True, "expectation", 0.0, False), (False, "softmax", 0.5, False),
                    (False, "softmax", 1.0, False)}
    smoke = plan_sweep(path, smoke=True)
    assert len(smoke.configs) == 30 and {c.seed for c in smoke.configs} == {10}
    assert all(c.smoke for c in smoke.configs)
    # an explicit seed filter wins over smoke's first seed
    picked = plan_sweep(path, smoke=True, only=["seed=12"])
    assert {c.seed for c in picked.configs} == {12}


def test_selection_cache_keys_differ_per_imbalance(tmp_path) -> None:
    from kdci_ray.data.pool_format import TensorPool
    from kdci_ray.data.selection import select

    images = torch.arange(200, dtype=torch.uint8).view(200, 1, 1, 1).expand(200, 1, 2, 2)
    labels = torch.arange(200) % 4

    def score(batch: torch.Tensor) -> torch.Tensor:  # image i: class i % 4
        return torch.nn.functional.one_hot(labels[batch[:, 0, 0, 0].long()], 4).float() * 5

    pool = TensorPool(images.contiguous())
    plain = select(pool, score, 40, "confidence", tmp_path)
    shifted = select(pool, score, 40, "confidence", tmp_path, imbalance=8.0, num_classes=4)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    counts = np.bincount(labels[torch.as_tensor(shifted)].numpy(), minlength=4)
    assert counts.max() / counts.min() >= 6 and len(plain) == 40


def test_the_levels_of_a_shift_score_each_pool_once(tmp_path, monkeypatch) -> None:
    """The selections of every imbalance level are cut from one scoring of the pool (cached
    beside them); scores recorded with other package versions are not trusted."""
    from kdci_ray.data import selection
    from kdci_ray.data.pool_format import TensorPool

    images = torch.arange(200, dtype=torch.uint8).view(200, 1, 1, 1).expand(200, 1, 2, 2)
    labels = torch.arange(200) % 4
    seen = []

    def score(batch: torch.Tensor) -> torch.Tensor:
        seen.append(len(batch))
        return torch.nn.functional.one_hot(labels[batch[:, 0, 0, 0].long()], 4).float() * 5

    pool = TensorPool(images.contiguous())
    picks = [selection.select(pool, score, 40, "confidence", tmp_path, imbalance=r,
                              num_classes=4) for r in (1.0, 8.0)]
    assert sum(seen) == 200 and not np.array_equal(*picks)
    record = next(tmp_path.glob("scores-*.json"))
    data = json.loads(record.read_text())
    data["versions"] = {k: "0.0" for k in data["versions"]}
    record.write_text(json.dumps(data))
    selection.select(pool, score, 40, "confidence", tmp_path, imbalance=64.0, num_classes=4)
    assert sum(seen) == 400  # scored again
