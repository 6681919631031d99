"""Backdoor adjustment of the student's logits (KDCI, Wang et al., CVPR 2024, Eq. 6-8).

``lambda_i(x) = softmax_i(w^T tanh(W_s s(x) + W_z z_i))`` (additive attention) and
``s~(x) = s(x) + sum_i lambda_i(x) z_i P(z_i)``. The KD loss uses ``s~``; the attention weights
train with the student. The dictionary is held in buffers so DDP and checkpoints carry it.

Two variants the paper's ablations need:
- ``source_dim``: the dictionary came from another model whose logits live in a different space
  (Table 5); a learned linear map ``z -> A z + b`` (identity-initialised when the dimensions
  agree) takes its prototypes into the student's logit space and trains with the student.
- ``random_lambda`` (Table 4): ``lambda(x)`` is ``softmax`` of standard normal noise drawn per
  sample from the module's own generator (seeded; other random streams are untouched) and the
  attention weights are frozen.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BackdoorAdjustment(nn.Module):
    def __init__(self, num_classes: int, k: int, hidden: int = 256, source_dim: int | None = None,
                 random_lambda: bool = False, seed: int = 0) -> None:
        super().__init__()
        dim = num_classes if source_dim is None else int(source_dim)
        self.w_s = nn.Linear(num_classes, hidden, bias=False)
        self.w_z = nn.Linear(num_classes, hidden, bias=True)
        self.v = nn.Linear(hidden, 1, bias=False)
        self.map: nn.Linear | None = None
        if source_dim is not None:
            self.map = nn.Linear(dim, num_classes)
            if dim == num_classes:
                with torch.no_grad():
                    self.map.weight.copy_(torch.eye(num_classes))
                    self.map.bias.zero_()
        self.random_lambda = bool(random_lambda)
        self._seed = int(seed)
        self._generator: torch.Generator | None = None
        if self.random_lambda:
            for layer in (self.w_s, self.w_z, self.v):
                layer.requires_grad_(False)
        self.register_buffer("prototypes", torch.zeros(k, dim))
        self.register_buffer("proportions", torch.zeros(k))

    def set_dictionary(self, prototypes: Tensor, proportions: Tensor) -> None:
        if prototypes.shape != self.prototypes.shape or \
                proportions.shape != self.proportions.shape:
            raise ValueError(
                f"dictionary of shapes {tuple(prototypes.shape)} / {tuple(proportions.shape)} "
                f"does not match the attention's {tuple(self.prototypes.shape)} (K x source "
                f"logits) / {tuple(self.proportions.shape)} (K)"
            )
        self.prototypes.copy_(prototypes)
        self.proportions.copy_(proportions)

    def mapped_prototypes(self) -> Tensor:
        """``(K, C)`` prototypes in the student's logit space."""
        return self.prototypes if self.map is None else self.map(self.prototypes)

    def _random_weights(self, batch: int, device: torch.device) -> Tensor:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self._seed)
        noise = torch.randn(batch, self.prototypes.shape[0], generator=self._generator,
                            device=device)
        return torch.softmax(noise, dim=1)

    def random_state(self) -> Tensor | None:
        """The random-lambda ablation's generator state (None until first used)."""
        return None if self._generator is None else self._generator.get_state()

    def set_random_state(self, state: Tensor | None) -> None:
        if state is None:
            self._generator = None
            return
        self._generator = torch.Generator(device=self.prototypes.device)
        self._generator.set_state(state)

    def attention(self, logits: Tensor, prototypes: Tensor | None = None) -> Tensor:
        """``(B, C)`` student logits -> ``(B, K)`` attention weights over the prototypes."""
        if self.random_lambda:
            return self._random_weights(logits.shape[0], logits.device)
        z = self.mapped_prototypes() if prototypes is None else prototypes
        h = torch.tanh(self.w_s(logits).unsqueeze(1) + self.w_z(z).unsqueeze(0))
        return torch.softmax(self.v(h).squeeze(-1), dim=1)

    def forward(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        z = self.mapped_prototypes()
        lam = self.attention(logits, z)
        prior = lam @ (z * self.proportions.unsqueeze(1))
        return logits + prior, lam
