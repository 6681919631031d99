"""Mechanism generators, the CGN's composition of them, and the supervised teacher fit."""

from __future__ import annotations

import pytest
import torch

from kdci_ray.cgn.composition import compose
from kdci_ray.cgn.data import make_split
from kdci_ray.cgn.mechanisms import CGN, MECHANISMS, parameter_count
from kdci_ray.cgn.teacher_fit import TeacherFitConfig, fit_teacher


def _inputs(n: int, latent: int, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    noise = {m: torch.randn(n, latent, generator=g) for m in MECHANISMS}
    labels = {m: torch.randint(0, 10, (n,), generator=g) for m in MECHANISMS}
    return noise, labels


@torch.no_grad()
def test_cgn_composes_its_mechanisms_each_with_its_own_noise_and_label() -> None:
    torch.manual_seed(0)
    cgn = CGN(width=8, latent_dim=6).eval()
    noise, labels = _inputs(5, 6)
    out = cgn.compose(noise, labels)  # no generator: textures unshuffled
    assert out.mask.shape == (5, 1, 16, 16) and out.foreground.shape == (5, 3, 16, 16)
    assert float(out.mask.min()) >= 0 and float(out.mask.max()) <= 1
    torch.testing.assert_close(out.image, compose(out.mask, out.foreground, out.background))
    torch.testing.assert_close(out.mask, cgn.mechanism("shape", noise["shape"], labels["shape"]))
    # changing one mechanism's noise or label changes that output only
    other = dict(noise, foreground=torch.randn(5, 6))
    changed = cgn.compose(other, labels)
    assert torch.equal(changed.mask, out.mask) and torch.equal(changed.background, out.background)
    assert not torch.allclose(changed.foreground, out.foreground)
    relabel = dict(labels, background=(labels["background"] + 1) % 10)
    changed = cgn.compose(noise, relabel)
    assert torch.equal(changed.foreground, out.foreground)
    assert not torch.allclose(changed.background, out.background)
    # with a generator, the textures go through the shuffler (the mask does not)
    shuffled = cgn.compose(noise, labels, torch.Generator().manual_seed(1))
    assert torch.equal(shuffled.mask, out.mask)
    assert not torch.allclose(shuffled.foreground, out.foreground)


def test_width_sets_the_size() -> None:
    assert parameter_count(CGN(width=8)) * 4 < parameter_count(CGN(width=32))


def test_supervised_fit_learns_the_mechanisms() -> None:
    data = make_split("double_colored", "train", seed=0)
    cfg = TeacherFitConfig(steps=60, batch_size=32, width=8, latent_dim=8)
    untrained = CGN(width=8, latent_dim=8).eval()
    cgn, losses = fit_teacher(data, cfg, seed=0)
    assert set(losses) == set(MECHANISMS) and not cgn.training
    # the background mechanism has learned each class's colour: closer to the data than chance
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(10).repeat(8)
    noise = torch.randn(len(labels), 8, generator=g)
    with torch.no_grad():
        fitted = cgn.mechanism("background", noise, labels).mean(dim=(2, 3))
        before = untrained.mechanism("background", noise, labels).mean(dim=(2, 3))
    truth = torch.stack([data.backgrounds[data.bg_labels == c].mean(dim=(0, 2, 3))
                         for c in labels])
    assert (fitted - truth).abs().mean() < 0.5 * (before - truth).abs().mean()


def test_mask_size_hinge_is_zero_inside_the_bounds() -> None:
    from kdci_ray.cgn.teacher_adversarial import mask_size_hinge

    half = torch.full((2, 1, 4, 4), 0.3)
    assert float(mask_size_hinge(half, 0.1, 0.6)) == 0.0
    assert float(mask_size_hinge(torch.zeros(2, 1, 4, 4), 0.1, 0.6)) == pytest.approx(0.1)
    assert float(mask_size_hinge(torch.ones(2, 1, 4, 4), 0.1, 0.6)) == pytest.approx(0.4)


def test_adversarial_mode_trains_with_the_papers_losses() -> None:
    from kdci_ray.cgn.student import Discriminator
    from kdci_ray.cgn.teacher_adversarial import generator_terms

    data = make_split("colored", "train", seed=0)
    cfg = TeacherFitConfig(mode="adversarial", steps=4, batch_size=8, width=4, latent_dim=4)
    torch.manual_seed(0)
    cgn = CGN(width=4, latent_dim=4)
    terms = generator_terms(cgn, Discriminator(3, 10, 4), torch.arange(8), cfg,
                            torch.Generator().manual_seed(0))
    torch.testing.assert_close(terms["loss"], terms["adversarial"] + 0.5 * terms["mask_entropy"]
                               + terms["mask_size"])
    fitted, last = fit_teacher(data, cfg, seed=0)
    assert {"adversarial", "mask_entropy", "mask_size", "loss", "disc"} <= set(last)
    torch.manual_seed(0)
    start = CGN(width=4, latent_dim=4).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in fitted.state_dict().items()
               if v.is_floating_point())
    with pytest.raises(ValueError, match="supervised or adversarial"):
        fit_teacher(data, TeacherFitConfig(mode="gan"))
