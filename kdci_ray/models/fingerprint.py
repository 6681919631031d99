"""Content identity of a model: what cached artifacts (selections, dictionaries) are keyed by."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def state_fingerprint(model: nn.Module, extra: str = "") -> str:
    """SHA-1 (16 hex digits) of the model's class, ``extra`` (e.g. its input normalisation) and
    every state_dict tensor's name, shape, dtype and bytes: a few ms per 10 MB, no forward pass."""
    h = hashlib.sha1(f"{type(model).__name__}|{extra}".encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
