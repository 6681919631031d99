"""Labelled datasets, read from the installed packages or from explicit local paths only."""

from __future__ import annotations

from kdci_ray.data.cifar import load_cifar
from kdci_ray.data.digits import load_digits
from kdci_ray.data.labeled import LabeledData

DATASETS = ("digits", "cifar10", "cifar100")


def load_dataset(name: str, root: str = "", image_size: int = 16, test_fraction: float = 0.3,
                 split_seed: int = 0) -> LabeledData:
    """The one front door for labelled data (the teacher's training set and the test split)."""
    if name == "digits":
        return load_digits(image_size, test_fraction, split_seed)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root)
    raise ValueError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")


__all__ = ["DATASETS", "LabeledData", "load_cifar", "load_digits", "load_dataset"]
