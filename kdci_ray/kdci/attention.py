"""KDCI's learnable part: attention over the dictionary and the backdoor adjustment of the student's
logits (KDCI, Wang et al., CVPR 2024, Eq. 6-8).

``lambda_i(x) = softmax_i(w^T tanh(W_s s(x) + W_z z_i))`` (additive attention) and
``s~(x) = s(x) + sum_i lambda_i(x) z_i P(z_i)``. The KD loss uses ``s~``; the attention weights
train with the student. The dictionary is held in buffers so DDP and checkpoints carry it. The
``KDCI`` object (``kdci_ray.kdci.plugin``) owns one and loads each dictionary into it.

Two variants the paper's ablations need:
- ``source_dim``: the dictionary came from another model whose logits live in a different space
  (Table 5); a learned linear map ``z -> A z + b`` (identity-initialised when the dimensions
  agree) takes its prototypes into the student's logit space and trains with the student.
- ``random_lambda`` (Table 4): ``lambda(x)`` is ``softmax`` of standard normal noise drawn per
  sample from the module's own generator (seeded; other random streams are untouched) and the
  attention weights are frozen.

How lambda and ``P(z)`` combine (``fusion``) is the paper's open point (Eq. 5 computes lambda by
additive attention ``a_i(x) = v^T tanh(W_s s(x) + W_z z_i)`` and does not say it is normalised);
with ``alpha = softmax(a)``:

- ``softmax`` (this project's first reading): ``prior = sum_i alpha_i P(z_i) z_i``. The weights
  sum to 1 and ``P ~ 1/K``, so the prior is capped near ``1/K`` of a logit vector.
- ``expectation`` (the backdoor expectation without the 1/K factor):
  ``prior = sum_i w_i z_i`` with ``w_i = alpha_i P(z_i) / sum_j alpha_j P(z_j)``
  (= ``softmax(a + log P)``): a convex combination of prototypes, up to a full logit vector.
- ``scaled`` (Eq. 5 unnormalised, made trainable): ``prior = g * sum_i alpha_i P(z_i) z_i`` with a
  learned, bounded scale ``g = K * sigmoid(rho)`` in (0, K), ``rho`` initialised so ``g = 1``
  (today's ``softmax`` at the start). Plain ``exp(a)`` weights diverged in a probe (11% accuracy).
- ``log_prior`` (the positive control, no attention): the fixed logit adjustment
  ``prior = tau * (log pi - mean_c log pi_c)`` where ``pi`` is the realised class prior of the
  substitution data, the teacher's arg-max histogram over every KD batch (half a count per class;
  ``class_counts``, counted by ``KDCI.adjust``). It was read off the dictionary's prototypes
  until issue 25, which gave classes a share of 0 whenever K < C. ``tau = 1``
  is the probe of issue 14 (the KD loss sees ``s + log pi``; the compensated student carries the
  substitution prior); ``tau = -1`` removes it instead (``s - log pi``: the compensated student
  favours the classes the substitution data lacked, as post-hoc logit adjustment does).

- ``teacher_ref`` / ``teacher_ref_scalar`` (post hoc, label-free, issue 25): a fixed class bias
  ``b`` (buffer ``bias``) that ``KDCI.fit_reference`` fits at each evaluation so the student
  matches the teacher on held-out substitution inputs (``kdci_ray.kdci.label_shift.
  teacher_reference``); the scalar variant fits only ``tau`` in ``b = -tau * (log pi - mean)``.

``projection`` adds a learned output map ``prior -> W prior + b`` (identity, zero start) to any
attention fusion (comparable causal-intervention modules project after their softmax).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kdci_ray.kdci.label_shift import smoothed_prior


class KDCIAttention(nn.Module):
    """``forward(s) -> (s~, weights)``: the student's ``(B, C)`` logits adjusted by the prior of
    the loaded dictionary, and the ``(B, K)`` weights it put on the prototypes."""

    FUSIONS = ("softmax", "expectation", "scaled", "log_prior", "teacher_ref",
               "teacher_ref_scalar")
    FIXED = ("log_prior", "teacher_ref", "teacher_ref_scalar")  # no attention: a class bias

    def __init__(self, num_classes: int, k: int, hidden: int = 256, source_dim: int | None = None,
                 random_lambda: bool = False, seed: int = 0, fusion: str = "softmax",
                 projection: bool = False, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = float(tau)
        if fusion not in self.FUSIONS:
            raise ValueError(f"unknown KDCI fusion {fusion!r}: choose one of "
                             f"{', '.join(self.FUSIONS)}")
        self.fusion = fusion
        self.scale_logit: nn.Parameter | None = None
        if fusion == "scaled":  # g = K * sigmoid(rho) starts at 1
            start = -math.log(max(k, 2) - 1.0)
            self.scale_logit = nn.Parameter(torch.tensor(start))
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
        # created after the attention layers: the same seed gives the same attention with or
        # without it
        self.projection: nn.Linear | None = None
        if projection and fusion != "log_prior":
            self.projection = nn.Linear(num_classes, num_classes)
            with torch.no_grad():
                self.projection.weight.copy_(torch.eye(num_classes))
                self.projection.bias.zero_()
        self.random_lambda = bool(random_lambda)
        self._seed = int(seed)
        self._generator: torch.Generator | None = None
        if self.random_lambda or fusion in self.FIXED:  # no learned attention
            for layer in (self.w_s, self.w_z, self.v):
                layer.requires_grad_(False)
        if fusion in self.FIXED and self.map is not None:
            # the fixed adjustment reads only the mapped prototypes' arg-max: the map gets no
            # gradient, so it is frozen (DDP refuses a trainable parameter without one)
            self.map.requires_grad_(False)
        self.register_buffer("prototypes", torch.zeros(k, dim))
        self.register_buffer("proportions", torch.zeros(k))
        if fusion == "log_prior":  # the teacher's arg-max over the KD batches (count())
            self.register_buffer("class_counts", torch.zeros(num_classes))
        if fusion in ("teacher_ref", "teacher_ref_scalar"):  # fitted by KDCI.fit_reference
            self.register_buffer("bias", torch.zeros(num_classes))

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

    def scale(self) -> float:
        """The ``scaled`` fusion's current output scale ``g`` (1 for the other fusions)."""
        if self.scale_logit is None:
            return 1.0
        return float(self.prototypes.shape[0] * torch.sigmoid(self.scale_logit.detach()))

    def count(self, teacher_logits: Tensor) -> None:
        """Add a KD batch's teacher arg-max to the realised class histogram (``log_prior``).
        Under DDP the module's buffers are broadcast from rank 0, so the counts are rank 0's."""
        classes = torch.arange(self.class_counts.numel(), device=teacher_logits.device)
        hits = (teacher_logits.detach().argmax(1, keepdim=True) == classes).sum(0)
        self.class_counts += hits.to(self.class_counts)

    def class_prior(self) -> Tensor:
        """``(C,)`` the realised class prior ``pi``: the teacher's arg-max histogram over every
        KD batch so far (issue 25: the dictionary's arg-max prior gave classes 0 whenever K < C)."""
        c = self.class_counts
        return c / c.sum().clamp_min(1.0)

    def log_prior(self) -> Tensor:
        """The positive control's ``(C,)`` adjustment: ``tau`` times the centred log of the
        realised prior, half a count per class (a class never seen stays finite)."""
        log_pi = torch.log(smoothed_prior(self.class_counts))  # no check, so no host read
        return self.tau * (log_pi - log_pi.mean())

    def prior(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C)`` prior added to the student's logits, and ``(B, K)`` weights on the
        prototypes (for ``log_prior``: ``P(z)`` per sample)."""
        z = self.mapped_prototypes()
        p = self.proportions
        if self.fusion in self.FIXED:
            weights = p.unsqueeze(0).expand(logits.shape[0], -1)
            fixed = self.log_prior() if self.fusion == "log_prior" else self.bias
            return fixed.unsqueeze(0).expand_as(logits), weights
        lam = self.attention(logits, z)
        if self.fusion == "expectation":
            weighted = lam * p.unsqueeze(0)
            weights = weighted / weighted.sum(1, keepdim=True).clamp_min(1e-12)
            prior = weights @ z
        else:
            prior = lam @ (z * p.unsqueeze(1))
            if self.scale_logit is not None:
                prior = prior * (z.shape[0] * torch.sigmoid(self.scale_logit))
        if self.projection is not None:
            prior = self.projection(prior)
        return prior, lam

    def forward(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        prior, lam = self.prior(logits)
        return logits + prior, lam


def prior_ratio_tensor(raw: Tensor, adjusted: Tensor) -> Tensor:
    """Mean over samples of ``||prior|| / ||s||`` (how much the adjustment moves the logits), as
    a 0-d tensor on their device (a KD step reads nothing back)."""
    prior = (adjusted - raw).detach().float()
    return (prior.norm(dim=1) / raw.detach().float().norm(dim=1).clamp_min(1e-12)).mean()


def attention_entropy_tensor(lam: Tensor) -> Tensor:
    """Mean entropy of the attention weights, as a 0-d tensor on their device."""
    lam = lam.detach()
    return -(lam * torch.log(lam + 1e-12)).sum(1).mean()


def prior_ratio(raw: Tensor, adjusted: Tensor) -> float:
    return float(prior_ratio_tensor(raw, adjusted))


def attention_entropy(lam: Tensor) -> float:
    return float(attention_entropy_tensor(lam))
