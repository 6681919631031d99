"""Stand-ins for an accelerator on a CPU-only machine (shared by the device tests).

- :class:`HostReads` counts every read of a value from a non-CPU tensor back to the host and
  every blocking copy onto one (what synchronises a CUDA stream), with ``meta`` tensors standing
  in for device tensors: ``meta`` holds no data, so any other host read fails there, and an
  operation whose output shape depends on values (also a synchronisation on CUDA) cannot run.
- :func:`register_cpuless_backend`: a process-group backend that, like NCCL, refuses CPU tensors
  (it takes ``meta`` ones and only records them).
- :func:`on_meta`: a method / student / teacher / KDCI object of a CPU run rebuilt on ``meta``
  through their checkpoint state, as a resumed run on an accelerator rebuilds them.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.futures import Future

META = torch.device("meta")


def _on_device(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def _fake_list(t: torch.Tensor) -> Any:
    return np.zeros(t.shape, dtype=np.float64).tolist()


def _target_device(args: tuple, kwargs: dict) -> torch.device | None:
    for a in (*args, kwargs.get("device")):
        if isinstance(a, torch.device):
            return a
        if isinstance(a, str):
            try:
                return torch.device(a)
            except RuntimeError:
                continue
        if isinstance(a, torch.Tensor):
            return a.device
    return None


class HostReads:
    """Counts host-device synchronisations while active (see the module docstring)."""

    def __init__(self) -> None:
        self.count = 0
        self.where: list[str] = []

    def _hit(self, what: str) -> None:
        self.count += 1
        self.where.append(what)

    @contextmanager
    def active(self) -> Iterator[HostReads]:
        T = torch.Tensor
        saved = {name: getattr(T, name) for name in
                 ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy",
                  "cpu", "to", "copy_")}
        reads = self

        def reader(name: str, fake):
            original = saved[name]

            @functools.wraps(original)
            def wrapped(t, *args, **kwargs):
                if _on_device(t):
                    reads._hit(name)
                    return fake(t)
                return original(t, *args, **kwargs)
            return wrapped

        def to(t, *args, **kwargs):
            target = _target_device(args, kwargs)
            if _on_device(t) and target is not None and target.type == "cpu":
                reads._hit("to(cpu)")
                return torch.zeros(t.shape, dtype=kwargs.get("dtype", t.dtype))
            if (t.device.type == "cpu" and target is not None and target.type == "meta"
                    and not kwargs.get("non_blocking", False)):
                reads._hit("blocking to(device)")
            return saved["to"](t, *args, **kwargs)

        def copy_(t, src, non_blocking=False):
            if _on_device(src) and t.device.type == "cpu":
                reads._hit("copy_ to cpu")
                return t
            if src.device.type == "cpu" and _on_device(t) and not non_blocking:
                reads._hit("blocking copy_ to device")
            return saved["copy_"](t, src, non_blocking)

        fakes = {"item": lambda t: 0.0, "tolist": _fake_list, "__float__": lambda t: 0.0,
                 "__int__": lambda t: 0, "__bool__": lambda t: False, "__index__": lambda t: 0,
                 "numpy": lambda t: np.zeros(t.shape),
                 "cpu": lambda t: torch.zeros(t.shape, dtype=t.dtype)}
        try:
            for name, fake in fakes.items():
                setattr(T, name, reader(name, fake))
            T.to = to
            T.copy_ = copy_
            yield self
        finally:
            for name, original in saved.items():
                setattr(T, name, original)


# ----------------------------------------------------------------------------- process groups


class CPURefused(RuntimeError):
    pass


class CpulessGroup(dist.ProcessGroup):
    """A loopback group that, like NCCL, refuses CPU tensors: collectives on anything else are
    recorded (``seen``) and, for one rank, are the identity."""

    seen: list[torch.device] = []

    def __init__(self, rank: int, size: int) -> None:
        super().__init__(rank, size)

    def getBackendName(self) -> str:  # noqa: N802 (torch's name)
        return "cpuless"

    def _check(self, tensors) -> None:
        for t in tensors:
            if t.device.type == "cpu":
                raise CPURefused("the cpuless backend (like NCCL) takes no CPU tensors, got one "
                                 f"of shape {tuple(t.shape)}")
            CpulessGroup.seen.append(t.device)

    def broadcast(self, tensors, opts):
        self._check(tensors)
        return _done(tensors)

    def allreduce(self, tensors, opts):
        self._check(tensors)
        return _done(tensors)

    def allgather(self, outputs, inputs, opts):
        self._check(inputs)
        for outs, x in zip(outputs, inputs, strict=True):
            self._check(outs)
            for o in outs:
                o.copy_(x)
        return _done(outputs)

    def barrier(self, opts):
        return _done([])


def _done(result):
    from torch._C._distributed_c10d import _create_work_from_future

    future = Future()
    future.set_result(result)
    return _create_work_from_future(future)


def register_cpuless_backend() -> None:
    if "cpuless" not in dist.Backend.backend_list:
        dist.Backend.register_backend("cpuless", lambda store, rank, size, timeout:
                                      CpulessGroup(rank, size), devices=["meta"])


@contextmanager
def cpuless_group(world_size: int = 1) -> Iterator[None]:
    """This process as rank 0 of a ``cpuless`` group of ``world_size`` (a loopback)."""
    register_cpuless_backend()
    CpulessGroup.seen.clear()
    dist.init_process_group("cpuless", store=dist.HashStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- objects on meta


def tensors_of(obj: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a nested state (dicts, lists, tuples), with its path."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors_of(v, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors_of(v, f"{path}/{i}")


def host_state_paths(state: dict) -> set[str]:
    """Paths of state that lives on the CPU wherever the run computes: random-generator states
    (byte tensors) and the optimisers' step counters (torch keeps those on the CPU)."""
    return {p for p, t in tensors_of(state)
            if (t.dtype == torch.uint8 and t.dim() == 1
                and ("rng" in p or "generator" in p or "random" in p))
            or (t.dim() == 0 and p.endswith("/step") and "/state/" in p)}


def cpu_checkpoint(state: Any) -> Any:
    """``state`` as a checkpoint read with ``map_location="cpu"`` gives it back."""
    return copy.deepcopy(state)
