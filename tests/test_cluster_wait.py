"""Waiting for a cluster's nodes is visible: the pending demand and what the autoscaler does."""

from __future__ import annotations

import time

from ray.autoscaler.v2.schema import (
    ClusterStatus,
    LaunchRequest,
    NodeInfo,
    PlacementGroupResourceDemand,
    RayTaskActorDemand,
    ResourceDemandSummary,
    ResourceRequestByCount,
)

from kdci_ray.engine.cluster_wait import ClusterWaitWatcher, pending_line


def _status(pg: int = 0, actors: int = 0, launching: int = 0, failed: str = "",
            pending_nodes: int = 0, idle: int = 0) -> ClusterStatus:
    bundle = {"CPU": 1.0, "GPU": 1.0, "memory": 1e9}
    demands = ResourceDemandSummary(
        placement_group_demand=[PlacementGroupResourceDemand(
            bundles_by_count=[ResourceRequestByCount(bundle, pg)], details="", pg_id="x",
            strategy="PACK", state="PENDING")] if pg else [],
        ray_task_actor_demand=[RayTaskActorDemand(
            bundles_by_count=[ResourceRequestByCount({"CPU": 1.0, "accel": 1.0}, actors)])]
        if actors else [])
    launches = [LaunchRequest(instance_type_name="g5.2xlarge", ray_node_type_name="gpu_spot",
                              count=launching, state=LaunchRequest.Status.PENDING,
                              request_ts_s=0)] if launching else []
    failures = [LaunchRequest(instance_type_name="g5.2xlarge", ray_node_type_name="gpu_spot",
                              count=1, state=LaunchRequest.Status.FAILED, request_ts_s=0,
                              failed_ts_s=1, details=failed)] if failed else []
    nodes = [NodeInfo(instance_type_name="g5.2xlarge", ray_node_type_name="gpu_spot",
                      instance_id=f"i-{i}", ip_address="", node_status="PENDING")
             for i in range(pending_nodes)]
    idle_nodes = [NodeInfo(instance_type_name="g5.2xlarge", ray_node_type_name="gpu_spot",
                           instance_id=f"i-idle-{i}", ip_address="", node_status="IDLE")
                  for i in range(idle)]
    return ClusterStatus(resource_demands=demands, pending_launches=launches,
                         failed_launches=failures, pending_nodes=nodes, idle_nodes=idle_nodes)


def test_nothing_waits_no_line() -> None:
    assert pending_line(_status()) is None


def test_the_line_names_demand_launches_and_failures() -> None:
    line = pending_line(_status(pg=4, launching=2, pending_nodes=1))
    assert line == ("waiting for the cluster: 4 x {CPU: 1, GPU: 1}; 3 node(s) launching "
                    "(3 gpu_spot)")
    line = pending_line(_status(actors=3, failed="InsufficientInstanceCapacity: no spot"))
    assert "3 x {CPU: 1, accel: 1}" in line
    assert "1 failed launch(es) (gpu_spot: InsufficientInstanceCapacity: no spot)" in line
    line = pending_line(_status(pg=1))
    assert "no node launching (the autoscaler may be at max_workers" in line
    line = pending_line(_status(pg=1, idle=2))
    assert line.endswith("1 x {CPU: 1, GPU: 1}; 2 idle node(s) being assigned")


def test_the_watcher_logs_changes_while_work_waits() -> None:
    states = iter([_status(pg=2, launching=2)] * 3 + [_status(pg=2, pending_nodes=1)]
                  + [_status()] * 100)
    lines: list[str] = []
    with ClusterWaitWatcher(lines.append, interval=0.01, status=lambda: next(states)):
        deadline = time.monotonic() + 5
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
    assert lines == ["waiting for the cluster: 2 x {CPU: 1, GPU: 1}; 2 node(s) launching "
                     "(2 gpu_spot)",
                     "waiting for the cluster: 2 x {CPU: 1, GPU: 1}; 1 node(s) launching "
                     "(1 gpu_spot)"]  # an unchanged line is not repeated at once
