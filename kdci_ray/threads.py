"""The BLAS / OpenMP thread count of every kdci-ray process (the ground layer: imports nothing).

``kdci_ray/__init__.py`` applies ``thread_env()`` to the environment when the package is first
imported, before torch or numpy load; Ray workers inherit it, and ``engine.runner`` passes it to
a cluster's workers explicitly.
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env() -> dict[str, str]:
    """Each of ``THREAD_VARS`` as the user set it, else as ``OMP_NUM_THREADS``, else ``"1"``."""
    default = os.environ.get("OMP_NUM_THREADS") or "1"
    return {var: os.environ.get(var) or default for var in THREAD_VARS}
