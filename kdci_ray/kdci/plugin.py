"""The KDCI plug-in the distillation loop applies to any method.

It owns the attention module and the dictionary life cycle: ``refresh`` scores substitution images
with the teacher and rebuilds the dictionary (under DDP: features gathered from every rank, built on
rank 0, broadcast, so every rank's attention sees the same prototypes); ``compensate`` returns the
adjusted logits for the KD loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdci_ray.kdci.dictionary import ConfounderDictionary, build_dictionary
from kdci_ray.kdci.intervention import BackdoorAdjustment


@dataclass
class KDCISettings:
    k: int
    pca_dim: int = 0
    hidden: int = 256
    backend: str = "sklearn"
    n_init: int = 1
    seed: int = 0


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: Tensor, batch_size: int = 1024) -> Tensor:
    return torch.cat([teacher(images[i:i + batch_size]).logits
                      for i in range(0, len(images), batch_size)])


def _gather(x: Tensor) -> Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(x)]))
    if len({int(s) for s in sizes}) != 1:
        raise RuntimeError(
            "KDCI refresh needs the same number of substitution images on every rank"
        )
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class KDCI:
    def __init__(self, settings: KDCISettings, num_classes: int, device: torch.device) -> None:
        self.settings = settings
        self.module = BackdoorAdjustment(num_classes, settings.k, settings.hidden).to(device)
        self.dictionary: ConfounderDictionary | None = None
        self.refreshes = 0

    def refresh(self, teacher: nn.Module, images: Tensor) -> dict[str, float]:
        start = time.perf_counter()
        feats = _gather(teacher_logits(teacher, images).float().cpu())
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_rank() == 0:
            seed = self.settings.seed + self.refreshes
            self.dictionary = build_dictionary(feats, self.settings.k, self.settings.pca_dim, seed,
                                               self.settings.n_init, self.settings.backend)
            protos, props = self.dictionary.prototypes, self.dictionary.proportions
        else:
            protos = torch.empty_like(self.module.prototypes.cpu())
            props = torch.empty_like(self.module.proportions.cpu())
        if distributed:
            dist.broadcast(protos, src=0)
            dist.broadcast(props, src=0)
        device = self.module.prototypes.device
        self.module.set_dictionary(protos.to(device), props.to(device))
        self.refreshes += 1
        metrics = {"kdci/refresh_s": time.perf_counter() - start,
                   "kdci/prop_max": float(props.max()), "kdci/samples": float(len(feats))}
        if self.dictionary is not None:
            metrics["kdci/inertia"] = self.dictionary.inertia
        return metrics

    def compensate(self, logits: Tensor, module: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Adjusted logits and attention; ``module`` is the (possibly DDP-wrapped) attention."""
        if self.refreshes == 0:
            raise RuntimeError("KDCI.compensate() before the first dictionary refresh")
        return (module or self.module)(logits)


def attention_entropy(lam: Tensor) -> float:
    return float(-(lam * torch.log(lam + 1e-12)).sum(1).mean())
