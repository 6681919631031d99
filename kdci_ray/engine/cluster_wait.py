"""Waiting for a cluster's nodes, visibly: what is pending and what the autoscaler is doing.

On a cluster that scales from zero, a trial's Ray Train worker group (and the dictionary
pre-build's pool scorers) first wait for the autoscaler to boot nodes, which takes minutes for a
GPU node (boot, image pull, install). That wait is normal; it must be visible and bounded
(``run.start_timeout_s``). :func:`pending_line` turns Ray's cluster status (autoscaler v2, the
``ray up`` default in Ray 2.60: ``ray.autoscaler.v2.sdk.get_cluster_status``) into one line such
as ``waiting for 4 x {CPU: 1, GPU: 1}: 2 launching (gpu_spot), 1 failed launch (gpu_spot:
InsufficientInstanceCapacity ...)``; :class:`ClusterWaitWatcher` logs it while something waits.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

INTERVAL_S = float(os.environ.get("KDCI_RAY_WAIT_LOG_S", 15))  # how often to look and log
REPEAT_S = 60.0  # an unchanged line is repeated this often


def _fmt_bundle(bundle: dict[str, float]) -> str:
    shown = [f"{k}: {int(v) if float(v).is_integer() else v}" for k, v in sorted(bundle.items())
             if v > 0 and not k.startswith(("node:", "memory", "object_store_memory", "bundle_"))
             and "_group_" not in k]
    return "{" + ", ".join(shown) + "}"


def pending_line(status: Any) -> str | None:
    """One line about what waits for resources and what the autoscaler does about it, or None
    when nothing waits. ``status`` is a ``ray.autoscaler.v2.schema.ClusterStatus``."""
    demand: Counter[str] = Counter()
    summary = status.resource_demands
    for group in (summary.placement_group_demand + summary.ray_task_actor_demand
                  + summary.cluster_constraint_demand):
        for request in group.bundles_by_count:
            shown = _fmt_bundle(request.bundle)
            if shown != "{}":
                demand[shown] += request.count
    if not demand:
        return None
    parts = [", ".join(f"{n} x {b}" for b, n in sorted(demand.items()))]
    launching: Counter[str] = Counter()
    for launch in status.pending_launches:
        launching[launch.ray_node_type_name or launch.instance_type_name] += launch.count
    for node in status.pending_nodes:
        launching[node.ray_node_type_name or node.instance_type_name] += 1
    if launching:
        parts.append(f"{sum(launching.values())} node(s) launching ("
                     + ", ".join(f"{n} {t}" for t, n in sorted(launching.items())) + ")")
    failed = [f"{f.ray_node_type_name or f.instance_type_name}: {(f.details or '').strip()[:120]}"
              for f in status.failed_launches]
    if failed:
        parts.append(f"{len(failed)} failed launch(es) ({'; '.join(failed[-2:])})")
    idle = len(status.idle_nodes)
    if idle:
        parts.append(f"{idle} idle node(s) being assigned")
    if not launching and not failed and not idle:
        parts.append("no node launching (the autoscaler may be at max_workers, or there is none)")
    return "waiting for the cluster: " + "; ".join(parts)


def cluster_status() -> Any | None:
    """The connected cluster's status, or None where it cannot be read."""
    try:
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        return get_cluster_status(ray.get_runtime_context().gcs_address, timeout=10)
    except Exception:  # noqa: BLE001 - no status is no line, never a failed sweep
        return None


class ClusterWaitWatcher:
    """A daemon thread that logs :func:`pending_line` every ``interval`` seconds while work
    waits for nodes (a changed line at once, an unchanged one every ``REPEAT_S``)."""

    def __init__(self, log: Callable[[str], None], interval: float = INTERVAL_S,
                 status: Callable[[], Any | None] = cluster_status) -> None:
        self.log, self.interval, self.status = log, interval, status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-wait", daemon=True)
        self.lines: list[str] = []

    def _run(self) -> None:
        last, last_time = None, 0.0
        while not self._stop.wait(self.interval):
            status = self.status()
            line = pending_line(status) if status is not None else None
            now = time.monotonic()
            if line and (line != last or now - last_time >= REPEAT_S):
                self.lines.append(line)
                self.log(line)
                last, last_time = line, now
            elif not line:
                last = None

    def __enter__(self) -> ClusterWaitWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextmanager
def watch_cluster(log=print) -> Iterator[None]:
    """On a cluster (``RAY_ADDRESS``), log what waits for nodes and what the autoscaler is doing
    while the body runs (``engine.cluster_wait``); elsewhere nothing."""
    if not os.environ.get("RAY_ADDRESS"):
        yield
        return
    with ClusterWaitWatcher(log):
        yield
