"""Sampling-based methods: MosaicKD (Fang et al., NeurIPS 2021), DFND (Chen et al., CVPR 2021).

Method-level tests build a ``MethodContext`` by hand around a small ``TensorPool``; DFND's use a
stub teacher whose logits are fixed per image id (encoded in two pixels), so its confidence on
every pool image is known. The loop-level tests run ``distill`` on the embedded photo-crop pool.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from kdci_ray.data.pool_format import TensorPool
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.methods import METHODS
from kdci_ray.methods.base import MethodContext
from kdci_ray.methods.dfnd import DFND, DFNDConfig, transition_matrix
from kdci_ray.methods.discriminators import PatchDiscriminator
from kdci_ray.methods.mosaickd import MosaicKD, MosaicKDConfig
from kdci_ray.models import Outputs, create_model
from kdci_ray.train.datasets import load_data
from kdci_ray.train.loop import Collect, distill
from kdci_ray.train.teacher import load_teacher

C, SIDE = 10, 16


def _id_images(n: int) -> Tensor:
    """uint8 ``(n, 1, 16, 16)`` noise images whose id ``i`` is written into pixels (0,0), (0,1)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, SIDE, SIDE), generator=g, dtype=torch.uint8)
    ids = torch.arange(n)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = (ids // 256).to(torch.uint8), (ids % 256).to(
        torch.uint8)
    return images


class StubTeacher(nn.Module):
    """Logits ``scale[i] * onehot(i % C)`` for the image with id ``i`` (inputs in [0, 1])."""

    def __init__(self, n: int) -> None:
        super().__init__()
        scale = torch.rand(n, generator=torch.Generator().manual_seed(2)) * 6.0
        self.register_buffer("table", scale[:, None] * torch.eye(C)[torch.arange(n) % C])
        self.seen = 0  # images scored so far

    def forward(self, x: Tensor) -> Outputs:
        self.seen += len(x)
        pix = (x[:, 0, 0, :2] * 255).round().long()
        logits = self.table[pix[:, 0] * 256 + pix[:, 1]]
        return Outputs(logits, logits)


def _ctx(teacher: nn.Module, pool, tmp_path, seed: int = 0, mean=(0.0,), std=(1.0,)):
    return MethodContext(teacher=teacher, student=create_model("tiny_cnn", C, 1), num_classes=C,
                         channels=1, image_size=SIDE, device=torch.device("cpu"), seed=seed,
                         rounds=2, mean=mean, std=std, open_world=pool, cache_dir=tmp_path)


def _params(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rows_in(rows: Tensor, table: Tensor) -> Tensor:
    """For each row of ``rows``, whether it equals some row of ``table``."""
    return (rows.flatten(1)[:, None] == table.flatten(1)[None]).all(-1).any(-1)


# ------------------------------------------------------------------------------------- DFND


def test_dfnd_selects_the_most_confident_once_and_caches(tmp_path) -> None:
    n_pool, n = 300, 40
    images = _id_images(n_pool)
    teacher = StubTeacher(n_pool)
    cfg = DFNDConfig(select_n=n, teacher_acc=0.9, augment_pad=0, augment_flip=False,
                     class_weights=True)
    method = DFND(cfg, _ctx(teacher, TensorPool(images), tmp_path))
    logs = method.synthesize(0)
    p_max = torch.softmax(teacher.table, 1).max(1).values
    expected = np.sort(torch.argsort(p_max, descending=True)[:n].numpy())
    assert np.array_equal(method.subset.indices, expected)
    assert logs["subset"] == n and teacher.seen == n_pool + n  # pool scored, subset predicted
    assert method.synthesize(1) == {"subset": float(n)} and teacher.seen == n_pool + n

    # a second run with the same teacher reads the cached selection (no pool scoring)
    teacher.seen = 0
    again = DFND(cfg, _ctx(teacher, TensorPool(images), tmp_path))
    again.synthesize(0)
    assert np.array_equal(again.subset.indices, expected) and teacher.seen == n

    # the KDCI source is the whole selected subset, normalised; samples come from it
    source = method.substitution_batch()[:]
    assert len(source) == n and DFND.substitution_size(cfg) == n
    assert torch.equal(source, images[expected].float() / 255)
    assert _rows_in(method.sample(16), source).all()
    # class weights: inverse frequency of the teacher's arg-max over the subset, summing to C
    counts = np.bincount(expected % C, minlength=C) + 1.0
    w = 1 / (counts / counts.sum())
    assert np.allclose(method.weights.numpy(), w / w.sum() * C, atol=1e-6)


def test_noise_adaptation_loss_equals_an_independent_computation(tmp_path) -> None:
    acc, n_pool = 0.8, 50
    method = DFND(DFNDConfig(select_n=20, teacher_acc=acc, kd_temperature=3.0,
                             class_weights=True),
                  _ctx(StubTeacher(n_pool), TensorPool(_id_images(n_pool)), tmp_path))
    method.synthesize(0)
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, C, generator=g) * 2, torch.randn(6, C, generator=g) * 2
    out = method.student_loss(s, t)

    w = method.weights.double().numpy()
    sd, td = s.double().numpy(), t.double().numpy()
    labels = td.argmax(1)
    trans = np.full((C, C), (1 - acc) / (C - 1))
    np.fill_diagonal(trans, acc)
    p = np.exp(sd) / np.exp(sd).sum(1, keepdims=True)
    nll = -np.log((p @ trans)[np.arange(6), labels])
    noise = (w[labels] * nll).sum() / w[labels].sum()

    def soft(x: np.ndarray) -> np.ndarray:
        return np.exp(x / 3.0) / np.exp(x / 3.0).sum(1, keepdims=True)

    kl = (soft(td) * (np.log(soft(td)) - np.log(soft(sd)))).sum(1)
    kd = 9.0 * (w[labels] * kl).sum() / 6
    assert float(out["noise"].detach()) == pytest.approx(noise, rel=1e-5)
    assert float(out["kd"].detach()) == pytest.approx(kd, rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(noise + kd, rel=1e-5)


def test_transition_rows_sum_to_one_with_the_given_diagonal(tmp_path) -> None:
    acc = 0.7
    t0 = transition_matrix(torch.zeros(C, C - 1), acc)
    assert torch.allclose(t0.diagonal(), torch.full((C,), acc))
    off = t0[~torch.eye(C, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, (1 - acc) / (C - 1)))
    assert torch.allclose(t0.sum(1), torch.ones(C))

    # learned: T moves with training but keeps its structure
    method = DFND(DFNDConfig(select_n=20, teacher_acc=acc, lr_transition=0.1),
                  _ctx(StubTeacher(50), TensorPool(_id_images(50)), tmp_path))
    method.synthesize(0)
    s = torch.randn(8, C, requires_grad=True)
    for _ in range(3):
        method.student_loss(s, torch.randn(8, C))["loss"].backward()
        before = method.transition()
        method.after_student_step()  # the loop calls this right after the student's step
        assert not torch.allclose(method.transition(), before)
    learned = method.transition()
    assert not torch.allclose(learned, t0)
    assert torch.allclose(learned.diagonal(), torch.full((C,), acc))
    assert torch.allclose(learned.sum(1), torch.ones(C)) and (learned >= 0).all()


# ---------------------------------------------------------------------------------- MosaicKD


def test_patch_discriminator_scores_patches_of_16_and_32_pixel_images() -> None:
    d = PatchDiscriminator(3, ndf=8)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 8, 8)
    assert PatchDiscriminator(1, ndf=8)(torch.randn(2, 1, 16, 16)).shape == (2, 1, 4, 4)


def test_mosaickd_round_trains_generator_and_discriminator_on_the_entropy_subset(
        tiny_settings, tmp_path) -> None:
    cfg = resolve(tiny_settings, {"method": "dafl"})
    data = load_data(cfg)
    teacher = load_teacher(cfg, data, torch.device("cpu"))
    teacher_before = _params(teacher)
    images = _id_images(200)
    ctx = _ctx(teacher, TensorPool(images), tmp_path, mean=data.mean, std=data.std)
    mcfg = MosaicKDConfig(latent_dim=16, width=16, ndf=8, batch_size=16, ood_subset=50,
                          augment_pad=0, augment_flip=False)
    method = MosaicKD(mcfg, ctx)
    g0, d0 = _params(method.bare_generator), _params(method.bare_discriminator)
    logs = method.synthesize(0)
    assert {"local", "align", "adv", "balance", "loss", "d_loss"} <= set(logs)
    assert not torch.equal(g0, _params(method.bare_generator))
    assert not torch.equal(d0, _params(method.bare_discriminator))
    assert torch.equal(teacher_before, _params(teacher))

    # the OOD subset: the 50 pool images of highest teacher entropy
    with torch.no_grad():
        logp = torch.log_softmax(teacher(ctx.normalize(images)).logits.double(), 1)
    entropy = -(logp.exp() * logp).sum(1)
    assert np.array_equal(method.ood.indices, np.sort(torch.argsort(entropy, descending=True)[
        :50].numpy()))
    source = method.substitution_batch()[:]
    assert len(source) == 50 and torch.allclose(source, ctx.normalize(images[method.ood.indices]))

    # student batches: the first half synthetic, the second half OOD images
    batch = method.sample(32)
    assert batch.shape == (32, 1, SIDE, SIDE)
    assert _rows_in(batch[16:], source).all() and not _rows_in(batch[:16], source).any()


# ------------------------------------------------------------------------------- the loop


def _run(settings: dict, method: str, seed: int) -> tuple[list[float], Collect]:
    over = {"method": method, "seed": seed, "pool.size": 400, "kdci.enabled": True,
            "mosaickd.ood_subset": 64, "mosaickd.batch_size": 16, "mosaickd.latent_dim": 16,
            "mosaickd.ndf": 8, "mosaickd.width": 16, "dfnd.select_n": 64}
    rep = Collect()
    distill(resolve(settings, over), rep)
    return [m["train/loss"] for _, m in rep.history], rep


@pytest.mark.parametrize("method", ["mosaickd", "dfnd"])
def test_loop_same_seed_same_losses_teacher_untouched(tiny_settings, method, monkeypatch) -> None:
    monkeypatch.setitem(METHODS, "mosaickd", MosaicKD)
    monkeypatch.setitem(METHODS, "dfnd", DFND)
    cfg = resolve(tiny_settings, {"method": method})
    data = load_data(cfg)
    before = _params(load_teacher(cfg, data, torch.device("cpu")))
    first, rep = _run(tiny_settings, method, 0)
    assert all(math.isfinite(v) for v in first)
    final = rep.history[-1][1]
    # the dictionary was built once (round 0), over the whole selected subset
    assert rep.history[0][1]["kdci/samples"] == 64 and "kdci/samples" not in final
    if method == "dfnd":
        assert final["train/loss"] == pytest.approx(final["train/kd"] + final["train/noise"])
    assert _run(tiny_settings, method, 0)[0] == first
    assert _run(tiny_settings, method, 1)[0] != first
    assert torch.equal(before, _params(load_teacher(cfg, data, torch.device("cpu"))))
