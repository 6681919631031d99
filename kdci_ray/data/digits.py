"""The embedded dataset: scikit-learn's bundled handwritten digits (1797 real 8x8 images).

Upsampled bilinearly to ``image_size`` (16 by default) and split with a fixed seed, stratified
by class. Nothing is downloaded: the images ship inside scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kdci_ray.data.labeled import LabeledData


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Indices (train, test) with ``test_fraction`` of every class held out, fixed by ``seed``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(image_size: int = 16, test_fraction: float = 0.3, seed: int = 0) -> LabeledData:
    if image_size < 8:
        raise ValueError(f"data.image_size must be >= 8 for digits, got {image_size}")
    from sklearn.datasets import load_digits as sklearn_digits  # here: a second of imports

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = stratified_split(bunch.target, test_fraction, seed)
    return LabeledData(
        name="digits",
        x_train=images[train], y_train=labels[train],
        x_test=images[test], y_test=labels[test],
        num_classes=10, mean=(0.306,), std=(0.319,),  # standardised, as MNIST in DAFL
    )
