"""Experiment kinds behind one interface (``kinds.ExperimentKind``): ``dfkd`` (the DFKD methods
with or without KDCI, ``kdci_ray.experiments.dfkd``) and ``skdcgn`` (``kdci_ray.experiments.skdcgn``
over ``kdci_ray.cgn``). Importing this package loads no kind: ``kind_named`` imports the one asked
for."""

from __future__ import annotations

from kdci_ray.experiments.kinds import (
    DEFAULT_KIND,
    KIND_KEY,
    KIND_NAMES,
    ExperimentKind,
    kind_named,
)

__all__ = ["DEFAULT_KIND", "KIND_KEY", "KIND_NAMES", "ExperimentKind", "kind_named"]
