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

from kdci_ray.threads import THREAD_VARS, thread_env

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


__all__ = ["THREAD_VARS", "ConfigError", "SweepResult", "sweep", "thread_env"]
