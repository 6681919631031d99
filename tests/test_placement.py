"""The placement check: a trial's worker group against the cluster's nodes and the nodes an
autoscaling cluster may still add (the node types `ray up` leaves on the head)."""

from __future__ import annotations

import pytest
import yaml

from kdci_ray.engine.placement import (
    NodeShape,
    alive_shapes,
    autoscaler_max_workers,
    autoscaler_shapes,
    check_placeable,
    placeable_workers,
    worker_bundle,
)
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.train.ray_train import start_attempts

CPU_HEAD = NodeShape("head", {"CPU": 0.0, "memory": 1e10}, 1)
GPU_NODE = NodeShape("gpu", {"CPU": 8.0, "GPU": 1.0}, 1)


def _run(**over):
    return resolve({f"run.{k}": v for k, v in over.items()}).run


def test_bundles_must_fit_on_one_node_each() -> None:
    bundle = worker_bundle(_run(use_gpu=True, cpus_per_worker=4))
    assert bundle == {"CPU": 4.0, "GPU": 1.0}
    assert placeable_workers(bundle, [CPU_HEAD, GPU_NODE]) == 1  # 8 CPUs but 1 GPU
    # two half-GPU workers share one GPU; 5 CPUs each do not fit twice in 8
    assert placeable_workers({"CPU": 4.0, "GPU": 0.5}, [GPU_NODE]) == 2
    assert placeable_workers({"CPU": 5.0, "GPU": 0.5}, [GPU_NODE]) == 1
    assert placeable_workers({"CPU": 1.0}, [NodeShape("n", {"CPU": 2.0}, 3)]) == 6


def test_an_unplaceable_trial_names_request_cluster_and_fix() -> None:
    check_placeable(_run(workers=1, use_gpu=True), [CPU_HEAD, GPU_NODE])  # fits: no error
    with pytest.raises(ConfigError) as err:
        check_placeable(_run(workers=2, use_gpu=True), [CPU_HEAD, GPU_NODE])
    msg = str(err.value)
    assert "run.workers=2" in msg and "{CPU: 1, GPU: 1}" in msg and "at most 1" in msg
    assert "run.gpus_per_worker" in msg and "max_workers" in msg
    with pytest.raises(ConfigError, match="at most 0"):
        check_placeable(_run(use_gpu=True), [NodeShape("cpu", {"CPU": 64.0}, 4)])


def test_nodes_an_autoscaler_may_add_count(tmp_path, monkeypatch) -> None:
    config = {
        "head_node_type": "head", "max_workers": 20,
        "available_node_types": {
            "head": {"resources": {"CPU": 0, "GPU": 0}, "node_config": {}},
            "gpu_spot": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 3,
                         "node_config": {}},
            "undeclared": {"node_config": {}, "max_workers": 5},  # resources unknown: skipped
        },
    }
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KDCI_RAY_AUTOSCALER_CONFIG", str(path))
    shapes = autoscaler_shapes()
    assert [(s.name, s.count) for s in shapes] == [("gpu_spot (autoscaled)", 3)]
    # a cluster scaled to zero GPU nodes still accepts a 3-GPU trial, not a 4-GPU one
    check_placeable(_run(workers=3, use_gpu=True), [CPU_HEAD, *shapes])
    with pytest.raises(ConfigError, match="3 x gpu_spot"):
        check_placeable(_run(workers=4, use_gpu=True), [CPU_HEAD, *shapes])
    monkeypatch.setenv("KDCI_RAY_AUTOSCALER_CONFIG", str(tmp_path / "absent.yaml"))
    assert autoscaler_shapes() == []


def test_alive_nodes_from_ray_nodes() -> None:
    nodes = [{"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 2.0}},
             {"Alive": False, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 64.0}}]
    assert alive_shapes(nodes) == [NodeShape("10.0.0.1", {"CPU": 2.0}, 1)]


def test_custom_worker_resources_join_the_bundle_and_the_message() -> None:
    run = _run(worker_resources="accel=1, a100=0.5")
    assert worker_bundle(run) == {"CPU": 1.0, "accel": 1.0, "a100": 0.5}
    accel = NodeShape("accel_node (autoscaled)", {"CPU": 4.0, "accel": 1.0}, 2, autoscaled=True)
    assert placeable_workers({"CPU": 1.0, "accel": 1.0}, [CPU_HEAD, accel]) == 2
    with pytest.raises(ConfigError) as err:  # no node has 'a100'
        check_placeable(run, [CPU_HEAD, accel])
    assert "a100: 0.5" in str(err.value) and "accel: 1" in str(err.value)


def test_the_global_max_workers_caps_every_node_type_together(tmp_path, monkeypatch) -> None:
    config = {
        "head_node_type": "head", "max_workers": 4,
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "node_config": {}},
            "gpu_spot": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 3, "node_config": {}},
            "gpu_ondemand": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 3,
                             "node_config": {}},
        },
    }
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KDCI_RAY_AUTOSCALER_CONFIG", str(path))
    shapes, cap = autoscaler_shapes(), autoscaler_max_workers()
    assert cap == 4 and sum(s.count for s in shapes) == 6
    bundle = worker_bundle(_run(use_gpu=True))
    assert placeable_workers(bundle, shapes) == 6  # per-type maxima alone
    assert placeable_workers(bundle, shapes, cap) == 4  # what the autoscaler will really start
    # an alive node is not an added one: it counts on top of the cap
    assert placeable_workers(bundle, [GPU_NODE, *shapes], cap) == 5
    check_placeable(_run(workers=4, use_gpu=True), shapes, cap)
    with pytest.raises(ConfigError, match="at most 4 .*at most 4 autoscaled nodes in all"):
        check_placeable(_run(workers=5, use_gpu=True), shapes, cap)


@pytest.mark.parametrize(("timeout_s", "per_attempt", "attempts"),
                         [(1800, None, 30), (240, "60", 4), (30, "60", 1), (100, "25", 4)])
def test_a_worker_group_may_wait_about_start_timeout_for_its_nodes(
        monkeypatch, timeout_s: float, per_attempt: str | None, attempts: int) -> None:
    if per_attempt is None:
        monkeypatch.delenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", raising=False)
    else:
        monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", per_attempt)
    assert start_attempts(timeout_s) == attempts
