"""Re-training the published CGN-MNIST teacher with SKDCGN's perturbed composition
(``kdci_ray.cgn.retrain``; Ambekar et al., 2022, on Sauer & Geiger's CGN).

The checkpoints are read from ``../shared/data/cgn_mnist`` beside the repository; the tests that
need them skip when it is absent. Tiny batches and a narrow discriminator keep the file fast."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from kdci_ray.cgn import retrain as retrain_mod
from kdci_ray.cgn.cgn_mnist import MASK_MAX, MASK_MIN, CGNMnist, load_cgn_mnist
from kdci_ray.cgn.data import MechanismData
from kdci_ray.cgn.retrain import (
    LinearDiscriminator,
    RetrainConfig,
    perturb_composition_mask,
    retrain_cgn,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cgn_mnist"
WEIGHTS = SHARED / "weights" / "cgn_double_colored_MNIST.pth"
needs_shared = pytest.mark.skipif(
    not WEIGHTS.is_file(),
    reason=f"the published CGN-MNIST checkpoint is not at {WEIGHTS} (read-only data beside the "
           f"repository, ../shared/data/cgn_mnist); these tests need it")


def tiny(**kw) -> RetrainConfig:
    base = {"steps": 2, "batch_size": 4, "d_width": 32, "d_warmup": 1}
    return RetrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def cgn():
    return load_cgn_mnist(WEIGHTS)


@pytest.fixture(scope="module")
def data() -> MechanismData:
    g = torch.Generator().manual_seed(0)
    n = 20
    masks = torch.zeros(n, 1, 32, 32)
    masks[:, :, 8:24, 12:20] = 1.0
    fg, bg = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    fg, bg = fg.expand(-1, -1, 32, 32).contiguous(), bg.expand(-1, -1, 32, 32).contiguous()
    labels = torch.arange(n) % 10
    return MechanismData("double_colored", masks * fg + (1 - masks) * bg, labels, masks, fg, bg,
                         labels.clone(), labels.clone())


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_is_flat():
    for f in dataclasses.fields(RetrainConfig):
        assert f.type in ("int", "float", "bool", "str", int, float, bool, str), f
    assert RetrainConfig().steps == 0


def test_discriminator_shape():
    disc = LinearDiscriminator(width=16)
    assert disc.net[0].in_features == 3 * 32 * 32 + 10
    out = disc(torch.zeros(5, 3, 32, 32), torch.arange(5))
    assert out.shape == (5, 1)


def test_opacity_bounds_the_mask():
    mask = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    out = perturb_composition_mask(mask, RetrainConfig(opacity=0.75), torch.Generator())
    assert out.max() <= 0.75 + 1e-6
    assert torch.allclose(out, 0.75 * mask)
    # the identity configuration leaves the mask alone
    assert torch.equal(perturb_composition_mask(mask, RetrainConfig(), torch.Generator()), mask)


def test_rotation_moves_mass():
    mask = torch.zeros(8, 1, 32, 32)
    mask[:, :, :, 2:12] = 1.0  # all mass in the left part
    cfg = RetrainConfig(rotation=180.0)
    out = perturb_composition_mask(mask, cfg, torch.Generator().manual_seed(0))
    assert out.shape == mask.shape and 0 <= out.min() and out.max() <= 1
    right = out[..., 16:].sum(dim=(1, 2, 3)) / out.sum(dim=(1, 2, 3))
    assert right.max() > 0.3  # some angle near +-180 degrees moved mass to the right half
    assert not torch.allclose(out[0], out[1])  # one angle per mask
    again = perturb_composition_mask(mask, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_noise_changes_the_mask():
    mask = torch.full((4, 1, 32, 32), 0.5)
    out = perturb_composition_mask(mask, RetrainConfig(mask_noise=0.1),
                                   torch.Generator().manual_seed(0))
    assert 0.07 < float((out - mask).std()) < 0.13
    assert 0 <= out.min() and out.max() <= 1


def test_rejects_bad_config_and_images(data):
    cgn = CGNMnist()
    with pytest.raises(ValueError, match="opacity"):
        retrain_cgn(cgn, data, tiny(opacity=1.5))
    with pytest.raises(ValueError, match="steps"):
        retrain_cgn(cgn, data, tiny(steps=-1))
    small = dataclasses.replace(data, images=data.images[..., :16, :16])
    with pytest.raises(ValueError, match="32"):
        retrain_cgn(cgn, small, tiny())


@needs_shared
def test_zero_steps_is_an_unchanged_copy(cgn, data):
    before = snapshot(cgn)
    new, losses = retrain_cgn(cgn, data, RetrainConfig(steps=0))
    assert new is not cgn and losses == {} and not new.training
    assert same(snapshot(new), before)
    for p, q in zip(new.parameters(), cgn.parameters(), strict=True):
        assert p.data_ptr() != q.data_ptr()
    with torch.no_grad():
        next(new.parameters()).add_(1.0)
    assert same(snapshot(cgn), before)


@needs_shared
def test_steps_change_the_copy_only(cgn, data):
    before = snapshot(cgn)
    lines = []
    new, losses = retrain_cgn(cgn, data, tiny(steps=5), log=lines.append)
    assert same(snapshot(cgn), before) and not cgn.training
    assert not new.training
    assert not same(snapshot(new), before)
    assert {"adversarial", "binary", "loss", "disc", "mask_entropy"} <= set(losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert len(lines) == 5 and "5/5" in lines[-1]


@needs_shared
def test_deterministic_per_seed(cgn, data):
    a, la = retrain_cgn(cgn, data, tiny(rotation=90.0, mask_noise=0.05), seed=3)
    b, lb = retrain_cgn(cgn, data, tiny(rotation=90.0, mask_noise=0.05), seed=3)
    c, lc = retrain_cgn(cgn, data, tiny(rotation=90.0, mask_noise=0.05), seed=4)
    assert same(snapshot(a), snapshot(b)) and la == lb
    assert not same(snapshot(a), snapshot(c)) and la != lc


@needs_shared
def test_perturbation_is_inside_training(cgn, data, monkeypatch):
    calls, composed = [], []
    real_perturb, real_compose = retrain_mod.perturb_composition_mask, retrain_mod.compose

    def spy(mask, cfg, generator):
        out = real_perturb(mask, cfg, generator)
        calls.append((mask, out, torch.is_grad_enabled()))
        return out

    def compose_spy(mask, fg, bg):
        composed.append(mask)
        return real_compose(mask, fg, bg)

    monkeypatch.setattr(retrain_mod, "perturb_composition_mask", spy)
    monkeypatch.setattr(retrain_mod, "compose", compose_spy)
    cfg = tiny(steps=3, d_warmup=2, opacity=0.75)
    retrain_cgn(cgn, data, cfg)
    assert len(calls) == cfg.d_warmup + cfg.steps
    # the composite is built from the perturbed mask, whose input is the mechanism's raw mask
    assert all(m is out for (_, out, _), m in zip(calls, composed, strict=True))
    for raw, out, _ in calls:
        assert raw.min() >= MASK_MIN - 1e-7 and raw.max() <= MASK_MAX + 1e-7
        assert out.max() <= 0.75 + 1e-6
    # the generator steps differentiate through the perturbation (the warm-up does not)
    assert [g for *_, g in calls] == [False] * cfg.d_warmup + [True] * cfg.steps


@needs_shared
def test_mask_loss_weight_enters_the_loss(cgn, data):
    m03, l03 = retrain_cgn(cgn, data, tiny(mask_loss_weight=0.3))
    _, l06 = retrain_cgn(cgn, data, tiny(mask_loss_weight=0.6))
    m0, l0 = retrain_cgn(cgn, data, tiny(mask_loss_weight=0.0))
    assert l03["binary"] == pytest.approx(0.3 * l03["mask_entropy"], rel=1e-5)
    assert l06["binary"] == pytest.approx(0.6 * l06["mask_entropy"], rel=1e-5)
    assert l03["loss"] == pytest.approx(l03["adversarial"] + l03["binary"], rel=1e-5)
    assert "binary" not in l0 and l0["loss"] == pytest.approx(l0["adversarial"], rel=1e-5)
    # the weight changes the mask mechanism's gradients, so its weights
    assert not torch.equal(m03.f_shape[0].weight, m0.f_shape[0].weight)
