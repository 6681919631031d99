"""Process-level facts the loop needs: rank, world size, device, thread limits, seeding."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kdci_ray.threads import thread_env


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP-wrap a module whose gradients must be averaged across ranks (no-op on one rank)."""
        if not self.distributed or not any(p.requires_grad for p in module.parameters()):
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)


class GPUUnavailable(RuntimeError):
    """``run.use_gpu`` is set but this worker has no usable CUDA device (never a silent CPU run)."""


def _visible() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")


def worker_device(use_gpu: bool, assigned: torch.device | None = None) -> torch.device:
    """The device a training worker computes on.

    Without ``use_gpu``: the CPU. With it: ``assigned`` when given (inside a Ray Train worker,
    ``ray.train.torch.get_device()``: the GPU Ray gave this worker, whatever its local rank), else
    this process's GPU: ``LOCAL_RANK``'s under torch.distributed (torchrun sets it), the current
    one otherwise; a local rank past the visible GPUs is an error, never another rank's GPU. A
    worker asked to use a GPU that sees no usable CUDA raises :class:`GPUUnavailable` (the
    driver on a GPU-less head uses :func:`host_device` instead)."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise GPUUnavailable(
            f"run.use_gpu is set but this worker sees no usable CUDA device (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}; CUDA_VISIBLE_DEVICES="
            f"{_visible()}): install a CUDA build of torch that matches the node's driver, or "
            f"set run.use_gpu=false to train on CPUs")
    count = torch.cuda.device_count()
    if assigned is not None:
        if assigned.type != "cuda":
            raise GPUUnavailable(
                f"run.use_gpu is set but the worker was assigned {assigned} (no GPU; "
                f"CUDA_VISIBLE_DEVICES={_visible()}): give the workers GPUs (run.gpus_per_worker) "
                f"or set run.use_gpu=false")
        index = assigned.index if assigned.index is not None else torch.cuda.current_device()
    elif dist.is_available() and dist.is_initialized():
        index = int(os.environ.get("LOCAL_RANK", "0"))
    else:
        index = torch.cuda.current_device()
    if index >= count:
        raise GPUUnavailable(
            f"this worker's GPU index {index} is past the {count} GPU(s) it can see "
            f"(CUDA_VISIBLE_DEVICES={_visible()}): start one process per visible GPU")
    return torch.device("cuda", index)


def host_device(use_gpu: bool) -> torch.device:
    """The device of driver-side work (pre-trial jobs): a GPU when ``use_gpu`` and this machine
    has one, else the CPU (the head of a GPU cluster may have none; that is no error)."""
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current_runtime(use_gpu: bool = False, device: torch.device | None = None) -> Runtime:
    """This process's rank, world size and device (``device``: one already chosen, e.g.
    :func:`worker_device` of Ray Train's assignment; else :func:`worker_device` here)."""
    initialized = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if initialized else 0
    world = dist.get_world_size() if initialized else 1
    return Runtime(rank, world, device if device is not None else worker_device(use_gpu))


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


def worker_threads(run, device: torch.device) -> int:
    """Threads for a worker's CPU-side work: :func:`thread_count` on a CPU worker (its numbers
    depend on it); on a GPU worker the CPUs it asked for (``run.cpus_per_worker``, at least 1),
    so pool sampling, augmentation and k-means do not run on one core while the GPU waits."""
    if device.type == "cpu":
        return thread_count()
    return max(1, int(run.cpus_per_worker))


def limit_threads(count: int | None = None) -> int:
    """Pin torch's intra-op pool and every BLAS / OpenMP library loaded so far (threadpoolctl)
    to ``count`` threads (default :func:`thread_count`), and the OMP / MKL / OpenBLAS variables
    of the processes this one starts to the job's count (unless the user set them). That job
    count, not ``count``, is what keys a cached teacher: a GPU worker using more threads finds
    the same teacher. Returns the count applied."""
    from threadpoolctl import threadpool_limits

    os.environ.update(thread_env())
    count = thread_count() if count is None else int(count)
    torch.set_num_threads(count)
    threadpool_limits(count)
    return count
