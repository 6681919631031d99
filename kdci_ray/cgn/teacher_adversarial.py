"""The CGN paper's own training of the teacher (Sauer & Geiger, ICLR 2021), for ``teacher.mode:
adversarial``: slow, documented as such, not the default.

The three mechanisms, all given the real image's label, compose ``x = m * shuffle(f) + (1 - m) *
shuffle(b)``; a class-conditional discriminator judges it against the real (biased) training
images under the least-squares GAN loss (LSGAN, Mao et al., 2017). The mask gets the paper's two
regularisers: its binary entropy (pushing it to 0/1) and a hinge keeping its mean size within
``[mask_min, mask_max]`` (so that it neither vanishes nor covers the image). Nothing supervises the
mechanisms individually, so which mechanism ends up holding what depends on these priors and on
the shuffler; on our 16x16 digits it takes thousands of steps (tens of minutes on a CPU) where the
supervised fit takes a few hundred.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from kdci_ray.cgn.data import MechanismData
from kdci_ray.cgn.mechanisms import CGN, MECHANISMS
from kdci_ray.cgn.student import Discriminator, mask_entropy
from kdci_ray.cgn.teacher_fit import TeacherFitConfig


def mask_size_hinge(mask: Tensor, lo: float, hi: float) -> Tensor:
    """Mean over the batch of ``relu(lo - size) + relu(size - hi)``, size = mean mask value."""
    size = mask.mean(dim=(1, 2, 3))
    return (F.relu(lo - size) + F.relu(size - hi)).mean()


def generator_terms(cgn: CGN, disc: Discriminator, labels: Tensor, cfg: TeacherFitConfig,
                    generator: torch.Generator) -> dict[str, Tensor]:
    """The CGN's loss terms for one batch of ``labels`` (``loss`` is their weighted sum)."""
    noise = {m: torch.randn(len(labels), cfg.latent_dim, generator=generator).to(labels.device)
             for m in MECHANISMS}
    out = cgn.compose(noise, {m: labels for m in MECHANISMS}, generator)
    score, _ = disc(out.image, labels)
    terms = {"adversarial": ((score - 1.0) ** 2).mean(),
             "mask_entropy": mask_entropy(out.mask),
             "mask_size": mask_size_hinge(out.mask, cfg.mask_min, cfg.mask_max)}
    terms["loss"] = terms["adversarial"] + cfg.mask_entropy_weight * terms["mask_entropy"] + \
        terms["mask_size"]
    terms["image"] = out.image
    return terms


def train_adversarial(data: MechanismData, cfg: TeacherFitConfig, seed: int = 0, log=None,
                      device: str | torch.device = "cpu") -> tuple[CGN, dict[str, float]]:
    """The CGN and its critic trained on ``device`` (initialised and every draw made on the
    CPU, then moved; losses read back only at logging steps and at the end); returns the CGN
    (eval mode, on ``device``) and the last step's losses."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    num_classes = int(data.labels.max()) + 1
    cgn = CGN(num_classes, cfg.latent_dim, cfg.width, data.images.shape[-1]).to(device).train()
    disc = Discriminator(3, num_classes, width=cfg.width).to(device)
    opt_g = torch.optim.Adam(cgn.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    start, last = time.perf_counter(), {}
    for step in range(cfg.steps):
        idx = torch.randint(len(data), (cfg.batch_size,), generator=g)
        real, labels = data.images[idx].to(device), data.labels[idx].to(device)
        terms = generator_terms(cgn, disc, labels, cfg, g)
        opt_g.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt_g.step()
        real_score, _ = disc(real, labels)
        fake_score, _ = disc(terms["image"].detach(), labels)
        d_loss = 0.5 * (((real_score - 1.0) ** 2).mean() + (fake_score ** 2).mean())
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        last = {k: v.detach() for k, v in terms.items() if k != "image"}
        last["disc"] = d_loss.detach()
        if log is not None and (step + 1) % max(1, cfg.steps // 5) == 0:
            log(f"adversarial CGN step {step + 1}/{cfg.steps}: " +
                ", ".join(f"{k} {float(v):.4f}" for k, v in last.items()) +
                f" ({time.perf_counter() - start:.0f} s)")
    return cgn.eval(), {k: float(v) for k, v in last.items()}
