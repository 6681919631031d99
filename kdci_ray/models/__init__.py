"""Model zoo: the one front door is :func:`create_model`.

Every model is built as ``create_model(name, num_classes, in_channels)`` and its
``forward(x)`` returns :class:`Outputs` ``(logits, features)``.

* digits data (16x16, any side >= 8): ``digits_cnn`` (teacher), ``digits_cnn_small``
  (student), ``tiny_cnn`` (tests);
* CIFAR (32x32), state-dict compatible with the zju-vipa ``datafree`` zoo: ``resnet18``,
  ``resnet34``, ``vgg11_bn``, ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch.nn as nn

from .checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint
from .outputs import Outputs
from .resnet_cifar import resnet18, resnet34
from .small import digits_cnn, digits_cnn_small, tiny_cnn
from .vgg_cifar import vgg11_bn
from .wresnet import wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

__all__ = [
    "MODELS",
    "CheckpointMismatchError",
    "Outputs",
    "create_model",
    "load_checkpoint",
    "save_checkpoint",
]

#: name -> factory ``(num_classes, in_channels=3) -> nn.Module``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "tiny_cnn": tiny_cnn,
    "digits_cnn_small": digits_cnn_small,
    "digits_cnn": digits_cnn,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "vgg11_bn": vgg11_bn,
    "wrn_16_1": wrn_16_1,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
}


def create_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build the registered model ``name``; its ``forward`` returns :class:`Outputs`.

    The registry name is stored on the model as ``model.arch`` (used in error messages).

    Raises:
        ValueError: unknown ``name`` (the message suggests the closest valid name), or a
            non-positive ``num_classes`` / ``in_channels``.
    """
    if name not in MODELS:
        valid = ", ".join(sorted(MODELS))
        close = difflib.get_close_matches(str(name).lower(), list(MODELS), n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid models: {valid}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"create_model({name!r}): {arg} must be a positive int, got {value!r}")
    model = MODELS[name](num_classes, in_channels=in_channels)
    model.arch = name
    return model
