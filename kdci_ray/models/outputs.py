"""The single return type of every classifier in :mod:`kdci_ray.models`."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Outputs(NamedTuple):
    """What every model's ``forward(x)`` returns.

    Attributes:
        logits: ``(B, num_classes)`` class scores (before softmax).
        features: ``(B, D)`` penultimate vector, i.e. exactly the input of the final
            linear layer (after global pooling and flattening), so that
            ``model.<last linear>(features) == logits``.
    """

    logits: Tensor
    features: Tensor
