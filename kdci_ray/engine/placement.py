"""Refuse, before any trial starts, a trial that the cluster can never place.

A trial's Ray Train worker group is ``run.workers`` bundles of ``{CPU: run.cpus_per_worker}``
(plus ``{GPU: run.gpus_per_worker}`` with ``run.use_gpu``: ``train.resources.worker_bundle``); a
bundle must fit on one node. The nodes counted are the cluster's alive nodes and, on an
autoscaling cluster started with ``ray up``, every node the autoscaler may still add (its
``available_node_types`` x ``max_workers``, read from the config ``ray up`` leaves on the head
node; the config's global ``max_workers`` caps the nodes of all types together, as the
autoscaler does). Without this check
an unplaceable worker group would wait until ``run.start_timeout_s`` for nodes that never come.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdci_ray.errors import ConfigError
from kdci_ray.train.resources import worker_bundle

if TYPE_CHECKING:
    from kdci_ray.experiments.dfkd import RunConfig

AUTOSCALER_CONFIG_ENV = "KDCI_RAY_AUTOSCALER_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the config on the head


@dataclass(frozen=True)
class NodeShape:
    """Resources of one node and how many such nodes the cluster has or may add."""

    name: str
    resources: dict[str, float]
    count: int
    autoscaled: bool = False  # a node type the autoscaler may still add (count = its maximum)


def _fits(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many ``bundle`` fit on ``node``."""
    if not bundle:
        return math.inf  # type: ignore[return-value]
    return min(math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items())


def placeable_workers(bundle: dict[str, float], shapes: list[NodeShape],
                      max_added: int | None = None) -> int:
    """Workers of ``bundle`` the alive nodes plus the autoscaled ones can hold; at most
    ``max_added`` autoscaled nodes in all (the cluster config's global ``max_workers``), the
    roomiest types first."""
    alive = sum(_fits(s.resources, bundle) * s.count for s in shapes if not s.autoscaled)
    budget = math.inf if max_added is None else max_added
    added = 0
    for s in sorted((s for s in shapes if s.autoscaled),
                    key=lambda s: -_fits(s.resources, bundle)):
        nodes = min(s.count, budget)
        budget -= nodes
        added += _fits(s.resources, bundle) * nodes
    return alive + added


def check_placeable(run: RunConfig, shapes: list[NodeShape],
                    max_added: int | None = None) -> None:
    """Raise a ConfigError naming the request, what the cluster has and the fix."""
    bundle = worker_bundle(run)
    can = placeable_workers(bundle, shapes, max_added)
    if can >= run.workers:
        return
    have = "; ".join(f"{s.count} x {s.name} {_fmt(s.resources, bundle)}"
                     for s in shapes) or "no nodes"
    if max_added is not None and any(s.autoscaled for s in shapes):
        have += f"; at most {max_added} autoscaled nodes in all (max_workers)"
    fixes = ["lower run.workers", "run.cpus_per_worker"]
    if run.use_gpu:
        fixes.append("run.gpus_per_worker (or set run.use_gpu=false)")
    if run.worker_resources:
        fixes.append("run.worker_resources")
    raise ConfigError(
        f"the cluster can never place a trial: it asks for run.workers={run.workers} Train "
        f"workers of {_fmt(bundle, bundle)} each (one worker per node slot), but the cluster can "
        f"hold at most {can} (nodes: {have}); {', '.join(fixes)}, or add nodes that fit "
        f"(cluster.yaml: a worker node type's resources and max_workers)"
    )


def _fmt(resources: dict[str, float], asked: dict[str, float] | None = None) -> str:
    """``{CPU: 4, GPU: 1}``: CPU, GPU and the resources ``asked`` for (others are not shown)."""
    names = {"CPU", "GPU"} | set(asked or {})
    shown = [f"{k}: {int(v) if float(v).is_integer() else v}"
             for k, v in sorted(resources.items()) if k in names]
    return "{" + ", ".join(shown) + "}"


def alive_shapes(nodes: list[dict[str, Any]]) -> list[NodeShape]:
    """``ray.nodes()`` -> one shape per alive node."""
    return [NodeShape(name=str(n.get("NodeManagerAddress", "node")),
                      resources={k: float(v) for k, v in n.get("Resources", {}).items()}, count=1)
            for n in nodes if n.get("Alive")]


def _autoscaler_config(path: str | Path | None = None) -> dict[str, Any]:
    """The autoscaler config ``ray up`` left on the head ({} when there is none: a fixed
    cluster, or a local Ray)."""
    raw = path or os.environ.get(AUTOSCALER_CONFIG_ENV) or BOOTSTRAP_CONFIG
    file = Path(raw).expanduser()
    return (yaml.safe_load(file.read_text()) or {}) if file.is_file() else {}


def autoscaler_shapes(path: str | Path | None = None) -> list[NodeShape]:
    """The worker node types an autoscaling cluster may still add, each at its own
    ``max_workers`` (a type without one: the global ``max_workers``)."""
    config = _autoscaler_config(path)
    head = config.get("head_node_type")
    shapes = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        count = int(spec.get("max_workers", config.get("max_workers", 0)) or 0)
        if name != head and resources and count > 0:
            shapes.append(NodeShape(name=f"{name} (autoscaled)", resources=resources,
                                    count=count, autoscaled=True))
    return shapes


def autoscaler_max_workers(path: str | Path | None = None) -> int | None:
    """The global ``max_workers`` (worker nodes of all types together), None without one."""
    value = _autoscaler_config(path).get("max_workers")
    return None if value is None else int(value)


def cluster_capacity(run: RunConfig) -> int:
    """Workers of ``run``'s bundle the connected cluster can ever hold (Ray initialised)."""
    import ray

    shapes = alive_shapes(ray.nodes()) + autoscaler_shapes()
    return placeable_workers(worker_bundle(run), shapes, autoscaler_max_workers())


def check_cluster(run: RunConfig) -> None:
    """``check_placeable`` against the connected Ray cluster (Ray must be initialised)."""
    import ray

    check_placeable(run, alive_shapes(ray.nodes()) + autoscaler_shapes(),
                    autoscaler_max_workers())
