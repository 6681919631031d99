"""The collectives KDCI needs under DDP: every rank's features gathered, rank 0's dictionary
broadcast.

Collectives run only with two or more ranks (Ray Train creates a process group even for one
worker) and take tensors on a device their backend accepts: the trial's device when the backend
supports it (NCCL: the GPU), else the CPU (``collective_device``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Ranks of the default process group (1 without one): collectives only when it is > 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_rank() -> bool:
    return world_size() == 1 or dist.get_rank() == 0


def collective_device(preferred: torch.device) -> torch.device:
    """Where tensors handed to the default group's collectives must live: ``preferred`` (the
    trial's device) when its backend takes that device type, else the CPU when it takes that
    (gloo with a CUDA model); NCCL takes only CUDA tensors."""
    backend = str(dist.get_backend())
    takes = dist.Backend.backend_capability.get(backend.lower(), ["cpu"])
    if preferred.type in takes:
        return preferred
    if "cpu" in takes:
        return torch.device("cpu")
    raise RuntimeError(f"the process group's backend {backend!r} takes only {takes} tensors, "
                       f"but this rank computes on {preferred}")


def gather_to_cpu(x: Tensor, device: torch.device) -> Tensor:
    """Every rank's ``x``, concatenated in rank order, on the CPU. The ranks' shares are equal
    by construction (the same KD steps and batches on every rank; a fixed pool's equal shares,
    ``Method.substitution_size``)."""
    if world_size() == 1:
        return x.cpu()
    x = x.to(collective_device(device)).contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts).cpu()


def broadcast_from_main(tensors: list[Tensor], device: torch.device) -> list[Tensor]:
    """Rank 0's ``tensors`` on every rank (returned on ``device``)."""
    if world_size() == 1:
        return [t.to(device) for t in tensors]
    where = collective_device(device)
    out = [t.to(where).contiguous() for t in tensors]
    for t in out:
        dist.broadcast(t, src=0)
    return [t.to(device) for t in out]
