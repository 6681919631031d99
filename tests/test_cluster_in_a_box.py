"""The GPU-cluster path on one machine: Ray's fake multi-node autoscaler (``tests/cluster_box``).

What a user of ``cluster.yaml`` does, through the same entry points: a head that advertises no
CPU and no GPU, one worker node type scaled from ``min_workers: 0`` that declares a GPU-like
resource (``accel``; a real ``GPU`` would make torch look for CUDA), ``RAY_ADDRESS`` naming the
cluster and ``kdci-ray sweep`` run on the head. The sweep's dictionary pre-build and its trials
must wait for the autoscaler's nodes, a worker node is killed mid-trial and that trial must
still finish (``failures`` 1), and the box must end with nothing of it left running.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cluster_box import ClusterInABox

ROUNDS = 20
WORKER_TYPE = {"accel_node": {"resources": {"CPU": 1, "accel": 1,
                                            "object_store_memory": 150_000_000},
                              "node_config": {}, "min_workers": 0, "max_workers": 3}}


def _persisted_checkpoints(trial: Path) -> int:
    """Checkpoints Ray Train has persisted for the trial (each holds the student and the rank's
    resumable state; ``metrics.jsonl`` is written before its checkpoint is)."""
    return sum(1 for c in trial.glob("train/checkpoint_*")
               if (c / "student.pt").is_file() and (c / "train_state_rank0.pt").is_file())


def _reports(trial: Path) -> list[dict]:
    path = trial / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def box(tmp_path_factory):
    root = tmp_path_factory.mktemp("box", numbered=True)
    cluster = ClusterInABox(Path("/tmp") / f"kb{root.name[-6:]}", WORKER_TYPE, max_workers=3,
                            env={"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                                 "RAY_AUTH_MODE": "disabled"})
    cluster.start()
    try:
        yield cluster
    finally:
        left = cluster.stop()
        assert left == [], f"processes of the box still running after stop: {left}"


def test_a_sweep_on_an_autoscaling_cluster_waits_for_its_nodes_and_survives_a_lost_node(
        box, tiny_settings, tmp_path) -> None:
    assert box.worker_raylets() == []  # scaled to zero: the head alone
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        **tiny_settings, "method": "dfnd", "kdci.enabled": True, "kdci.k": 4,
        "pool.seed": 2718,  # a pool no other test uses: its dictionary is built here
        "train.rounds": ROUNDS, "train.kd_steps": 2, "train.eval_every": 1,
        "run.worker_resources": "accel=1", "run.start_timeout_s": 240,
        "search": {"seed": [0, 1]}}, sort_keys=False))
    out = tmp_path / "sweep"
    env = box.client_env()
    env["KDCI_RAY_AUTOSCALER_CONFIG"] = str(box.config_path)  # `ray up` leaves it on the head
    env["KDCI_RAY_WAIT_LOG_S"] = "2"
    log = tmp_path / "sweep.log"
    start = time.monotonic()
    driver = subprocess.Popen([sys.executable, "-m", "kdci_ray.cli", "sweep", str(config),
                               "--output", str(out)], stdout=open(log, "w"),
                              stderr=subprocess.STDOUT, env=env)
    seen_nodes: set[int] = set()
    killed, killed_trial = None, None
    try:
        while driver.poll() is None and time.monotonic() - start < 300:
            seen_nodes.update(box.worker_raylets())
            trials = [c.parent for c in out.glob("*/config.yaml")] if out.is_dir() else []
            for trial in trials if killed is None else []:
                done = max([r["round"] for r in _reports(trial)], default=0)
                # a checkpoint persisted, far to go: kill the node of this trial's Train worker
                # (rank 0 holds the trial's TensorBoard file open)
                ready = done < ROUNDS - 6 and _persisted_checkpoints(trial) >= 1
                raylet = box.raylet_of_process("RayTrainWorker", holding=trial) \
                    if ready else None
                if raylet is not None:
                    killed = box.kill_node(raylet)
                    killed_trial = trial.name
                    break
            time.sleep(0.2)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = log.read_text()
    assert driver.wait() == 0, text[-4000:]

    # the head had no CPU: every node that did work was started by the autoscaler, from zero
    assert len(seen_nodes) >= 2, seen_nodes
    # the dictionary pre-build asked for the trials' resources and waited for the nodes
    assert "pool scoring: 0 of 3 workers of {CPU: 1, accel: 1} placed after" in text, text[-3000:]
    assert "waiting for the cluster:" in text
    assert "dictionary " in text and " built in " in text
    # a worker node was killed mid-trial, and that trial finished from its checkpoint
    assert killed, "no Train worker node was found to kill"
    rows = pd.read_csv(out / "summary.csv")
    assert len(rows) == 2 and rows["finished"].all(), rows.to_string()
    assert sorted(rows["failures"]) == [0, 1], rows.to_string()
    hit = rows[rows["failures"] == 1].iloc[0]
    assert hit["trial"] == killed_trial
    assert hit["resumes"] == 1 and hit["rounds_done"] == ROUNDS
    assert 0 < hit["acc"] <= 1 and 0 < hit["acc_kdci"] <= 1
    trial = out / hit["trial"]
    (failure,) = [json.loads(x) for x in (trial / "failures.jsonl").read_text().splitlines()]
    assert failure["ranks"] == [0]  # recorded by the Train controller: the worker had no say
    (resume,) = [json.loads(x) for x in (trial / "resumes.jsonl").read_text().splitlines()]
    assert resume["round"] >= 1  # from a checkpoint, not from scratch
    assert not (out / rows[rows["failures"] == 0].iloc[0]["trial"] / "failures.jsonl").exists()
