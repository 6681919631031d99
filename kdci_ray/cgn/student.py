"""SKDCGN student generators, trained with TinyGAN's losses on stored black-box queries.

One student per mechanism (Ambekar et al., 2022), each a :class:`MechanismGenerator` narrower than
the teacher's, trained from its :class:`QuerySet` alone with the losses of TinyGAN (Chang & Lu,
ACCV 2020), teacher answers standing in for "real" images (``losses="tinygan"``):

- feature loss: L1 between a class-conditional discriminator's activations on the student's and
  on the teacher's outputs, per-layer weights growing with depth (``2**l``, normalised);
- pixel loss: L1 to the teacher's answer, its weight decaying linearly from ``pixel_weight`` to 0
  over the first ``pixel_decay`` fraction of training (:func:`pixel_weight_at`);
- adversarial loss: hinge, teacher answers real, student outputs fake; the discriminator learns
  every step, the generator's term (weight ``adv_weight``) enters every ``adv_every``-th step.

``losses="pixel"`` is the control: a constant-weight (1) L1 to the teacher's answers alone, no
decay and no discriminator (none is built; ``pixel_weight``, ``pixel_decay``, ``adv_*``, ``d_*``
and ``spectral_norm`` are ignored), testing whether TinyGAN's feature and adversarial terms matter.
The shape student may add the CGN's mask loss (binary entropy, pushing the mask to 0/1) with
``mask_loss_weight`` (the composition study's knob) under either. Every term computed is in the
loss. Adam's ``beta1``/``beta2`` serve student and discriminator; ``spectral_norm`` puts spectral
normalisation (Miyato et al., ICLR 2018) on every conv and linear layer of the discriminator and on
its label embedding, as TinyGAN's BigGAN discriminator does (SNEmbedding).

The defaults are not TinyGAN's: they were tuned for our 16x16 data at 800 steps (lr 2e-3, betas
(0.5, 0.999), pixel weight 1 over all of training, no spectral norm). TinyGAN's values (lr 2e-4
for both, betas (0, 0.9), pixel weight 0.2 decaying over the first two thirds, spectral norm) are
the overrides :data:`TINYGAN`. Deviations from TinyGAN that remain under them: no real-image term
(there are no real images, only the teacher's answers); the generator is the CGN's mechanism
design, not BigGAN; the discriminator is a small three-layer projection discriminator; the
adversarial term enters every ``adv_every`` steps with weight ``adv_weight``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from kdci_ray.cgn.blackbox import QuerySet
from kdci_ray.cgn.mechanisms import CHANNELS, MechanismGenerator


@dataclass
class GeneratorStudentConfig:
    """One SKDCGN student generator and its TinyGAN training (the ``student.`` keys)."""

    width: int = 8
    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    d_lr: float = 2e-3
    d_width: int = 16
    pixel_weight: float = 1.0
    adv_weight: float = 0.01
    adv_every: int = 5
    mask_loss_weight: float = 0.0
    beta1: float = 0.5
    beta2: float = 0.999
    pixel_decay: float = 1.0
    spectral_norm: bool = False
    losses: str = "tinygan"


STUDENT_LOSSES = ("tinygan", "pixel")

#: TinyGAN's settings (Chang & Lu, 2020) as flat config overrides.
TINYGAN: dict[str, object] = {
    "student.lr": 2e-4, "student.d_lr": 2e-4, "student.beta1": 0.0, "student.beta2": 0.9,
    "student.pixel_weight": 0.2, "student.pixel_decay": 0.667, "student.spectral_norm": True,
}


def check_losses(cfg: GeneratorStudentConfig) -> None:
    """Refuse an unknown ``student.losses`` (allowed: :data:`STUDENT_LOSSES`)."""
    if cfg.losses not in STUDENT_LOSSES:
        raise ValueError(f"student.losses must be one of {STUDENT_LOSSES}, got {cfg.losses!r}")


def pixel_weight_at(step: int, cfg: GeneratorStudentConfig) -> float:
    """The pixel loss's weight at ``step``: linear from ``pixel_weight`` to 0 at
    ``pixel_decay * steps``, 0 after (TinyGAN: 0.2 to 0 over the first two thirds)."""
    return cfg.pixel_weight * max(0.0, 1.0 - step / max(1, cfg.pixel_decay * cfg.steps))


class Discriminator(nn.Module):
    """Class-conditional (projection; Miyato & Koyama, ICLR 2018) discriminator returning its
    score and layer activations; ``spectral_norm`` on every conv, linear and embedding layer."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1),
                          nn.LeakyReLU(0.2)) for i in range(3))
        self.head = nn.Linear(chans[-1], 1)
        self.embed = nn.Embedding(num_classes, chans[-1])
        if spectral_norm:
            for m in list(self.modules()):
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    _sn(m)

    def forward(self, x: Tensor, labels: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        pooled = x.sum(dim=(2, 3))
        score = self.head(pooled).squeeze(1) + (self.embed(labels) * pooled).sum(1)
        return score, feats


def layer_weights(n: int) -> list[float]:
    """``2**l`` for layers ``l = 0..n-1``, normalised to sum 1 (deeper layers weigh more)."""
    raw = [2.0 ** i for i in range(n)]
    return [w / sum(raw) for w in raw]


def mask_entropy(mask: Tensor) -> Tensor:
    """Mean binary entropy of a mask in [0, 1] (0 for a binary mask)."""
    m = mask.clamp(1e-6, 1 - 1e-6)
    return -(m * m.log() + (1 - m) * (1 - m).log()).mean()


def student_losses(step: int, cfg: GeneratorStudentConfig, fake: Tensor, real: Tensor,
                   labels: Tensor, disc: Discriminator | None,
                   mechanism: str) -> dict[str, Tensor]:
    """The generator's loss terms at ``step`` (``loss`` is their weighted sum)."""
    if cfg.losses == "pixel":
        terms = {"pixel": F.l1_loss(fake, real)}
        return _with_mask(terms, terms["pixel"], cfg, fake, mechanism)
    check_losses(cfg)
    fake_score, fake_feats = disc(fake, labels)
    with torch.no_grad():
        _, real_feats = disc(real, labels)
    weights = layer_weights(len(fake_feats))
    terms = {"feature": sum(w * F.l1_loss(f, r) for w, f, r in
                            zip(weights, fake_feats, real_feats, strict=True))}
    total = terms["feature"]
    pix_w = pixel_weight_at(step, cfg)
    if pix_w > 0:
        terms["pixel"] = F.l1_loss(fake, real)
        total = total + pix_w * terms["pixel"]
    if cfg.adv_weight > 0 and step % cfg.adv_every == 0:
        terms["adversarial"] = -fake_score.mean()
        total = total + cfg.adv_weight * terms["adversarial"]
    return _with_mask(terms, total, cfg, fake, mechanism)


def _with_mask(terms: dict[str, Tensor], total: Tensor, cfg: GeneratorStudentConfig, fake: Tensor,
               mechanism: str) -> dict[str, Tensor]:
    """``terms`` with the shape student's weighted mask loss added and ``loss`` their sum."""
    if mechanism == "shape" and cfg.mask_loss_weight > 0:
        terms["mask"] = mask_entropy(fake)
        total = total + cfg.mask_loss_weight * terms["mask"]
    terms["loss"] = total
    return terms


def discriminator_loss(disc: Discriminator, fake: Tensor, real: Tensor,
                       labels: Tensor) -> Tensor:
    """Hinge loss: teacher answers real, student outputs fake."""
    real_score, _ = disc(real, labels)
    fake_score, _ = disc(fake.detach(), labels)
    return F.relu(1.0 - real_score).mean() + F.relu(1.0 + fake_score).mean()


def train_student(queries: QuerySet, cfg: GeneratorStudentConfig, num_classes: int, seed: int = 0,
                  log=None, device: str | torch.device = "cpu",
                  ) -> tuple[MechanismGenerator, dict[str, float]]:
    """A student generator for ``queries.mechanism``, trained from the stored queries only, on
    ``device`` (initialised and its batches drawn on the CPU, then moved; the losses are read
    back only at logging steps and at the end). Returns it (eval mode) and the last losses."""
    check_losses(cfg)
    g = torch.Generator().manual_seed(seed)
    mech = queries.mechanism
    student = untrained_student(mech, num_classes, queries.noise.shape[1], cfg.width,
                                queries.answers.shape[-1], seed).to(device).train()
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=betas)
    disc = opt_d = None
    if cfg.losses != "pixel":
        disc = Discriminator(CHANNELS[mech], num_classes, cfg.d_width,
                             cfg.spectral_norm).to(device)
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=betas)
    start, last = time.perf_counter(), {}
    for step in range(cfg.steps):
        idx = torch.randint(len(queries), (cfg.batch_size,), generator=g)
        z, y, real = (t[idx].to(device) for t in (queries.noise, queries.labels,
                                                   queries.answers))
        fake = student(z, y)
        if disc is not None:
            d_loss = discriminator_loss(disc, fake, real, y)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        terms = student_losses(step, cfg, fake, real, y, disc, mech)
        opt_g.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt_g.step()
        last = {k: v.detach() for k, v in terms.items()}
        if disc is not None:
            last["disc"] = d_loss.detach()
        if log is not None and (step + 1) % max(1, cfg.steps // 5) == 0:
            log(f"student {mech} step {step + 1}/{cfg.steps}: " +
                ", ".join(f"{k} {float(v):.4f}" for k, v in last.items()) +
                f" ({time.perf_counter() - start:.0f} s)")
    return student.eval(), {k: float(v) for k, v in last.items()}


def untrained_student(mechanism: str, num_classes: int, latent_dim: int, width: int,
                      image_size: int, seed: int) -> MechanismGenerator:
    """A freshly initialised student (seeded, eval mode, BatchNorm running stats at their
    initial values): the untrained-student control; :func:`train_student` starts from it."""
    torch.manual_seed(seed)
    return MechanismGenerator(CHANNELS[mechanism], num_classes, latent_dim, width,
                              image_size).eval()
