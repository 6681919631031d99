"""The labelled data of a run (``data.*``): the teacher's training split and the test split every
student is evaluated on; the methods never see the training split."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdci_ray.data import LabeledData, load_dataset

if TYPE_CHECKING:
    from kdci_ray.experiments.dfkd import ExperimentConfig


def load_data(cfg: ExperimentConfig) -> LabeledData:
    """``cfg.data``'s data set, split per ``data.test_fraction`` and ``data.split_seed``."""
    d = cfg.data
    return load_dataset(d.name, d.root, d.image_size, d.test_fraction, d.split_seed)
