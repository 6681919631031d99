"""DFKD methods behind one interface (``Method``); the registry maps config names to classes."""

from __future__ import annotations

from kdci_ray.methods.base import Method, MethodContext, SubstitutionData
from kdci_ray.methods.cmi import CMI
from kdci_ray.methods.dafl import DAFL
from kdci_ray.methods.deepinv import DeepInversion
from kdci_ray.methods.dfnd import DFND
from kdci_ray.methods.fast import Fast
from kdci_ray.methods.mosaickd import MosaicKD

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (DAFL, DeepInversion, Fast, CMI, MosaicKD, DFND)
}

__all__ = ["METHODS", "Method", "MethodContext", "SubstitutionData"]
