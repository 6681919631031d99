"""kdci_ray: data-free knowledge distillation (KDCI, SKDCGN) on Ray.

Importing the package pins the BLAS / OpenMP thread count of this process before torch or numpy
load, and of every process it starts (Ray workers inherit the environment): one thread unless the
user set ``OMP_NUM_THREADS`` (``MKL_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` follow it unless set
too). The numbers of a run then do not depend on how it was launched;
``kdci_ray.train.runtime.limit_threads`` applies the same count to torch and to loaded BLAS
libraries.
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env() -> dict[str, str]:
    """Each of ``THREAD_VARS`` as the user set it, else as ``OMP_NUM_THREADS``, else ``"1"``."""
    default = os.environ.get("OMP_NUM_THREADS") or "1"
    return {var: os.environ.get(var) or default for var in THREAD_VARS}


os.environ.update(thread_env())


def __getattr__(name: str):
    """``kdci_ray.sweep`` / ``kdci_ray.SweepResult`` (``kdci_ray.api``) and ``ConfigError`` (what
    every bad input raises, ``kdci_ray.errors``), imported on first use so that importing the
    package stays light (it pins the thread count before torch loads)."""
    if name in ("sweep", "SweepResult"):
        from kdci_ray import api

        return getattr(api, name)
    if name == "ConfigError":
        from kdci_ray.errors import ConfigError

        return ConfigError
    raise AttributeError(f"module 'kdci_ray' has no attribute {name!r}")


__all__ = ["ConfigError", "SweepResult", "sweep", "thread_env"]
