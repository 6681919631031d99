"""The default teacher CGN: fitted quickly with supervision from the known mechanisms.

The coloured digits are synthetic, so every training image comes with its true mask, foreground
and background. Each mechanism is fitted to them as a generative latent optimisation (GLO,
Bojanowski et al., 2018): every training sample gets its own latent code, optimised jointly with
the generator under an L1 reconstruction loss, and the codes are renormalised to the standard
normal's shell after each step, so that fresh ``N(0, I)`` noise lands where the codes are and the
fitted mechanism keeps the CGN interface ``(noise, label) -> output``. This replaces the paper's
adversarial training (LSGAN plus mask losses), which takes hours per variant; the mechanisms'
architecture and the composition are the paper's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdci_ray.cgn.data import MechanismData
from kdci_ray.cgn.mechanisms import CGN, MECHANISMS


@dataclass
class TeacherFitConfig:
    # supervised (fast, GLO on known mechanisms) | adversarial (slow) | pretrained (the published
    # CGN-MNIST teacher at ``checkpoint``, loaded unchanged: kdci_ray.cgn.cgn_mnist)
    mode: str = "supervised"
    checkpoint: str = ""  # pretrained mode only: path of a published CGN-MNIST state dict
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    code_lr: float = 1e-2
    width: int = 32
    latent_dim: int = 16
    # adversarial mode only (the CGN paper's losses): mask binary entropy and mask-size hinge
    mask_entropy_weight: float = 0.5
    mask_min: float = 0.1
    mask_max: float = 0.6


def _targets(data: MechanismData,
             device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: (target.to(device), labels.to(device)) for name, (target, labels) in {
        "shape": (data.masks, data.labels),
        "foreground": (data.foregrounds, data.fg_labels),
        "background": (data.backgrounds, data.bg_labels)}.items()}


def fit_teacher(data: MechanismData, cfg: TeacherFitConfig, seed: int = 0, log=None,
                device: str | torch.device = "cpu") -> tuple[CGN, dict[str, float]]:
    """A CGN whose mechanisms reproduce ``data``'s masks and textures, fitted on ``device``
    (initialised and its draws made on the CPU, then moved; losses read back only at logging
    steps and at the end); returns it (eval mode, on ``device``) and the final per-mechanism L1
    (``mode: adversarial``: the paper's GAN training instead, see ``teacher_adversarial``)."""
    device = torch.device(device)
    if cfg.mode == "adversarial":
        from kdci_ray.cgn.teacher_adversarial import train_adversarial

        return train_adversarial(data, cfg, seed, log, device=device)
    if cfg.mode == "pretrained":
        raise ValueError("teacher mode pretrained loads the published CGN-MNIST teacher "
                         "(teacher.checkpoint) instead of fitting one: use "
                         "kdci_ray.cgn.cgn_mnist.published_teacher, not fit_teacher")
    if cfg.mode != "supervised":
        raise ValueError(f"teacher mode must be supervised or adversarial to fit a teacher "
                         f"(pretrained loads one), got {cfg.mode!r}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    num_classes = int(data.labels.max()) + 1
    cgn = CGN(num_classes, cfg.latent_dim, cfg.width, data.images.shape[-1]).to(device)
    n = len(data)
    codes = torch.randn(n, len(MECHANISMS), cfg.latent_dim,
                        generator=g).to(device).requires_grad_(True)
    opt = torch.optim.Adam([{"params": cgn.parameters(), "lr": cfg.lr},
                            {"params": [codes], "lr": cfg.code_lr}], betas=(0.5, 0.999))
    targets = _targets(data, device)
    start, losses = time.perf_counter(), {}
    radius = math.sqrt(cfg.latent_dim)
    cgn.train()
    for step in range(cfg.steps):
        idx = torch.randint(n, (cfg.batch_size,), generator=g).to(device)
        total = 0.0
        for j, name in enumerate(MECHANISMS):
            target, labels = targets[name]
            out = cgn.mechanism(name, codes[idx, j], labels[idx])
            loss = F.l1_loss(out, target[idx])
            losses[name] = loss.detach()
            total = total + loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        with torch.no_grad():  # keep the codes where N(0, I) samples live
            codes.mul_(radius / codes.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        if log is not None and (step + 1) % max(1, cfg.steps // 5) == 0:
            log(f"teacher CGN step {step + 1}/{cfg.steps}: " +
                ", ".join(f"{k} L1 {float(v):.4f}" for k, v in losses.items()) +
                f" ({time.perf_counter() - start:.0f} s)")
    return cgn.eval(), {k: float(v) for k, v in losses.items()}
