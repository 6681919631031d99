"""Tests for kdci_ray.kdci: confounder dictionary, backdoor adjustment, the refresh life cycle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdci_ray.kdci import (
    KDCI,
    KDCIAttention,
    KDCIConfig,
    attention_entropy,
    build_dictionary,
    teacher_logits,
)
from kdci_ray.methods.losses import kd_loss
from kdci_ray.models import create_model


def make_clusters(sizes: list[int], dim: int = 10, spread: float = 0.05, seed: int = 0):
    """Well-separated logit clusters: (features, true labels, true means)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), dim, generator=g) * 10.0
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    feats, labels = feats[perm], labels[perm]
    means = torch.stack([feats[labels == i].double().mean(0) for i in range(len(sizes))])
    return feats, labels, means


def match_rows(found: torch.Tensor, truth: torch.Tensor) -> list[int]:
    """For each row of ``found``, the index of the closest row of ``truth``; must be a bijection."""
    dist = torch.cdist(found.double(), truth.double())
    order = dist.argmin(1).tolist()
    assert sorted(order) == list(range(len(truth))), "prototypes do not map one-to-one to clusters"
    return order


# ----------------------------------------------------------------------------- dictionary


@pytest.mark.parametrize("pca_dim", [0, 2])
def test_dictionary_recovers_clusters_in_logit_space(pca_dim: int) -> None:
    sizes = [5, 10, 15, 20]
    feats, _, means = make_clusters(sizes)
    d = build_dictionary(feats, k=4, pca_dim=pca_dim, seed=0)
    assert d.k == 4 and d.prototypes.shape == (4, 10)
    assert d.num_samples == sum(sizes) and d.backend == "sklearn"
    assert float(d.proportions.sum()) == pytest.approx(1.0, abs=1e-6)
    order = match_rows(d.prototypes, means)
    for row, cluster in enumerate(order):
        # prototype = mean logit vector in the ORIGINAL space, even when clustering ran in 2-D
        assert torch.allclose(d.prototypes[row].double(), means[cluster], atol=1e-5)
        assert float(d.proportions[row]) == pytest.approx(sizes[cluster] / sum(sizes), abs=1e-6)


def test_dictionary_same_seed_is_identical() -> None:
    feats, _, _ = make_clusters([30, 30, 30], spread=3.0)  # overlapping: seed matters
    a = build_dictionary(feats, k=5, seed=7)
    b = build_dictionary(feats, k=5, seed=7)
    assert torch.equal(a.prototypes, b.prototypes)
    assert torch.equal(a.proportions, b.proportions)
    assert a.inertia == b.inertia


def test_dictionary_k_larger_than_n() -> None:
    feats, _, _ = make_clusters([2, 1])
    with pytest.raises(ValueError) as info:
        build_dictionary(feats, k=5)
    assert "K=5" in str(info.value) and "N=3" in str(info.value)


def test_dictionary_rejects_nan() -> None:
    feats, _, _ = make_clusters([5, 5])
    feats[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        build_dictionary(feats, k=2)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_dictionary_degenerate_features_leave_an_empty_zero_cluster() -> None:
    feats = torch.full((6, 4), 3.0)
    d = build_dictionary(feats, k=2)
    assert sorted(d.proportions.tolist()) == [0.0, 1.0]
    empty = int(d.proportions.argmin())
    assert torch.equal(d.prototypes[empty], torch.zeros(4))
    assert torch.equal(d.prototypes[1 - empty], torch.full((4,), 3.0))


# ----------------------------------------------------------------------------- adjustment


def manual_adjustment(m: KDCIAttention, s: torch.Tensor, z: torch.Tensor, p: torch.Tensor):
    """Eq. 6-8 written out per sample and prototype, in float64."""
    ws = m.w_s.weight.detach().double()
    wz, bz = m.w_z.weight.detach().double(), m.w_z.bias.detach().double()
    v = m.v.weight.detach().double()[0]
    s, z, p = s.double(), z.double(), p.double()
    out, lams = [], []
    for b in range(len(s)):
        scores = torch.stack([v @ torch.tanh(ws @ s[b] + wz @ z[i] + bz) for i in range(len(z))])
        lam = torch.exp(scores - scores.max())
        lam = lam / lam.sum()
        prior = sum(lam[i] * z[i] * p[i] for i in range(len(z)))
        out.append(s[b] + prior)
        lams.append(lam)
    return torch.stack(out), torch.stack(lams)


@pytest.fixture
def adjusted():
    torch.manual_seed(0)
    c, k = 6, 4
    m = KDCIAttention(num_classes=c, k=k, hidden=16)
    z = torch.randn(k, c) * 3.0
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    m.set_dictionary(z, p)
    s = torch.randn(5, c)
    return m, s, z, p


def test_adjustment_matches_equations(adjusted) -> None:
    m, s, z, p = adjusted
    out, lam = m(s)
    assert out.shape == s.shape and lam.shape == (5, 4)
    assert torch.allclose(lam.sum(1), torch.ones(5), atol=1e-6)
    assert (lam > 0).all()
    want_out, want_lam = manual_adjustment(m, s, z, p)
    assert torch.allclose(lam.double(), want_lam, atol=1e-6)
    assert torch.allclose(out.double(), want_out, atol=1e-5)
    assert torch.allclose(m.attention(s), lam)
    assert not torch.allclose(out, s)  # the adjustment did something


def test_zero_proportions_leave_logits_unchanged(adjusted) -> None:
    m, s, z, _ = adjusted
    m.set_dictionary(z, torch.zeros(4))
    out, lam = m(s)
    assert torch.equal(out, s)
    assert torch.allclose(lam.sum(1), torch.ones(5), atol=1e-6)


def test_fresh_module_is_identity() -> None:
    m = KDCIAttention(num_classes=3, k=2, hidden=4)
    s = torch.randn(4, 3)
    assert torch.equal(m(s)[0], s)
    assert m.prototypes.shape == (2, 3) and m.proportions.shape == (2,)
    assert {"prototypes", "proportions"} <= set(m.state_dict())  # buffers travel with it


def test_gradients_reach_attention_and_student(adjusted) -> None:
    m, s, _, _ = adjusted
    s = s.clone().requires_grad_(True)
    t = torch.randn_like(s)
    out, _ = m(s)
    kd_loss(out, t, 4.0).backward()
    for name, param in (("w_s", m.w_s.weight), ("w_z", m.w_z.weight), ("v", m.v.weight)):
        assert param.grad is not None, name
        assert float(param.grad.abs().sum()) > 0.0, name
    assert s.grad is not None and float(s.grad.abs().sum()) > 0.0
    assert m.prototypes.grad is None  # the dictionary is a buffer, not trained


@pytest.mark.parametrize("shape", [(3, 6), (4, 5), (4,)])
def test_wrong_dictionary_shape_raises(adjusted, shape) -> None:
    m, _, _, p = adjusted
    before = m.prototypes.clone()
    with pytest.raises(ValueError, match="does not match"):
        m.set_dictionary(torch.zeros(shape), p)
    assert torch.equal(m.prototypes, before)


def test_wrong_proportions_shape_raises(adjusted) -> None:
    m, _, z, _ = adjusted
    with pytest.raises(ValueError):
        m.set_dictionary(z, torch.tensor([0.5]))


def test_kdci_changes_the_kd_loss(adjusted) -> None:
    m, s, _, _ = adjusted
    t = torch.randn(5, 6) * 2.0
    with torch.no_grad():
        adjusted_logits, _ = m(s)
    base = float(kd_loss(s, t, 4.0))
    changed = float(kd_loss(adjusted_logits, t, 4.0))
    assert abs(changed - base) > 1e-4 * max(1.0, base)


def test_class_uniform_prototypes_do_not_change_the_kd_loss(adjusted) -> None:
    # softmax is shift-invariant: a prior equal for every class cannot move the loss,
    # so the effect above comes from the prototypes' class profile
    m, s, _, p = adjusted
    m.set_dictionary(torch.arange(4.0)[:, None].expand(4, 6).contiguous() + 1.0, p)
    t = torch.randn(5, 6)
    with torch.no_grad():
        out, _ = m(s)
    assert not torch.allclose(out, s)
    assert float(kd_loss(out, t, 4.0)) == pytest.approx(float(kd_loss(s, t, 4.0)), rel=1e-5)


def test_attention_entropy() -> None:
    assert attention_entropy(torch.full((3, 8), 1 / 8)) == pytest.approx(math.log(8), rel=1e-5)
    one_hot = torch.zeros(2, 8)
    one_hot[:, 3] = 1.0
    assert attention_entropy(one_hot) == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- plug-in


def grouped_images(sizes: list[int], seed: int = 0):
    """Groups of near-identical random 16x16 images: tight, separable teacher-logit clusters."""
    g = torch.Generator().manual_seed(seed)
    bases = torch.randn(len(sizes), 1, 16, 16, generator=g) * torch.tensor(
        [1.0, 3.0, 6.0][: len(sizes)]).view(-1, 1, 1, 1)
    groups = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    images = bases[groups] + 1e-3 * torch.randn(len(groups), 1, 16, 16, generator=g)
    perm = torch.randperm(len(groups), generator=g)
    return images[perm], groups[perm]


def test_refresh_builds_dictionary_from_teacher_logits() -> None:
    torch.manual_seed(0)
    teacher = create_model("tiny_cnn", 10, 1).eval()
    sizes = [8, 16, 24]
    images, groups = grouped_images(sizes)
    kdci = KDCI(KDCIConfig(k=3, hidden=32), num_classes=10, device=torch.device("cpu"))
    metrics = kdci.refresh(teacher, images)

    logits = teacher_logits(teacher, images).double()
    means = torch.stack([logits[groups == i].mean(0) for i in range(3)])
    spread = max(float((logits[groups == i] - means[i]).norm(dim=1).max()) for i in range(3))
    gap = float(torch.pdist(means).min())
    assert gap > 20 * spread, "test setup: teacher-logit groups must be well separated"

    protos, props = kdci.module.prototypes, kdci.module.proportions
    assert protos.shape == (3, 10) and props.shape == (3,)
    assert float(props.sum()) == pytest.approx(1.0, abs=1e-6)
    order = match_rows(protos, means)
    for row, group in enumerate(order):
        assert torch.allclose(protos[row].double(), means[group], atol=1e-5)
        assert float(props[row]) == pytest.approx(sizes[group] / sum(sizes), abs=1e-6)
    assert kdci.refreshes == 1
    assert metrics["kdci/samples"] == float(sum(sizes))
    assert metrics["kdci/prop_max"] == pytest.approx(max(sizes) / sum(sizes), abs=1e-6)
    assert kdci.dictionary is not None and torch.equal(kdci.dictionary.prototypes, protos)

    s = torch.randn(4, 10)
    out, lam = kdci.compensate(s)
    want, _ = manual_adjustment(kdci.module, s, protos, props)
    assert torch.allclose(out.double(), want, atol=1e-5)
    assert lam.shape == (4, 3)


def test_teacher_logits_batches_match_one_pass() -> None:
    torch.manual_seed(1)
    teacher = create_model("tiny_cnn", 10, 1).eval()
    images = torch.randn(10, 1, 16, 16)
    with torch.no_grad():
        whole = teacher(images).logits
    batched = teacher_logits(teacher, images, batch_size=3)
    assert batched.shape == (10, 10) and not batched.requires_grad
    assert torch.allclose(batched, whole, atol=1e-5)


def test_compensate_before_refresh_raises() -> None:
    kdci = KDCI(KDCIConfig(k=2), num_classes=10, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="refresh"):
        kdci.compensate(torch.randn(2, 10))


def test_refresh_reseeds_each_round() -> None:
    torch.manual_seed(2)
    teacher = create_model("tiny_cnn", 10, 1).eval()
    images = torch.randn(40, 1, 16, 16)
    kdci = KDCI(KDCIConfig(k=4, hidden=8), num_classes=10, device=torch.device("cpu"), seed=3)
    kdci.refresh(teacher, images)
    kdci.refresh(teacher, images)
    assert kdci.refreshes == 2
    feats = teacher_logits(teacher, images)
    # the second refresh clusters with the run seed + 1; same data, same seed -> same result
    again = build_dictionary(feats, 4, seed=4)
    first = build_dictionary(feats, 4, seed=3)
    assert not torch.equal(first.proportions, again.proportions)  # the seed matters here
    assert np.allclose(kdci.module.prototypes.numpy(), again.prototypes.numpy(), atol=1e-6)
