"""Refuse, before any trial starts, a trial that the cluster can never place.

A trial's Ray Train worker group is ``run.workers`` bundles of ``{CPU: run.cpus_per_worker}``
(plus ``{GPU: run.gpus_per_worker}`` with ``run.use_gpu``); a bundle must fit on one node. The
nodes counted are the cluster's alive nodes and, on an autoscaling cluster started with
``ray up``, every node the autoscaler may still add (its ``available_node_types`` x
``max_workers``, read from the config ``ray up`` leaves on the head node). Without this check an
unplaceable worker group waits forever (Ray Train retries placement).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdci_ray.config import ConfigError, RunConfig

AUTOSCALER_CONFIG_ENV = "KDCI_RAY_AUTOSCALER_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the config on the head


@dataclass(frozen=True)
class NodeShape:
    """Resources of one node and how many such nodes the cluster has or may add."""

    name: str
    resources: dict[str, float]
    count: int


def worker_bundle(run: RunConfig) -> dict[str, float]:
    bundle = {"CPU": float(run.cpus_per_worker)}
    if run.use_gpu:
        bundle["GPU"] = float(run.gpus_per_worker)
    return {k: v for k, v in bundle.items() if v > 0}


def _fits(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many ``bundle`` fit on ``node``."""
    if not bundle:
        return math.inf  # type: ignore[return-value]
    return min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items())


def placeable_workers(bundle: dict[str, float], shapes: list[NodeShape]) -> int:
    return sum(_fits(s.resources, bundle) * s.count for s in shapes)


def check_placeable(run: RunConfig, shapes: list[NodeShape]) -> None:
    """Raise a ConfigError naming the request, what the cluster has and the fix."""
    bundle = worker_bundle(run)
    can = placeable_workers(bundle, shapes)
    if can >= run.workers:
        return
    have = "; ".join(f"{s.count} x {s.name} {_fmt(s.resources)}" for s in shapes) or "no nodes"
    fixes = ["lower run.workers", "run.cpus_per_worker"]
    if run.use_gpu:
        fixes.append("run.gpus_per_worker (or set run.use_gpu=false)")
    raise ConfigError(
        f"the cluster can never place a trial: it asks for run.workers={run.workers} Train "
        f"workers of {_fmt(bundle)} each (one worker per node slot), but the cluster can hold at "
        f"most {can} (nodes: {have}); {', '.join(fixes)}, or add nodes that fit (cluster.yaml: "
        f"a worker node type's resources and max_workers)"
    )


def _fmt(resources: dict[str, float]) -> str:
    """``{CPU: 4, GPU: 1}`` (the resources a Train worker asks for; others are not shown)."""
    shown = [f"{k}: {int(v) if float(v).is_integer() else v}"
             for k, v in sorted(resources.items()) if k in ("CPU", "GPU")]
    return "{" + ", ".join(shown) + "}"


def alive_shapes(nodes: list[dict[str, Any]]) -> list[NodeShape]:
    """``ray.nodes()`` -> one shape per alive node."""
    return [NodeShape(name=str(n.get("NodeManagerAddress", "node")),
                      resources={k: float(v) for k, v in n.get("Resources", {}).items()}, count=1)
            for n in nodes if n.get("Alive")]


def autoscaler_shapes(path: str | Path | None = None) -> list[NodeShape]:
    """The worker node types an autoscaling cluster may still add (empty when there is no
    autoscaler config: a fixed cluster, or a local Ray)."""
    raw = path or os.environ.get(AUTOSCALER_CONFIG_ENV) or BOOTSTRAP_CONFIG
    file = Path(raw).expanduser()
    if not file.is_file():
        return []
    config = yaml.safe_load(file.read_text()) or {}
    head = config.get("head_node_type")
    shapes = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        count = int(spec.get("max_workers", config.get("max_workers", 0)) or 0)
        if name != head and resources and count > 0:
            shapes.append(NodeShape(name=f"{name} (autoscaled)", resources=resources,
                                    count=count))
    return shapes


def check_cluster(run: RunConfig) -> None:
    """``check_placeable`` against the connected Ray cluster (Ray must be initialised)."""
    import ray

    check_placeable(run, alive_shapes(ray.nodes()) + autoscaler_shapes())
