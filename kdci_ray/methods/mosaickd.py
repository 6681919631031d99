"""MosaicKD (Fang et al., "Mosaicking to Distill: Knowledge Distillation from Out-of-Domain
Data", NeurIPS 2021).

A four-player game between a generator G, a patch discriminator D, the fixed teacher and the
student. Real *out-of-domain* (OOD) images teach D what natural local patches look like; G learns
to mosaic such patches into images the teacher recognises. One synthesis round is ``g_steps``
times:

1. D step: ``patch_adversarial_weight * (BCE(D(G(z)), 0) + BCE(D(x_ood), 1))``, summed over the
   patch grid and divided by ``2B`` (the reference's scaling);
2. G step (paper Eq. 3, 4, 7 and the appendix's balance term):
   ``patch_adversarial_weight * BCE(D(G(z)), 1)``  (locally authentic patches; patch sum / B)
   ``+ align_weight * H(t(G(z)))``  (label-space aligning: confident teacher predictions; the
   code's choice, its comment names CE to the teacher's arg-max as the alternative)
   ``- adversarial_weight * KL(t(G(z)) || s(G(z)))``  (hard samples: maximise teacher-student
   disagreement)
   ``+ balance_weight * sum_y p(y) log2 p(y)``  (``p`` = batch-mean teacher prediction; no mode
   collapse).
   The weights are the reference's ``--local``, ``--align``, ``--adv`` and ``--balance``.

The student then trains for the loop's ``kd_steps`` with KD (``kd_temperature``) on batches that
are half synthetic (G under no_grad) and half OOD images (``sample`` concatenates them:
``round(B * synthetic_fraction)`` synthetic first, the rest OOD, randomly translated / flipped).

The OOD data is the open-world pool's ``ood_subset`` images of highest teacher entropy (the
reference's ``--ood_subset`` selection for ImageNet / Places365, whose size there is the in-domain
training set's, 50k); ``ood_subset = 0`` uses the whole pool (as the reference's CIFAR-100 runs
do with CIFAR-10 as OOD data).

Reference: zju-vipa/MosaicKD, ``kd_mosaic.py``; defaults as in its README's CIFAR-100 runs.
Deviations:
- generator: the shared ``DatafreeGenerator`` (zju-vipa ``datafree``'s ``Generator``: sigmoid
  output in [0, 1], normalised like the teacher's inputs before D, teacher and student see it, as
  in the reference); its conv widths are ``2w -> 2w -> w`` where MosaicKD's own copy has
  ``4w -> 2w -> w`` (w = ``width``, 64);
- one student batch of ``B`` images is half synthetic, half OOD (the reference concatenates ``B``
  synthetic and ``B`` OOD images, i.e. a batch of ``2B``);
- the student is in eval mode during the G step (the reference leaves it in train mode, so its
  BN statistics also see the G-step batch);
- OOD images are sampled with replacement from the in-memory uint8 subset (the reference
  iterates DataLoaders); D's real images are not augmented, the student's are (as in the code);
- the loop's schedule drives the student; G and D follow a cosine schedule over the run
  (``ctx.rounds * g_steps`` steps), as the reference's ``CosineAnnealingLR``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdci_ray.methods.base import Method, MethodContext, SubstitutionData
from kdci_ray.methods.discriminators import PatchDiscriminator
from kdci_ray.methods.generators import DatafreeGenerator
from kdci_ray.methods.losses import kd_loss
from kdci_ray.methods.open_world import NormalizedImages, OpenWorldSubset


@dataclass
class MosaicKDConfig:
    """Reference defaults (``kd_mosaic.py`` + README: ``--local 1 --align 1 --adv 1 --balance 10
    --batch-size 256``, lr_g 1e-3, Adam betas (0.5, 0.999), z 100, ndf 128, T 1, 5 KD steps per
    generator step: set ``train.kd_steps: 5``)."""

    latent_dim: int = 100
    width: int = 64  # generator base channels (ngf)
    ndf: int = 128  # patch discriminator width
    batch_size: int = 256  # synthetic and real OOD images per G / D step
    lr_g: float = 1e-3  # Adam, generator
    lr_d: float = 1e-3  # Adam, discriminator
    beta1: float = 0.5
    g_steps: int = 1  # G / D updates per synthesis round
    # patch-adversarial (locally authentic) term; also scales D's loss, as in the code (--local)
    patch_adversarial_weight: float = 1.0
    align_weight: float = 1.0  # teacher entropy, label-space aligning (--align)
    adversarial_weight: float = 1.0  # teacher-student disagreement, hard samples (--adv)
    balance_weight: float = 10.0  # class balance (the appendix's balance term; --balance)
    ood_subset: int = 50_000  # highest-entropy pool images kept; 0 = the whole pool
    synthetic_fraction: float = 0.5  # share of each student batch that is synthetic
    augment_pad: int = 4  # student-side OOD augmentation (RandomCrop(32, padding=4) + flip)
    augment_flip: bool = True
    kd_temperature: float = 1.0


def class_balance(teacher_logits: Tensor) -> Tensor:
    """``sum_y p(y) log2 p(y)`` of the batch-mean teacher prediction (= -H in bits)."""
    p = F.softmax(teacher_logits, dim=1).mean(dim=0)
    return (p * torch.log2(p.clamp_min(1e-12))).sum()


def teacher_entropy(teacher_logits: Tensor) -> Tensor:
    """Mean prediction entropy (nats): the reference's align term."""
    logp = F.log_softmax(teacher_logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean()


def patch_bce(logits: Tensor, real: bool) -> Tensor:
    """BCE of patch logits against all-real / all-fake, summed over patches, divided by B."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(logits)


class MosaicKD(Method):
    name = "mosaickd"
    Config = MosaicKDConfig
    substitution = SubstitutionData("fixed", default_clusters=128)
    needs_open_world = True
    # Embedded scale: the reference's loss weights, T 1 and 5 KD steps per G step; a smaller G / D
    # (latent 64, ndf 32, batch 64) and 100 rounds for 16x16 digits on one CPU core (~75 s).
    PRESETS = {
        "embedded": {
            "pool.size": 20_000, "mosaickd.ood_subset": 5_000,
            "mosaickd.latent_dim": 64, "mosaickd.width": 64, "mosaickd.ndf": 32,
            "mosaickd.batch_size": 64, "mosaickd.augment_pad": 1, "mosaickd.augment_flip": False,
            "train.rounds": 100, "train.kd_steps": 5, "train.batch_size": 128,
            "train.lr": 0.05, "train.eval_every": 10,
        }
    }
    SMOKE = {"latent_dim": 16, "batch_size": 16, "ndf": 8, "ood_subset": 64}

    @classmethod
    def open_world_selection(cls, cfg: MosaicKDConfig) -> tuple[str, int]:
        return "entropy", int(cfg.ood_subset)

    @classmethod
    def substitution_size(cls, cfg: MosaicKDConfig, world_size: int = 1) -> int:
        if cfg.ood_subset <= 0:
            return 2**62  # the whole pool: its size is unknown until the loop builds it
        return (int(cfg.ood_subset) // world_size) * world_size

    def __init__(self, cfg: MosaicKDConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        if not 0.0 <= cfg.synthetic_fraction <= 1.0:
            raise ValueError(f"mosaickd.synthetic_fraction must be in [0, 1], got "
                             f"{cfg.synthetic_fraction}")
        gen = DatafreeGenerator(cfg.latent_dim, ctx.image_size, ctx.channels, cfg.width)
        disc = PatchDiscriminator(ctx.channels, cfg.ndf)
        self.bare_generator, self.bare_discriminator = gen.to(ctx.device), disc.to(ctx.device)
        self.generator = ctx.wrap(self.bare_generator)
        self.discriminator = ctx.wrap(self.bare_discriminator)
        betas = (cfg.beta1, 0.999)
        self.opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=betas)
        total = max(1, ctx.rounds * cfg.g_steps)
        self.sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_g, T_max=total)
        self.sched_d = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_d, T_max=total)
        self.ood: OpenWorldSubset | None = None

    def _fake(self, n: int) -> Tensor:
        """``n`` generator images in the teacher's input space (G outputs [0, 1] pixels)."""
        z = self.ctx.to_device(torch.randn(n, self.cfg.latent_dim, generator=self.rng))
        return self.ctx.normalize(self.generator(z))

    def _require_ood(self) -> OpenWorldSubset:
        if self.ood is None:
            raise RuntimeError(f"{type(self).__name__}: synthesize() must run before sampling")
        return self.ood

    def generator_losses(self, images: Tensor) -> dict[str, Tensor]:
        """The G objective on a (grad-carrying) synthetic batch; ``loss`` is the weighted sum."""
        cfg, ctx = self.cfg, self.ctx
        t_logits = ctx.teacher(images).logits
        s_logits = ctx.student(images).logits
        losses = {
            "local": patch_bce(self.discriminator(images), real=True),
            "align": teacher_entropy(t_logits),
            "adv": -kd_loss(s_logits, t_logits, 1.0),
            "balance": class_balance(t_logits),
        }
        losses["loss"] = cfg.patch_adversarial_weight * losses["local"] + \
            cfg.align_weight * losses["align"] + cfg.adversarial_weight * losses["adv"] + \
            cfg.balance_weight * losses["balance"]
        return losses

    def synthesize(self, round_idx: int) -> dict[str, float]:
        cfg, ctx = self.cfg, self.ctx
        logs: dict[str, float] = {}
        if self.ood is None:
            self.ood = OpenWorldSubset(ctx, *self.open_world_selection(cfg))
            logs.update({"select_s": self.ood.seconds, "pool": float(len(ctx.open_world))})
        student_was_training = ctx.student.training
        ctx.student.eval()
        self.generator.train()
        self.discriminator.train()
        for _ in range(cfg.g_steps):
            fake = self._fake(cfg.batch_size)
            real = self.ood.sample(cfg.batch_size, self.rng)  # D's real patches: no augmentation
            loss_d = cfg.patch_adversarial_weight * 0.5 * (
                patch_bce(self.discriminator(fake.detach()), real=False)
                + patch_bce(self.discriminator(real), real=True))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()

            losses = self.generator_losses(fake)
            self.opt_g.zero_grad(set_to_none=True)
            losses["loss"].backward()
            self.opt_g.step()
            self.sched_g.step()
            self.sched_d.step()
            self.last_batch = fake.detach()
            logs.update({k: float(v.detach()) for k, v in losses.items()})
            logs["d_loss"] = float(loss_d.detach())
        ctx.student.train(student_was_training)
        ctx.student.zero_grad(set_to_none=True)
        self.bare_discriminator.zero_grad(set_to_none=True)
        logs["ood_subset"] = float(len(self.ood))
        return logs

    def sample(self, batch_size: int) -> Tensor:
        """``round(B * synthetic_fraction)`` synthetic images, then OOD images (augmented)."""
        ood = self._require_ood()
        n_syn = round(batch_size * self.cfg.synthetic_fraction)
        parts = []
        if n_syn > 0:
            with torch.no_grad():
                parts.append(self._fake(n_syn))
        if batch_size - n_syn > 0:
            parts.append(ood.sample(batch_size - n_syn, self.rng, self.cfg.augment_pad,
                                    self.cfg.augment_flip))
        return torch.cat(parts)

    def substitution_batch(self) -> NormalizedImages:
        """The selected OOD subset, this rank's share, normalised a slice at a time when indexed:
        summarised once over the whole subset (the synthetic images vary per round; the fixed
        subset is what it keeps)."""
        return self._require_ood().shard()

    def substitution_key(self) -> str | None:
        """The images all ranks' shares cover (``OpenWorldSubset.data_key``): the same key for
        the dictionary pre-build of ``run.workers`` ranks and for every rank of the trial."""
        return self._require_ood().key

    def state_dict(self) -> dict:
        return {"generator": self.bare_generator.state_dict(),
                "discriminator": self.bare_discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.bare_generator.load_state_dict(state["generator"])
        self.bare_discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.rng.set_state(state["rng"])
