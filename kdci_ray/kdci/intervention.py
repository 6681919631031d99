"""Backdoor adjustment of the student's logits (KDCI, Wang et al., CVPR 2024, Eq. 6-8).

``lambda_i(x) = softmax_i(w^T tanh(W_s s(x) + W_z z_i))`` (additive attention) and
``s~(x) = s(x) + sum_i lambda_i(x) z_i P(z_i)``. The KD loss uses ``s~``; the attention weights
train with the student. The dictionary is held in buffers so DDP and checkpoints carry it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BackdoorAdjustment(nn.Module):
    def __init__(self, num_classes: int, k: int, hidden: int = 256) -> None:
        super().__init__()
        self.w_s = nn.Linear(num_classes, hidden, bias=False)
        self.w_z = nn.Linear(num_classes, hidden, bias=True)
        self.v = nn.Linear(hidden, 1, bias=False)
        self.register_buffer("prototypes", torch.zeros(k, num_classes))
        self.register_buffer("proportions", torch.zeros(k))

    def set_dictionary(self, prototypes: Tensor, proportions: Tensor) -> None:
        if prototypes.shape != self.prototypes.shape or \
                proportions.shape != self.proportions.shape:
            raise ValueError(
                f"dictionary of shapes {tuple(prototypes.shape)} / {tuple(proportions.shape)} "
                f"does not match the attention's {tuple(self.prototypes.shape)} (K x classes) / "
                f"{tuple(self.proportions.shape)} (K)"
            )
        self.prototypes.copy_(prototypes)
        self.proportions.copy_(proportions)

    def attention(self, logits: Tensor) -> Tensor:
        """``(B, C)`` student logits -> ``(B, K)`` attention weights over the prototypes."""
        h = torch.tanh(self.w_s(logits).unsqueeze(1) + self.w_z(self.prototypes).unsqueeze(0))
        return torch.softmax(self.v(h).squeeze(-1), dim=1)

    def forward(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        lam = self.attention(logits)
        prior = lam @ (self.prototypes * self.proportions.unsqueeze(1))
        return logits + prior, lam
