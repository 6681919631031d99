"""Top-1 accuracy on the held-out test split, raw and KDCI-compensated."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdci_ray.data import LabeledData


@torch.no_grad()
def predict_logits(model: nn.Module, data: LabeledData, device: torch.device,
                   batch_size: int = 512) -> tuple[Tensor, Tensor]:
    was_training = model.training
    model.eval()
    x, y = data.test_inputs()
    logits = torch.cat([model(x[i:i + batch_size].to(device)).logits.float().cpu()
                        for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return logits, y


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())
