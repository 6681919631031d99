"""Load a script of ``benchmarks/`` as a module (it is not a package): its pure helpers are
tested without running the benchmark."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_bench(script: str) -> ModuleType:
    """``benchmarks/<script>.py`` as a fresh module named ``<script>_bench``."""
    spec = importlib.util.spec_from_file_location(f"{script}_bench", BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
