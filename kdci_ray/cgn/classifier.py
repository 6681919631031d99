"""The invariant classifier of the CGN paper: a small CNN trained on (counterfactual) images and
scored on the shifted test split, where colour and texture carry no information about the class.
Ours is the project's ``digits_cnn`` on three channels (Sauer & Geiger use a small CNN too);
``input_size`` makes it read the images area-downsampled to that side (the published 32x32
variants at 16x16: the embedded digits carry 8x8 of information, and a 32x32 digits_cnn costs 4x
as much)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdci_ray.cgn.mechanisms import module_device
from kdci_ray.models import create_model


class Downsampled(torch.nn.Module):
    """``model`` reading its input area-downsampled to ``size`` x ``size`` (as is when smaller)."""

    def __init__(self, model: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x: Tensor):
        if x.shape[-1] > self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="area")
        return self.model(x)


def new_classifier(arch: str, num_classes: int, in_channels: int = 3,
                   input_size: int = 0) -> torch.nn.Module:
    """An untrained classifier; ``input_size`` > 0 downsamples its input to that side."""
    model = create_model(arch, num_classes, in_channels)
    return Downsampled(model, input_size) if input_size > 0 else model


def train_classifier(images: Tensor, labels: Tensor, num_classes: int = 10, steps: int = 600,
                     batch_size: int = 64, lr: float = 0.05, seed: int = 0,
                     arch: str = "digits_cnn", input_size: int = 0,
                     device: str | torch.device = "cpu") -> torch.nn.Module:
    """SGD with momentum and a cosine schedule on float [0, 1] images (centred at 0.5), on
    ``device`` (the model is initialised and the batches drawn on the CPU, then moved)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = new_classifier(arch, num_classes, images.shape[1], input_size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        x = images[idx.to(images.device)].to(device)
        y = labels[idx.to(labels.device)].to(device)
        loss = F.cross_entropy(model((x - 0.5) / 0.5).logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: Tensor, labels: Tensor,
             batch_size: int = 512) -> float:
    """The share of ``images`` classified as ``labels``, computed on the model's device (the
    CPU for one without parameters)."""
    device = module_device(model)
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model((images[i:i + batch_size].to(device) - 0.5) / 0.5).logits
        correct += int((logits.argmax(1) == labels[i:i + batch_size].to(device)).sum())
    return correct / max(1, len(images))
