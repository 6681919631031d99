"""The black-box boundary of SKDCGN: the teacher CGN answers queries, nothing else.

SKDCGN (Ambekar et al., 2022) distils each mechanism from ``(noise, label) -> output`` pairs
only: no teacher weights, gradients, real images or CGN training data. :class:`BlackBoxCGN` is the
one object the student side gets. The teacher lives in another process (forked from
multiprocessing's single-threaded ``forkserver``; it receives the module once, through a pipe,
on the CPU, with the device to answer on, puts it there and then only answers): the student side
holds a pipe and plain numbers, and every answer arrives as a CPU array, so no object reachable
from it holds a teacher parameter (``tests/test_cgn_skdcgn.py`` walks the object graph, closures
included). CUDA, when the device is a GPU, is initialised in the teacher's process itself, never
inherited. The teacher's sampling speed is timed inside its own process (``speed``), not through
the pipe.
:func:`collect_queries` turns the box into the stored query/answer dataset the students train
on. Texture answers are taken *before* the shuffler (the published code stored shuffled
targets); each mechanism gets its own noise.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdci_ray.cgn.mechanisms import MECHANISMS, module_device


def _serve(conn: Any) -> None:
    """The teacher's process: receive the (CPU) module and its device once, put the module
    there, then answer until told to stop; every answer goes back as a CPU array."""
    from kdci_ray.train.runtime import limit_threads

    limit_threads()  # the same thread count as the student side: the same answers
    cgn, device = conn.recv()
    try:
        device = torch.device(device)
        cgn = cgn.to(device).eval()
    except Exception as exc:  # e.g. no usable CUDA here: the student side raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    conn.send(("ok", str(device)))
    while True:
        message = conn.recv()
        if message[0] == "stop":
            conn.close()
            return
        try:
            if message[0] == "speed":
                from kdci_ray.cgn.pipeline import images_per_second

                with torch.no_grad():
                    conn.send(("ok", images_per_second(cgn.mechanism, *message[1:],
                                                       device=device)))
                continue
            _, mechanism, noise, labels = message
            with torch.no_grad():
                out = cgn.mechanism(mechanism, torch.from_numpy(noise).to(device),
                                    torch.from_numpy(labels).to(device))
            conn.send(("ok", out.cpu().numpy()))
        except Exception as exc:  # the student side raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _on_cpu(module: nn.Module) -> nn.Module:
    """``module`` when it is on the CPU, else a CPU copy: CUDA tensors are not sent through a
    pipe (a ``meta`` module, which holds no values, becomes an uninitialised CPU one)."""
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return module
    clone = copy.deepcopy(module)
    return clone.to_empty(device="cpu") if any(t.is_meta for t in tensors) else clone.cpu()


def _stop(conn: Any, process: Any) -> None:
    try:
        conn.send(("stop",))
        conn.close()
    except (OSError, ValueError):
        pass
    process.join(timeout=10)
    if process.is_alive():
        process.kill()


class BlackBoxCGN:
    """Query access to a CGN's mechanisms: ``query(mechanism, noise, labels) -> output``.

    The teacher answers on ``device`` (default: the device ``cgn`` is on); queries may come on
    any device, answers are CPU tensors."""

    __slots__ = ("_conn", "_process", "_finalizer", "latent_dim", "num_classes", "image_size",
                 "channels", "device", "__weakref__")

    def __init__(self, cgn: nn.Module, device: str | torch.device | None = None) -> None:
        first = cgn.mechanisms["shape"]
        own = module_device(cgn)
        self.device = own if device is None else torch.device(device)
        self.latent_dim = int(cgn.latent_dim if hasattr(cgn, "latent_dim") else
                              first.latent_dim)
        probe = torch.zeros(1, self.latent_dim, device=own)  # on the teacher's own device
        with torch.no_grad():
            cgn.eval()
            shapes = {m: tuple(cgn.mechanism(m, probe, torch.zeros(1, dtype=torch.long,
                                                                   device=own)).shape)
                      for m in MECHANISMS}
        self.num_classes = int(first.num_classes)
        self.image_size = int(shapes["shape"][-1])
        self.channels = {m: int(shapes[m][1]) for m in MECHANISMS}
        # a fork of a clean, single-threaded server that has imported torch once (not of this
        # process, whose threads a fork would copy mid-state): a box starts in well under a second
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(["torch", "kdci_ray.cgn.mechanisms",
                                        "kdci_ray.train.runtime"])
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True,
                                        name="skdcgn-teacher")
        self._process.start()
        child.close()
        # pickled into the server on the CPU; nothing here keeps a reference
        self._conn.send((_on_cpu(cgn), str(self.device)))
        self._finalizer = weakref.finalize(self, _stop, self._conn, self._process)
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):  # it died taking the module (its class not importable?)
            status, value = "error", "the process ended before it took the teacher"
        if status == "error":
            self.close()
            raise RuntimeError(f"the teacher's process could not put the teacher on "
                               f"{self.device}: {value}")

    def _ask(self, message: tuple) -> Any:
        self._conn.send(message)
        status, value = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"the teacher's process refused the query: {value}")
        return value

    def query(self, mechanism: str, noise: Tensor, labels: Tensor) -> Tensor:
        if mechanism not in MECHANISMS:
            raise ValueError(f"unknown mechanism {mechanism!r}: one of {', '.join(MECHANISMS)}")
        answer = self._ask(("query", mechanism,
                            np.ascontiguousarray(noise.detach().cpu().numpy()),
                            np.ascontiguousarray(labels.detach().cpu().numpy())))
        return torch.from_numpy(answer)

    def speed(self, n: int = 512, batch_size: int = 256, repeats: int = 3) -> float:
        """The teacher's images per second (all three mechanisms), timed in its own process
        on its device."""
        return float(self._ask(("speed", self.latent_dim, self.num_classes, n, batch_size,
                                repeats)))

    def close(self) -> None:
        """Stop the teacher's process (also done when the box is garbage-collected)."""
        self._finalizer()

    def __enter__(self) -> BlackBoxCGN:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class QuerySet:
    """Stored queries of one mechanism: noise (N, latent), labels (N,), answers (N, C, H, W)."""

    mechanism: str
    noise: Tensor
    labels: Tensor
    answers: Tensor

    def __len__(self) -> int:
        return len(self.labels)


def collect_queries(box: BlackBoxCGN, per_class: int, seed: int,
                    batch_size: int = 500) -> dict[str, QuerySet]:
    """``per_class`` queries per class and mechanism, each mechanism with its own noise draw."""
    out = {}
    for j, mechanism in enumerate(MECHANISMS):
        g = torch.Generator().manual_seed(seed * 7 + j)
        labels = torch.arange(box.num_classes).repeat_interleave(per_class)
        noise = torch.randn(len(labels), box.latent_dim, generator=g)
        answers = torch.cat([box.query(mechanism, noise[i:i + batch_size],
                                       labels[i:i + batch_size])
                             for i in range(0, len(labels), batch_size)])
        out[mechanism] = QuerySet(mechanism, noise, labels, answers)
    return out
