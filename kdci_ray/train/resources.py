"""What one Train worker (or pool scorer) asks the cluster for: ``run.cpus_per_worker``,
``run.gpus_per_worker`` with ``run.use_gpu``, and ``run.worker_resources`` ("name=amount,...").

Shared by the Ray Train adapter (``ray_train``, ``tune_trial``), the distillation config's value
checks and the engine's placement check, so all three read a request the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdci_ray.errors import ConfigError

if TYPE_CHECKING:
    from kdci_ray.experiments.dfkd import RunConfig

RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def parse_resources(spec: str) -> dict[str, float]:
    """``run.worker_resources`` ("name=amount,...") as a dict; errors name the bad entry."""
    out: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, sep, amount = entry.partition("=")
        name = name.strip()
        try:
            value = float(amount) if sep else -1.0
        except ValueError:
            value = -1.0
        if not name or value <= 0:
            raise ConfigError(
                f"config key 'run.worker_resources' takes 'name=amount' entries separated by "
                f"commas with amounts > 0 (e.g. 'accel=1'), got {entry!r}"
            )
        if name in RESERVED_RESOURCES:
            raise ConfigError(
                f"config key 'run.worker_resources' must not name {name!r}: use "
                f"run.cpus_per_worker, run.use_gpu / run.gpus_per_worker for those"
            )
        out[name] = value
    return out


def worker_bundle(run: RunConfig) -> dict[str, float]:
    """One Train worker's (or pool scorer's) resource request: CPU, GPU, custom resources."""
    bundle = {"CPU": float(run.cpus_per_worker)}
    if run.use_gpu:
        bundle["GPU"] = float(run.gpus_per_worker)
    bundle.update(parse_resources(run.worker_resources))
    return {k: v for k, v in bundle.items() if v > 0}
