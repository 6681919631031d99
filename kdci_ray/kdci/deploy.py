"""The compensated student as one deployable module (KDCI, Wang et al., CVPR 2024, Eq. 6).

A KDCI run trains two predictions: the raw student ``s(x)`` (``eval/acc``) and the compensated
``s~(x) = s(x) + prior(s(x))`` (``eval/acc_kdci``), the prior coming from the dictionary and the
attention (or, for the ``log_prior`` fusion, a fixed vector). Both are deployable; which one to
ship is measured per fusion (the sweep report's "ship" column). ``student.pt`` holds the student,
the adjustment's weights and dictionary buffers, and the arguments that rebuild it;
``load_student(path, compensated=True)`` returns ``CompensatedStudent``, one module whose
``logits`` are ``s~``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdci_ray.kdci.attention import KDCIAttention
from kdci_ray.models import Outputs, create_model


class CompensatedStudent(nn.Module):
    """Student + KDCI's attention: ``forward(x).logits`` is the compensated prediction."""

    def __init__(self, student: nn.Module, attention: KDCIAttention) -> None:
        super().__init__()
        self.student = student
        self.attention = attention

    def forward(self, x: torch.Tensor) -> Outputs:
        out = self.student(x)
        adjusted, _ = self.attention(out.logits)
        return Outputs(logits=adjusted, features=out.features)


def load_student(path: str | Path, compensated: bool = False,
                 map_location: str | torch.device = "cpu") -> nn.Module:
    """The student of a ``student.pt`` in eval mode: raw, or with ``compensated`` the
    ``CompensatedStudent`` (an error if the run had no KDCI or predates the export)."""
    state: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=False)
    missing = [k for k in ("num_classes", "channels") if k not in state]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)}: it was written by an older "
                         f"kdci_ray; rerun the trial to export a loadable student")
    student = create_model(state["arch"], state["num_classes"], state["channels"])
    student.load_state_dict(state["state_dict"])
    if not compensated:
        return student.eval()
    if "kdci_module" not in state:
        raise ValueError(f"{path} is a student trained without KDCI: there is no compensated "
                         f"prediction; load it with compensated=False")
    attention = KDCIAttention(**state["kdci_module"])
    attention.load_state_dict(state["kdci"])
    return CompensatedStudent(student, attention).eval()
