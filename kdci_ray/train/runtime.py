"""Process-level facts the loop needs: rank, world size, device, thread limits, seeding."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kdci_ray import thread_env


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP-wrap a module whose gradients must be averaged across ranks (no-op on one rank)."""
        if not self.distributed or not any(p.requires_grad for p in module.parameters()):
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def current_runtime(use_gpu: bool = False) -> Runtime:
    initialized = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if initialized else 0
    world = dist.get_world_size() if initialized else 1
    if use_gpu and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    return Runtime(rank, world, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def thread_count() -> int:
    """The intra-op and BLAS thread count of every kdci_ray process: ``OMP_NUM_THREADS``, else 1.

    A cached teacher's key and record carry it: its numbers depend on it."""
    value = os.environ.get("OMP_NUM_THREADS") or "1"
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"OMP_NUM_THREADS must be a positive integer, got {value!r}")
    return count


def limit_threads() -> int:
    """Pin this process and the processes it starts to ``thread_count()`` threads: the
    OMP / MKL / OpenBLAS variables (unless the user set them), torch's intra-op pool and every
    BLAS / OpenMP library loaded so far (threadpoolctl). Returns the count."""
    from threadpoolctl import threadpool_limits

    os.environ.update(thread_env())
    count = thread_count()
    torch.set_num_threads(count)
    threadpool_limits(count)
    return count
