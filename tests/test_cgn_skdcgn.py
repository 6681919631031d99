"""SKDCGN: the black-box boundary, each student loss term, counterfactuals and the metrics."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from kdci_ray.cgn.blackbox import BlackBoxCGN, collect_queries
from kdci_ray.cgn.counterfactuals import (
    CounterfactualAugmentation,
    counterfactual_dataset,
    perturb_mask,
    students_mechanism,
)
from kdci_ray.cgn.mechanisms import CGN, MECHANISMS, parameter_count
from kdci_ray.cgn.pipeline import mask_iou, retained_gain
from kdci_ray.cgn.student import (
    Discriminator,
    GeneratorStudentConfig,
    discriminator_loss,
    layer_weights,
    mask_entropy,
    student_losses,
    train_student,
)


def _teacher() -> CGN:
    torch.manual_seed(0)
    return CGN(width=8, latent_dim=6).eval()


# ----------------------------------------------------------------------------- black box


def test_black_box_exposes_queries_only() -> None:
    teacher = _teacher()
    box = BlackBoxCGN(teacher)
    assert not hasattr(box, "parameters") and not hasattr(box, "__dict__")
    for name in box.__slots__:
        value = getattr(box, name)
        assert not isinstance(value, (nn.Module, torch.Tensor)), name
    z, y = torch.randn(4, 6), torch.arange(4)
    out = box.query("shape", z, y)
    assert not out.requires_grad and out.grad_fn is None
    out.add_(1.0)  # an answer is a copy: writing to it does not reach the teacher
    torch.testing.assert_close(box.query("shape", z, y) + 1.0, out)
    with pytest.raises(ValueError, match="unknown mechanism 'texture'"):
        box.query("texture", z, y)



def _reachable(root: object, limit: int = 200_000) -> list[object]:
    """Every object reachable from ``root`` through references (attributes, slots, containers,
    closures' cells and functions' globals left out: module state is not the box's)."""
    seen, stack, out = {id(root)}, [root], []
    while stack and len(out) < limit:
        obj = stack.pop()
        out.append(obj)
        if isinstance(obj, type) or type(obj).__name__ == "module":
            continue  # classes and modules: shared code, not state the box holds
        for ref in gc.get_referents(obj):
            if isinstance(ref, dict) and ref is getattr(obj, "__globals__", None):
                continue
            if id(ref) not in seen:
                seen.add(id(ref))
                stack.append(ref)
    return out


def test_nothing_reachable_from_the_black_box_holds_a_teacher_parameter() -> None:
    """The teacher answers from its own process: the student side's one object (and every
    object reachable from it, closures included) holds no module and no tensor sharing storage
    with a teacher parameter or buffer; the answers are exactly the teacher's own."""
    teacher = _teacher()
    weights = {t.untyped_storage().data_ptr() for t in
               [*teacher.parameters(), *teacher.buffers()]}
    with BlackBoxCGN(teacher) as box:
        reachable = _reachable(box)
        assert not [o for o in reachable if isinstance(o, nn.Module)]
        tensors = [o for o in reachable if isinstance(o, torch.Tensor)]
        assert not [t for t in tensors if t.untyped_storage().data_ptr() in weights]
        z, y = torch.randn(5, 6), torch.arange(5)
        with torch.no_grad():
            for m in MECHANISMS:
                assert torch.equal(box.query(m, z, y), teacher.mechanism(m, z, y))
        assert box.speed(n=64, batch_size=32, repeats=1) > 0
    # the check itself can fail: an in-process closure over the teacher is caught
    def leaky(mechanism, noise, labels, cgn=teacher):
        return cgn.mechanism(mechanism, noise, labels)
    assert [o for o in _reachable(leaky) if isinstance(o, nn.Module)]


def test_queries_store_unshuffled_textures_with_each_mechanisms_own_noise() -> None:
    teacher = _teacher()
    qs = collect_queries(BlackBoxCGN(teacher), per_class=3, seed=0)
    assert set(qs) == set(MECHANISMS)
    assert all(len(q) == 30 and torch.equal(q.labels, torch.arange(10).repeat_interleave(3))
               for q in qs.values())
    assert not torch.equal(qs["shape"].noise, qs["foreground"].noise)
    assert not torch.equal(qs["foreground"].noise, qs["background"].noise)
    with torch.no_grad():  # the answer is the raw mechanism output, before the shuffler
        for name, q in qs.items():
            torch.testing.assert_close(q.answers, teacher.mechanism(name, q.noise, q.labels))


def test_students_train_from_stored_queries_without_the_teacher() -> None:
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    qs = collect_queries(BlackBoxCGN(teacher), per_class=20, seed=0)
    heldout = collect_queries(BlackBoxCGN(teacher), per_class=5, seed=1)["background"]
    ref = teacher.state_dict()
    del teacher
    gc.collect()  # the students' path needs nothing but the stored queries
    cfg = GeneratorStudentConfig(width=4, steps=60, batch_size=32, d_width=4)
    student, last = train_student(qs["background"], cfg, num_classes=10, seed=0)
    untrained = train_student(qs["background"], GeneratorStudentConfig(width=4, steps=0, d_width=4),
                              num_classes=10, seed=0)[0]
    with torch.no_grad():
        err = (student(heldout.noise, heldout.labels) - heldout.answers).abs().mean()
        err0 = (untrained(heldout.noise, heldout.labels) - heldout.answers).abs().mean()
    assert err < 0.7 * err0
    assert {"feature", "loss", "disc"} <= set(last)
    for k, v in before.items():  # teacher weights untouched
        assert torch.equal(ref[k], v)


# ----------------------------------------------------------------------------- loss terms


def _loss_inputs(channels: int = 3):
    torch.manual_seed(0)
    disc = Discriminator(channels, 10, width=4)
    fake = torch.rand(8, channels, 16, 16, requires_grad=True)
    real = torch.rand(8, channels, 16, 16)
    return disc, fake, real, torch.arange(8)


def test_layer_weights_grow_with_depth_and_sum_to_one() -> None:
    w = layer_weights(3)
    assert w[0] < w[1] < w[2] and sum(w) == pytest.approx(1.0)


def test_each_student_loss_term_enters_the_loss_with_its_weight() -> None:
    disc, fake, real, y = _loss_inputs()
    cfg = GeneratorStudentConfig(steps=100, pixel_weight=2.0, adv_weight=0.01, adv_every=5)
    t0 = student_losses(0, cfg, fake, real, y, disc, "foreground")
    assert set(t0) == {"feature", "pixel", "adversarial", "loss"}
    torch.testing.assert_close(t0["loss"], t0["feature"] + 2.0 * t0["pixel"]
                               + 0.01 * t0["adversarial"])
    torch.testing.assert_close(t0["pixel"], (fake - real).abs().mean())
    score, _ = disc(fake, y)
    torch.testing.assert_close(t0["adversarial"], -score.mean())
    # step 51: no adversarial term (every 5th step only); pixel weight decayed linearly
    t1 = student_losses(51, cfg, fake, real, y, disc, "foreground")
    assert "adversarial" not in t1
    torch.testing.assert_close(t1["loss"], t1["feature"] + 2.0 * 0.49 * t1["pixel"])
    # end of training: the pixel weight reached 0, the term is not computed at all
    t_end = student_losses(100, cfg, fake, real, y, disc, "foreground")
    assert set(t_end) == {"feature", "adversarial", "loss"}
    # the feature loss is zero when the student matches the teacher, and it has a gradient
    same = student_losses(1, GeneratorStudentConfig(pixel_weight=0.0), real.clone(), real, y, disc,
                          "foreground")
    assert float(same["feature"].detach()) == 0.0
    t0["feature"].backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_mask_loss_only_for_the_shape_student() -> None:
    disc, fake, real, y = _loss_inputs(channels=1)
    cfg = GeneratorStudentConfig(mask_loss_weight=0.5, adv_weight=0.0)
    shape = student_losses(1, cfg, fake, real, y, disc, "shape")
    torch.testing.assert_close(shape["mask"], mask_entropy(fake))
    torch.testing.assert_close(shape["loss"], shape["feature"] + (1 - 1 / cfg.steps)
                               * shape["pixel"] + 0.5 * shape["mask"])
    disc3, fake3, real3, _ = _loss_inputs()
    assert "mask" not in student_losses(1, cfg, fake3, real3, y, disc3, "foreground")
    assert float(mask_entropy(torch.tensor([0.0, 1.0]))) < 1e-4
    assert float(mask_entropy(torch.tensor([0.5]))) == pytest.approx(0.6931, abs=1e-3)


def test_discriminator_hinge_treats_teacher_answers_as_real() -> None:
    class Fixed(nn.Module):
        def forward(self, x, labels):
            return x.mean(dim=(1, 2, 3)) * 4 - 2, []  # ones -> +2, zeros -> -2

    real, fake, y = torch.ones(4, 3, 8, 8), torch.zeros(4, 3, 8, 8), torch.arange(4)
    assert float(discriminator_loss(Fixed(), fake, real, y)) == 0.0  # confident and right
    assert float(discriminator_loss(Fixed(), real, fake, y)) == pytest.approx(6.0)


# ----------------------------------------------------------------------------- counterfactuals


def _label_painter(name: str, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A transparent fake mechanism: every output is its label / 10 everywhere."""
    channels = 1 if name == "shape" else 3
    return (labels.float() / 10).view(-1, 1, 1, 1).expand(-1, channels, 16, 16).clone()


def test_counterfactuals_decouple_textures_from_the_shape_label() -> None:
    x, y = counterfactual_dataset(_label_painter, 2000, 4, 10, seed=0)
    assert x.shape == (2000, 3, 16, 16) and y.shape == (2000,)
    mask = y.float() / 10
    # x = m*f + (1-m)*b with flat f, b: recover f's label where the mask is large
    big = mask > 0.5
    bg_label = torch.round(x[~big & (mask == 0)][:, 0, 0, 0] * 10)
    assert len(bg_label) > 0
    # images of the same shape label get many different textures (labels were permuted)
    assert len({round(float(v), 3) for v in x[y == 7][:, 0, 0, 0]}) >= 8
    # per-sample texture label agrees with the shape label about 1/10 of the time
    fg = (x[y == 0][:, 0, 0, 0] * 10).round()  # mask 0: pixel = background label
    assert 0.03 < float((fg == 0).float().mean()) < 0.2


def test_composition_variants_change_the_masks_as_named() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(4, 1, 16, 16)
    mask[:, :, 4:12, 7:9] = 1.0  # a vertical bar
    assert torch.equal(perturb_mask(mask, CounterfactualAugmentation(), g), mask)
    assert float(perturb_mask(mask, CounterfactualAugmentation(transparency=0.75), g).max()) == 0.75
    noisy = perturb_mask(mask, CounterfactualAugmentation(mask_noise=0.2), g)
    assert not torch.equal(noisy, mask) and float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    rotated = perturb_mask(mask, CounterfactualAugmentation(rotation=90.0), g)
    assert mask_iou(rotated, mask) < 0.9  # the bar turned
    x, y = counterfactual_dataset(_label_painter, 10, 4, 10, seed=0,
                                  variant=CounterfactualAugmentation(per_mask=5))
    assert len(x) == 10 and torch.equal(y, y[:2].repeat(5))  # 5 counterfactuals per mask
    with pytest.raises(ValueError, match="per_mask"):
        counterfactual_dataset(_label_painter, 10, 4, 10, seed=0,
                               variant=CounterfactualAugmentation(per_mask=0))


def test_students_compose_like_the_teacher() -> None:
    teacher = _teacher()
    with pytest.raises(ValueError, match="no student for mechanism"):
        students_mechanism({"shape": teacher.mechanisms["shape"]})
    # the teacher's own mechanisms as "students": the same counterfactuals as the teacher
    same = students_mechanism(dict(teacher.mechanisms))
    a = counterfactual_dataset(same, 50, 6, 10, seed=3)
    b = counterfactual_dataset(BlackBoxCGN(teacher).query, 50, 6, 10, seed=3)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert parameter_count(teacher.mechanisms["shape"]) > 0


# ----------------------------------------------------------------------------- metrics


def test_mask_iou_and_retained_gain() -> None:
    a = torch.zeros(2, 1, 4, 4)
    a[:, :, :2] = 1.0
    b = torch.zeros(2, 1, 4, 4)
    b[:, :, 1:3] = 1.0
    assert mask_iou(a, a) == 1.0 and mask_iou(a, 1 - a) == 0.0
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)) == 1.0
    assert retained_gain(0.2, 0.8, 0.65) == pytest.approx(0.75)
    assert retained_gain(0.2, 0.8, 0.1) < 0
    assert retained_gain(0.5, 0.4, 0.6) != retained_gain(0.5, 0.4, 0.6)  # NaN: no gain to keep
