"""GPU speed and exactness settings of a run (``run.amp``, ``run.tf32``, ``run.channels_last``,
``run.deterministic``), all off by default.

- ``amp: bf16`` autocasts the KD step's forwards (teacher, student, KDCI, loss) to bfloat16; the
  methods' synthesis stays in float32. bfloat16 needs no loss scaling.
- ``tf32`` lets cuBLAS and cuDNN use TF32 on Ampere and later GPUs. PyTorch's own default turns it
  on for cuDNN convolutions; here it is off unless asked for, so float32 means float32.
- ``channels_last`` keeps the teacher, the student and their 4-D inputs in NHWC.
- ``deterministic`` asks torch for deterministic algorithms (an operation without one raises,
  naming itself), cuDNN's deterministic, non-benchmarking mode and cuBLAS's fixed workspace: with
  it a GPU run repeats bit for bit on the same hardware and software; without it only CPU runs do.

The settings are process-wide; a run sets every one of them for its duration and restores the
process's own afterwards (:func:`numerics`), so one run's choice never leaks into the next.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's deterministic workspace setting


def apply_numerics(run: Any) -> None:
    """Set TF32 and determinism for this process from the ``run`` config section."""
    if run.deterministic:
        # read by cuBLAS when it first allocates its workspace: set before any CUDA work
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(bool(run.deterministic))
    torch.backends.cudnn.deterministic = bool(run.deterministic)
    torch.backends.cudnn.benchmark = False
    # the legacy switches only: torch refuses a mix of these and the newer fp32_precision API
    torch.backends.cuda.matmul.allow_tf32 = bool(run.tf32)
    torch.backends.cudnn.allow_tf32 = bool(run.tf32)


@contextlib.contextmanager
def numerics(run: Any) -> Iterator[None]:
    """:func:`apply_numerics` for the block, the process's previous settings restored after it
    (a run inside a user's Python session leaves their settings as it found them)."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    apply_numerics(run)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved[2:]


def autocast(run: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """The KD step's autocast context (a no-op unless ``run.amp`` is bf16)."""
    if run.amp != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_memory_format(run: Any, *modules: nn.Module) -> None:
    """Put ``modules`` in the run's memory format (NHWC with ``channels_last``)."""
    if run.channels_last:
        for module in modules:
            module.to(memory_format=torch.channels_last)


def format_input(run: Any, x: Tensor) -> Tensor:
    """A 4-D input in the run's memory format (unchanged otherwise)."""
    if run.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
