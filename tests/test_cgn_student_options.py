"""SKDCGN student options: TinyGAN's settings (Chang & Lu, ACCV 2020), the pixel-L1-only control
and the untrained-student control."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn.utils import parametrize

from kdci_ray.cgn import student as student_mod
from kdci_ray.cgn.blackbox import QuerySet
from kdci_ray.cgn.mechanisms import CHANNELS, MechanismGenerator
from kdci_ray.cgn.student import (
    STUDENT_LOSSES,
    TINYGAN,
    Discriminator,
    GeneratorStudentConfig,
    pixel_weight_at,
    student_losses,
    train_student,
    untrained_student,
)

SMALL = {"width": 4, "steps": 20, "batch_size": 16, "d_width": 4}


def _queries(mechanism: str = "background", n: int = 200, size: int = 16) -> QuerySet:
    """Answers of a random mechanism generator (its output layer scaled up for contrast) to
    ``n`` seeded queries."""
    torch.manual_seed(123)
    teacher = MechanismGenerator(CHANNELS[mechanism], 10, 6, 8, size).eval()
    with torch.no_grad():
        teacher.net[-1].weight.mul_(8)
    g = torch.Generator().manual_seed(5)
    noise, labels = torch.randn(n, 6, generator=g), torch.arange(10).repeat(n // 10)
    with torch.no_grad():
        return QuerySet(mechanism, noise, labels, teacher(noise, labels))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tinygan(**kw) -> GeneratorStudentConfig:
    return GeneratorStudentConfig(**{k.removeprefix("student."): v for k, v in TINYGAN.items()},
                                  **kw)


def test_defaults_are_todays_values_and_each_option_is_wired() -> None:
    q = _queries()
    default, _ = train_student(q, GeneratorStudentConfig(**SMALL), 10, seed=0)
    explicit, _ = train_student(q, GeneratorStudentConfig(**SMALL, lr=2e-3, d_lr=2e-3, beta1=0.5,
                                                 beta2=0.999, pixel_weight=1.0, pixel_decay=1.0,
                                                 spectral_norm=False, losses="tinygan"), 10, seed=0)
    assert _same(_state(default), _state(explicit))
    for change in ({"beta1": 0.0}, {"beta2": 0.9}, {"pixel_decay": 0.5}, {"spectral_norm": True},
                   {"losses": "pixel"}):
        other, _ = train_student(q, GeneratorStudentConfig(**SMALL, **change), 10, seed=0)
        assert not _same(_state(default), _state(other)), change


def test_tinygan_overrides_are_typed_student_fields() -> None:
    types = {f.name: f.type for f in dataclasses.fields(GeneratorStudentConfig)}
    for key, value in TINYGAN.items():
        name = key.removeprefix("student.")
        assert key.startswith("student.") and name in types, key
        assert type(value).__name__ == types[name], key
    cfg = _tinygan()
    assert (cfg.lr, cfg.beta1, cfg.beta2, cfg.pixel_weight, cfg.spectral_norm) == \
        (2e-4, 0.0, 0.9, 0.2, True)
    assert STUDENT_LOSSES == ("tinygan", "pixel")


def test_pixel_weight_schedule() -> None:
    cfg = _tinygan(steps=3000)
    assert pixel_weight_at(0, cfg) == pytest.approx(0.2)
    end = 0.667 * 3000  # 2001: zero from (about) two thirds of training on
    assert all(pixel_weight_at(s, cfg) == 0.0 for s in (2001, 2002, 2500, 2999, 3000))
    assert 0 < pixel_weight_at(2000, cfg) < 1e-3
    for s in (1, 500, 1000, 1500):  # linear in between
        assert pixel_weight_at(s, cfg) == pytest.approx(0.2 * (1 - s / end), rel=1e-9)
    # pixel_decay 1 is the old formula, exactly
    for steps in (0, 1, 7, 800):
        old = GeneratorStudentConfig(steps=steps, pixel_weight=1.3)
        assert all(pixel_weight_at(s, old) == 1.3 * max(0, 1 - s / max(1, steps))
                   for s in range(steps + 2))
    # the loss uses it: past the decay the pixel term is gone
    disc = Discriminator(3, 10, 4)
    fake, real, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16), torch.arange(4)
    half = GeneratorStudentConfig(steps=100, pixel_decay=0.5, adv_weight=0.0)
    assert "pixel" in student_losses(49, half, fake, real, y, disc, "background")
    assert "pixel" not in student_losses(50, half, fake, real, y, disc, "background")


def test_spectral_norm_on_every_discriminator_layer(monkeypatch) -> None:
    layers = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding)
    plain = Discriminator(3, 10, 4)
    sn = Discriminator(3, 10, 4, spectral_norm=True)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    found = [m for m in sn.modules() if isinstance(m, layers)]
    assert len(found) == 5 and all(parametrize.is_parametrized(m, "weight") for m in found)
    built = []

    class Recording(Discriminator):
        def __init__(self, *args, **kw) -> None:
            super().__init__(*args, **kw)
            built.append(self)

    monkeypatch.setattr(student_mod, "Discriminator", Recording)
    model, last = train_student(_queries(), _tinygan(**SMALL), 10, seed=0)
    assert len(built) == 1 and all(parametrize.is_parametrized(m) for m in built[0].modules()
                                   if isinstance(m, layers))
    assert {"feature", "disc", "loss"} <= set(last) and "pixel" not in last  # decayed by now
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_pixel_only_control_builds_no_discriminator(monkeypatch) -> None:
    def refuse(*args, **kw):
        raise AssertionError("the pixel-only control built a discriminator")

    monkeypatch.setattr(student_mod, "Discriminator", refuse)
    cfg = GeneratorStudentConfig(**SMALL, losses="pixel", pixel_weight=0.0, pixel_decay=0.1)
    model, last = train_student(_queries("background"), cfg, 10, seed=0)
    assert set(last) == {"pixel", "loss"} and last["loss"] == last["pixel"]  # weight 1, no decay
    assert not _same(_state(model), _state(untrained_student("background", 10, 6, 4, 16, 0)))
    shape = dataclasses.replace(cfg, mask_loss_weight=0.5)
    _, last = train_student(_queries("shape"), shape, 10, seed=0)
    assert set(last) == {"pixel", "mask", "loss"}
    assert last["loss"] == pytest.approx(last["pixel"] + 0.5 * last["mask"], rel=1e-5)
    with pytest.raises(AssertionError, match="built a discriminator"):
        train_student(_queries("background"), GeneratorStudentConfig(**SMALL), 10, seed=0)


def test_pixel_only_student_reduces_l1_to_the_answers() -> None:
    q = _queries("foreground", size=32)
    cfg = GeneratorStudentConfig(width=4, steps=30, batch_size=32, losses="pixel")
    before = untrained_student("foreground", 10, 6, 4, 32, seed=0)
    after, _ = train_student(q, cfg, 10, seed=0)
    with torch.no_grad():
        err = [(m(q.noise, q.labels) - q.answers).abs().mean().item() for m in (before, after)]
    assert err[1] < 0.8 * err[0], err  # about 0.74


def test_unknown_losses_value_is_refused() -> None:
    bad = GeneratorStudentConfig(**SMALL, losses="feature")
    with pytest.raises(ValueError, match=r"student\.losses.*'tinygan', 'pixel'.*'feature'"):
        train_student(_queries(), bad, 10, seed=0)
    x, y = torch.rand(2, 3, 16, 16), torch.arange(2)
    with pytest.raises(ValueError, match=r"student\.losses"):
        student_losses(0, bad, x, x, y, Discriminator(3, 10, 4), "background")


def test_untrained_student_is_seeded_fresh_and_in_eval_mode() -> None:
    a = untrained_student("shape", 10, 6, 4, 16, seed=3)
    b = untrained_student("shape", 10, 6, 4, 16, seed=3)
    c = untrained_student("shape", 10, 6, 4, 16, seed=4)
    assert _same(_state(a), _state(b)) and not _same(_state(a), _state(c))
    assert not a.training and not any(m.training for m in a.modules())
    bns = [m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) and
                       torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bns)
    z, y = torch.randn(5, 6), torch.arange(5)
    with torch.no_grad():
        assert torch.equal(a(z, y), b(z, y)) and a(z, y).shape == (5, 1, 16, 16)
    # training starts from it: zero steps give the same student
    start, _ = train_student(_queries("shape"), GeneratorStudentConfig(width=4, steps=0), 10,
                             seed=3)
    assert _same(_state(start), _state(a))
