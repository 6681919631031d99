"""Loading and saving model checkpoints with readable errors.

A checkpoint file holds ``{'state_dict': sd, ...metadata}`` (the layout of the zju-vipa
``datafree`` / CMI training scripts and of :func:`save_checkpoint`), ``{'model': sd, ...}``
or a raw state dict. Keys saved from a ``DistributedDataParallel`` / ``DataParallel``
wrapper (leading ``module.``) are accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from kdci_ray.atomic import atomic_write

_PREFIX = "module."
_WRAPPER_KEYS = ("state_dict", "model")
_EXPECTED_FORMAT = (
    "a file written by torch.save holding {'state_dict': state_dict, ...}, "
    "{'model': state_dict, ...} or a raw state dict (parameter name -> tensor)"
)
_SHOW = 10  # how many keys of each kind an error message lists


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or tensor shapes do not match the model's.

    Attributes ``missing``, ``unexpected`` and ``shape_mismatches`` hold the full lists;
    the message shows the first few of each.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        shape_mismatches: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.shape_mismatches = shape_mismatches or []


def _unwrap_model(model: nn.Module) -> nn.Module:
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _model_name(model: nn.Module) -> str:
    arch = getattr(model, "arch", None)
    cls = type(model).__name__
    return f"{arch!r} ({cls})" if isinstance(arch, str) else cls


def _split(obj: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Return ``(state_dict, metadata)`` from whatever ``torch.load`` produced."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                meta = {k: v for k, v in obj.items() if k != key}
                return dict(inner), meta
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj), {}
        found = ", ".join(repr(k) for k in list(obj)[:_SHOW]) or "nothing"
    else:
        found = type(obj).__name__
    raise ValueError(
        f"checkpoint {path} has an unrecognised layout (found: {found}); "
        f"expected {_EXPECTED_FORMAT}"
    )


def _strip_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {(k[len(_PREFIX) :] if k.startswith(_PREFIX) else k): v for k, v in sd.items()}


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return f"  {title}: none"
    lines = [f"  {title} ({len(items)}):"]
    lines += [f"    {item}" for item in items[:_SHOW]]
    if len(items) > _SHOW:
        lines.append(f"    ... and {len(items) - _SHOW} more")
    return "\n".join(lines)


def _compare(
    sd: dict[str, Tensor], expected: dict[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and isinstance(sd[k], Tensor) and tuple(sd[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, shapes


def _read(path: Path, weights_only: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` of a checkpoint file; readable errors for a missing or bad one."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected {_EXPECTED_FORMAT})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises many exception types here
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:160]
        hint = (
            "; if the file is trusted and holds pickled Python objects besides tensors, re-save "
            "its state dict with save_checkpoint() (or load it with weights_only=False)"
            if weights_only else ""
        )
        raise ValueError(
            f"could not read checkpoint {path}: not a readable torch.save file "
            f"({type(exc).__name__}: {first}); expected {_EXPECTED_FORMAT}{hint}"
        ) from exc
    return _split(obj, path)


def load_checkpoint(model: nn.Module, path: str | Path, *, weights_only: bool = True) -> dict:
    """Load a checkpoint's weights into ``model`` (strictly) and return its metadata.

    Args:
        model: the model to fill; its keys and shapes must match the checkpoint exactly.
        path: file in one of the layouts described in the module docstring.
        weights_only: passed to ``torch.load``. Keep ``True`` (no arbitrary unpickling);
            set ``False`` only for a trusted file whose metadata holds Python objects.

    Returns:
        The checkpoint dict without its state dict (e.g. ``epoch``, ``best_acc1``), or
        ``{}`` for a raw state dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read, or its layout is not recognised.
        CheckpointMismatchError: missing / unexpected keys or shape mismatches. BatchNorm
            ``num_batches_tracked`` buffers absent from old checkpoints are tolerated.
    """
    path = Path(path)
    sd, meta = _read(path, weights_only)
    sd = _strip_prefix(sd)
    target = _unwrap_model(model)
    expected = target.state_dict()
    for k, v in expected.items():  # tolerate BN counters missing from old checkpoints
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v
    missing, unexpected, shapes = _compare(sd, expected)
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            "\n".join(
                [
                    f"checkpoint {path} does not match model {_model_name(target)}:",
                    _listing("missing keys (in model, not in checkpoint)", missing),
                    _listing("unexpected keys (in checkpoint, not in model)", unexpected),
                    _listing("shape mismatches", shapes),
                ]
            ),
            path=path,
            missing=missing,
            unexpected=unexpected,
            shape_mismatches=shapes,
        )
    try:
        target.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # e.g. a non-tensor value; keys/shapes were checked above
        raise CheckpointMismatchError(
            f"checkpoint {path} could not be loaded into model {_model_name(target)}: {exc}",
            path=path,
        ) from exc
    return meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata a checkpoint carries beside its weights (``{}`` for a raw state dict);
    raises as :func:`load_checkpoint` does for a missing or unreadable file."""
    return _read(Path(path), weights_only=True)[1]


def save_checkpoint(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """Atomically write ``{'state_dict': <CPU tensors>, **meta}`` to ``path``.

    The file is written to a temporary file in the same directory, fsynced and moved into
    place with ``os.replace``, so readers never see a partial checkpoint. Parent
    directories are created. Returns the path written.
    """
    if "state_dict" in meta:
        raise TypeError("save_checkpoint(): 'state_dict' is reserved for the model weights")
    sd = {k: v.detach().cpu() for k, v in _unwrap_model(model).state_dict().items()}
    return atomic_write(path, lambda fh: torch.save({"state_dict": sd, **meta}, fh))
