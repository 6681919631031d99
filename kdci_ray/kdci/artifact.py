"""Confounder dictionaries as artifacts: saved once with their metadata, shared by key.

A build-once dictionary (sampling-based methods: DFND, MosaicKD) depends only on the images it
clusters (the selected pool images the ranks' shares cover), the model that scored them and the
clustering settings, not on the trial, the world size that covered them, nor the machine that
builds it (the k-means backend). Its key is the SHA-1 of exactly those (``DictionarySpec``);
every trial of a sweep that asks for the same spec loads the same file, and changing the pool,
the selection, the teacher/source model or a clustering setting gives a new key (the old file is
simply not used again; so are entries of older versions whose spec still named the backend).

On disk: ``<dir>/<key>.pt`` (``{"prototypes", "proportions"}`` tensors) and ``<key>.json`` (the
metadata: source, K, backend, algorithm, PCA dims, inertia, N, the data and model hashes, the
versions of the packages that change it (``DICTIONARY_PACKAGES``), time), both written
atomically; the ``.pt`` appearing last marks the entry complete. An entry built with other
package versions is not loaded (rebuilt and replaced, saying so).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kdci_ray.atomic import atomic_write
from kdci_ray.environment import (
    DICTIONARY_PACKAGES,
    note_cache_use,
    say,
    version_difference,
    versions,
)
from kdci_ray.kdci.dictionary import ConfounderDictionary


@dataclass(frozen=True)
class DictionarySpec:
    """Everything a build-once dictionary depends on: the data, the model, the clustering
    settings. Not the k-means backend, which says where the clustering runs, not what it
    clusters or how: one built by cuML on a GPU worker is found by a GPU-less head (where
    ``auto`` means sklearn) and the other way round. The backend that ran is in the metadata."""

    # identity of the substitution images: pool fingerprint, normalisation and the selected
    # indices the ranks' equal shares cover (``OpenWorldSubset.data_key``; not the world size)
    data_key: str
    model_key: str  # identity of the model whose logits are clustered (weights + normalisation)
    source: str  # teacher | model | random
    k: int
    pca_dim: int
    algorithm: str  # the kdci.algorithm setting (auto | full | minibatch)
    n_init: int
    seed: int
    space: str = "logits"  # the features clustered: logits | log_probs

    @property
    def key(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:20]


class DictionaryStore:
    """A directory of dictionary artifacts (default ``$KDCI_RAY_CACHE/dictionaries``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def paths(self, spec: DictionarySpec) -> tuple[Path, Path]:
        return self.root / f"{spec.key}.pt", self.root / f"{spec.key}.json"

    def load(self, spec: DictionarySpec) -> ConfounderDictionary | None:
        """The stored dictionary of ``spec``, or None if absent or unreadable (then rebuilt)."""
        pt, meta_path = self.paths(spec)
        if not (pt.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            tensors = torch.load(pt, map_location="cpu", weights_only=True)
            protos, props = tensors["prototypes"], tensors["proportions"]
        except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError):
            return None  # unreadable or damaged: rebuilt and overwritten
        if meta.get("spec") != asdict(spec) or protos.shape[0] != spec.k:
            return None
        stale = version_difference(meta.get("versions"), versions(DICTIONARY_PACKAGES))
        if stale:
            say(f"KDCI dictionary {pt} was built with other package versions ({stale}); "
                f"building it again")
            return None
        note_cache_use("dictionary", pt, "hit", spec.key)
        return ConfounderDictionary(prototypes=protos.float(), proportions=props.float(),
                                    inertia=float(meta["inertia"]), backend=meta["backend"],
                                    num_samples=int(meta["num_samples"]),
                                    algorithm=meta["algorithm"], pca_dim=int(meta["pca_dim"]))

    def save(self, spec: DictionarySpec, dictionary: ConfounderDictionary,
             extra: dict[str, Any] | None = None) -> Path:
        pt, meta_path = self.paths(spec)
        meta = {"key": spec.key, "spec": asdict(spec), "k": dictionary.k,
                "backend": dictionary.backend, "algorithm": dictionary.algorithm,
                "pca_dim": dictionary.pca_dim, "inertia": dictionary.inertia,
                "num_samples": dictionary.num_samples,
                "feature_dim": int(dictionary.prototypes.shape[1]),
                "versions": versions(DICTIONARY_PACKAGES),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}
        buf = io.BytesIO()
        torch.save({"prototypes": dictionary.prototypes.cpu(),
                    "proportions": dictionary.proportions.cpu()}, buf)
        status = "rebuilt" if pt.is_file() else "built"
        atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta, indent=2).encode()))
        atomic_write(pt, lambda fh: fh.write(buf.getvalue()))
        note_cache_use("dictionary", pt, status, spec.key)
        return pt

    def metadata(self, spec: DictionarySpec) -> dict[str, Any]:
        """The saved ``<key>.json`` record of ``spec`` (raises FileNotFoundError if absent)."""
        return json.loads(self.paths(spec)[1].read_text())

    def entries(self) -> list[dict[str, Any]]:
        """The metadata of every complete artifact in the store."""
        out = []
        for meta_path in sorted(self.root.glob("*.json")):
            if meta_path.with_suffix(".pt").is_file():
                try:
                    out.append(json.loads(meta_path.read_text()))
                except (OSError, ValueError):
                    continue
        return out
