"""The open-world pool a config's ``pool.source`` names, built in the teacher's input format.

Sources: ``embedded`` (random crops of the photographs shipped with scikit-learn,
``kdci_ray.data.photos``), ``folder`` (image files, ``kdci_ray.data.folder``), ``npz``
(downsampled-ImageNet batches, ``kdci_ray.data.npz``); ``transform: edges`` wraps any of them
(``kdci_ray.data.edges``). Each is an ``OpenWorldPool`` (``kdci_ray.data.pool_format``).
"""

from __future__ import annotations

from kdci_ray.data.pool_format import OpenWorldPool

SOURCES = ("embedded", "folder", "npz")
TRANSFORMS = ("none", "edges")


def build_open_world(source: str, path: str, size: int, channels: int, image_size: int,
                     seed: int = 0, min_scale: float = 0.1,
                     transform: str = "none") -> OpenWorldPool:
    """The open-world pool named by ``pool.source``, in the teacher's format.

    ``embedded``: ``size`` random crops of scikit-learn's sample photographs (``seed``,
    ``min_scale`` set the crops). ``folder``: the image files under ``path``; ``npz``: the
    downsampled-ImageNet batches in ``path``. For the real sources ``size`` is an upper bound.
    ``transform``: ``none`` or ``edges`` (the pool's edge maps, see ``kdci_ray.data.edges``).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown open-world transform {transform!r}: choose one of "
                         f"{', '.join(TRANSFORMS)}")
    pool = _build_source(source, path, size, channels, image_size, seed, min_scale)
    if transform == "edges":
        from kdci_ray.data.edges import EdgePool

        return EdgePool(pool)
    return pool


def _build_source(source: str, path: str, size: int, channels: int, image_size: int,
                  seed: int, min_scale: float) -> OpenWorldPool:
    if source == "embedded":
        from kdci_ray.data.photos import EmbeddedPhotoPool

        return EmbeddedPhotoPool(size, channels, image_size, seed=seed, min_scale=min_scale)
    if source not in SOURCES:
        raise ValueError(f"unknown open-world source {source!r}: choose one of "
                         f"{', '.join(SOURCES)}")
    if not str(path or "").strip():
        raise FileNotFoundError(f"the {source!r} open-world pool reads local files: set pool.path "
                                f"to the {'image folder' if source == 'folder' else 'npz batch'} "
                                f"directory (nothing is downloaded)")
    if source == "folder":
        from kdci_ray.data.folder import ImageFolderPool

        return ImageFolderPool(path, channels, image_size, size=size)
    from kdci_ray.data.npz import NpzBatchPool

    return NpzBatchPool(path, channels, image_size, size=size)
