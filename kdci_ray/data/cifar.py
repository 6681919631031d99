"""CIFAR-10/100 from their python pickle format at a local path (never downloaded)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from kdci_ray.data.labeled import LabeledData

LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _find_dir(name: str, root: Path) -> Path:
    subdir, train_files, test_files, _, _ = LAYOUT[name]
    expected = ", ".join(train_files + test_files)
    for candidate in (root / subdir, root):
        if all((candidate / f).is_file() for f in train_files + test_files):
            return candidate
    raise FileNotFoundError(
        f"{name} not found at {root}: expected the python pickle files ({expected}) in "
        f"{root / subdir} or directly in {root}, as unpacked from the official "
        f"'{subdir}' archive. Set data.root to that directory; nothing is downloaded."
    )


def _read(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    expected = f"needs keys b'data' (N x 3072 uint8) and {label_key!r} (N labels)"
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        raw = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, AttributeError,
            OverflowError, IndexError) as exc:
        raise ValueError(f"{path} is not a CIFAR python pickle batch ({expected}): {exc}") from None
    if raw.ndim != 2 or raw.shape[1] != 3072 or labels.shape != (raw.shape[0],):
        raise ValueError(
            f"{path} is not a CIFAR python pickle batch ({expected}): got data "
            f"{raw.shape} and {labels.shape[0] if labels.ndim else 0} labels"
        )
    return raw.reshape(-1, 3, 32, 32), labels


def load_cifar(name: str, root: str | Path) -> LabeledData:
    if name not in LAYOUT:
        raise ValueError(f"unknown CIFAR variant {name!r} (cifar10 or cifar100)")
    if not str(root):
        raise FileNotFoundError(f"{name} needs data.root: the directory holding its python pickles")
    directory = _find_dir(name, Path(root).expanduser().resolve())
    _, train_files, test_files, label_key, num_classes = LAYOUT[name]
    parts = {
        split: [_read(directory / f, label_key) for f in files]
        for split, files in (("train", train_files), ("test", test_files))
    }
    x_tr, y_tr = (np.concatenate(p) for p in zip(*parts["train"], strict=True))
    x_te, y_te = (np.concatenate(p) for p in zip(*parts["test"], strict=True))
    for split, files, labels in (("train", train_files, y_tr), ("test", test_files, y_te)):
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise ValueError(
                f"{name} {split} labels in {directory} ({', '.join(files)}) must be 0.."
                f"{num_classes - 1}, found {int(bad.sum())} outside (e.g. {int(labels[bad][0])}); "
                f"is data.name right ({name} has {num_classes} classes) and the file unmodified?"
            )
    mean, std = MEAN_STD[name]
    return LabeledData(
        name=name,
        x_train=torch.from_numpy(x_tr), y_train=torch.from_numpy(y_tr),
        x_test=torch.from_numpy(x_te), y_test=torch.from_numpy(y_te),
        num_classes=num_classes, mean=mean, std=std,
    )
