"""The KD step that ``kdci_overhead.py`` times: one variant's models, optimiser and inputs
(vanilla | kdci | source), and the timing of its steps, its refreshes and KDCI's own calls.

Imported by ``kdci_overhead.py`` (see its docstring for the measurement); not run by itself.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import statistics
import time

import torch

from kdci_ray.kdci import KDCI, KDCIConfig
from kdci_ray.methods.losses import kd_loss
from kdci_ray.models import create_model

HEAP_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: buffers below it come from the heap
TEMPERATURE = 4.0
CLASSES = 10


def make_kdci(args: argparse.Namespace, features: str, device: torch.device) -> KDCI:
    """KDCI as the loop sets it up (``score_batch`` = the KD batch)."""
    return KDCI(KDCIConfig(k=args.k, features=features), CLASSES, device, seed=0,
                score_batch=args.batch)


def keep_freed_memory() -> bool:
    """glibc (timing process, ``--time-malloc keep``): serve buffers up to 32 MiB from the heap
    and never trim it, so that a KD step stops paying page faults for the buffers the previous
    step freed (system time that varies from step to step). Returns whether it took effect."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, HEAP_MMAP_THRESHOLD)
                and mallopt(m_trim_threshold, 2**31 - 1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device: torch.device, fn) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()`` (synchronised on GPU)."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


class Bench:
    """Models, optimiser and inputs of one variant (vanilla | kdci | source)."""

    def __init__(self, args: argparse.Namespace, variant: str, device: torch.device,
                 first_refresh: bool = True) -> None:
        torch.manual_seed(0)
        self.args, self.device, self.variant = args, device, variant
        self.teacher = create_model(args.teacher, CLASSES, 3).to(device).eval()
        self.student = create_model(args.student, CLASSES, 3).to(device).train()
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
        self.refresh_x = torch.randn(args.refresh_n, 3, 32, 32, generator=g).to(device)
        params = [{"params": self.student.parameters()}]
        self.kdci: KDCI | None = None
        if variant != "vanilla":
            features = "source" if variant == "source" else "observed"
            self.kdci = make_kdci(args, features, device)
            params.append({"params": self.kdci.module.parameters()})
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        self.last_t: torch.Tensor | None = None
        self.first_refresh = (math.nan, math.nan)  # wall, CPU seconds (scores refresh_x)
        if first_refresh and self.kdci is not None:
            self.first_refresh = _timed(device, self.refresh)

    def refresh(self) -> None:
        assert self.kdci is not None
        self.kdci.refresh(self.teacher, self.refresh_x)

    def step(self) -> None:
        with torch.no_grad():
            t = self.teacher(self.x).logits
        s = self.student(self.x).logits
        if self.kdci is not None:
            self.kdci.observe(t)
            s, _ = self.kdci.compensate(s)
        loss = kd_loss(s, t, TEMPERATURE)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.last_t = t

    def block(self, n: int) -> tuple[float, float]:
        """Mean wall and CPU seconds per step over ``n`` steps."""
        wall, cpu = _timed(self.device, lambda: [self.step() for _ in range(n)])
        return wall / n, cpu / n


def period_logits(bench: Bench) -> torch.Tensor:
    """Teacher logits a refresh period of KD steps leaves to cluster: ``refresh_every * batch``
    distinct rows (the refresh images' logits, tiled, with a little noise)."""
    args = bench.args
    with torch.no_grad():
        scored = torch.cat([bench.teacher(bench.refresh_x[i:i + args.batch]).logits.float()
                            for i in range(0, args.refresh_n, args.batch)])
    n = args.refresh_every * args.batch
    tiled = scored.repeat(math.ceil(n / len(scored)), 1)[:n]
    g = torch.Generator().manual_seed(3)
    return tiled + 0.01 * torch.randn(tiled.shape, generator=g).to(tiled.device)


def time_refresh(bench: Bench, seen: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Mean wall and CPU seconds of one refresh after a period of KD steps (observed mode: the
    period's logits are observed first, untimed)."""
    assert bench.kdci is not None
    observed = bench.kdci.config.features == "observed"
    batch = bench.args.batch
    if observed:
        bench.refresh()  # clusters what the timed blocks observed: the period starts empty
    walls, cpus = [], []
    for _ in range(repeats):
        if observed:
            for i in range(0, len(seen), batch):
                bench.kdci.observe(seen[i:i + batch])
        wall, cpu = _timed(bench.device, bench.refresh)
        walls.append(wall)
        cpus.append(cpu)
    return statistics.fmean(walls), statistics.fmean(cpus)


def own_cost(bench: Bench, seen: torch.Tensor, repeats: int = 7,
             n: int = 50) -> tuple[float, float]:
    """Wall and CPU seconds KDCI's calls add to one KD step, timed apart on the logits alone:
    (observe + compensate + KD loss + backward + zero_grad / SGD step of the attention) minus
    (KD loss + backward), ``n`` steps per repetition, median of ``repeats``."""
    args, device = bench.args, bench.device
    kdci = make_kdci(args, "observed", device)
    for i in range(0, len(seen), args.batch):
        kdci.observe(seen[i:i + args.batch])
    kdci.refresh(bench.teacher, bench.refresh_x)  # clusters the observed logits, scores nothing
    opt = torch.optim.SGD(kdci.module.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    s0 = torch.randn(args.batch, CLASSES, generator=g).to(device).requires_grad_()
    t = seen[:args.batch].to(device)

    def plain() -> None:
        for _ in range(n):
            kd_loss(s0, t, TEMPERATURE).backward()
            s0.grad = None

    def with_kdci() -> None:
        for _ in range(n):
            kdci.observe(t)
            s, _ = kdci.compensate(s0)
            loss = kd_loss(s, t, TEMPERATURE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            s0.grad = None

    _timed(device, plain)
    _timed(device, with_kdci)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        pw, pc = _timed(device, plain)
        kw, kc = _timed(device, with_kdci)
        walls.append((kw - pw) / n)
        cpus.append((kc - pc) / n)
    return statistics.median(walls), statistics.median(cpus)
