"""A Ray cluster in a box: Ray's own fake multi-node autoscaler on this machine.

The head is started with ``ray start --head --autoscaling-config`` and Ray's fake multi-node
provider (``FakeMultiNodeProvider``, ``RAY_FAKE_CLUSTER=1``), autoscaler v2 as ``ray up`` uses in
Ray 2.60. The autoscaler starts worker nodes as local processes with the resources their node type
declares, from ``min_workers: 0``, when work asks for them, exactly as it would boot cloud VMs.
Ray's ``AutoscalingCluster`` helper does the same but calls ``ray stop --force`` (which would
end every Ray on the machine); this box starts and ends only its own processes: each carries
a tag in its environment (inherited by every process Ray starts from them), and :meth:`stop`
kills the tagged PIDs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"  # Ray's own
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    import ray._private.services as services

    return services.get_node_ip_address()


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _holds(pid: int, directory: Path) -> bool:
    """Whether process ``pid`` has a file under ``directory`` open."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    prefix = str(directory.resolve()) + os.sep
    for fd in fds:
        try:
            if os.readlink(fd).startswith(prefix):
                return True
        except OSError:
            continue
    return False


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class ClusterInABox:
    """``worker_types``: the autoscaler's worker node types (``resources``, ``min_workers``,
    ``max_workers``); ``max_workers``: the global cap. The head advertises no CPU and no GPU,
    like ``cluster.yaml``'s."""

    def __init__(self, root: Path, worker_types: dict[str, dict[str, Any]],
                 max_workers: int, env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.tag = f"KDCI_RAY_BOX={uuid.uuid4().hex}"
        self.port = _free_port()
        self.ip = node_ip()
        self.address = f"{self.ip}:{self.port}"
        self.config_path = self.root / "autoscaler.json"
        self.config = {
            "cluster_name": "kdci-box", "max_workers": max_workers,
            # Ray's fake provider, loaded as an "external" one: the wheel lacks the defaults file
            # (fake_multi_node/example.yaml) that type "fake_multinode" reads
            "provider": {"type": "external", "module": FAKE_PROVIDER, "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True,
                         "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID,
                         "gcs_address": self.address},
            "available_node_types": {
                **worker_types,
                "ray.head.default": {"resources": {"CPU": 0, "GPU": 0}, "node_config": {},
                                     "max_workers": 0}},
            "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
            "idle_timeout_minutes": 5, "docker": {}, "initialization_commands": [],
            "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
            "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [],
        }
        key, value = self.tag.split("=")
        self.env = {**os.environ, **(env or {}), key: value, "RAY_FAKE_CLUSTER": "1",
                    "RAY_enable_autoscaler_v2": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                    "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1",  # on, as on a real cluster
                    # Ray's own helpers inside the cluster (Train's placement-group cleaner uses
                    # the State API) find "the" local Ray by address: one machine may run others
                    "RAY_ADDRESS": self.address}

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config))
        ray_cli = Path(sys.executable).with_name("ray")
        subprocess.run(
            [str(ray_cli), "start", "--head", f"--port={self.port}",
             f"--node-ip-address={self.ip}", "--num-cpus=0", "--num-gpus=0",
             f"--autoscaling-config={self.config_path}", "--include-dashboard=false",
             "--object-store-memory=200000000", f"--temp-dir={self.root / 'ray'}",
             "--disable-usage-stats"],
            env=self.env, check=True, capture_output=True, timeout=120)

    def client_env(self) -> dict[str, str]:
        """The environment of a user's process on the head: ``RAY_ADDRESS`` names the cluster,
        and the box's tag makes it one of the box's processes."""
        key, value = self.tag.split("=")
        env = {k: v for k, v in self.env.items() if not k.startswith(
            ("RAY_FAKE", "RAY_enable_autoscaler", "RAY_CLOUD_INSTANCE", "RAY_OVERRIDE_NODE"))}
        return {**env, "RAY_ADDRESS": self.address, key: value}

    def pids(self) -> list[int]:
        """Every live process of the box (the tag in its environment)."""
        tag = self.tag.encode()
        me = os.getpid()
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and int(p.name) != me and tag in _environ(int(p.name)) and _alive(int(p.name))]

    def worker_raylets(self) -> list[int]:
        """PIDs of the raylets of the worker nodes the autoscaler started."""
        return [pid for pid in self.pids() if "raylet" in _cmdline(pid).split(" ")[0]
                and FAKE_HEAD_NODE_ID not in _environ(pid).decode(errors="replace")]

    def raylet_of_process(self, marker: str, holding: Path | None = None) -> int | None:
        """The worker-node raylet whose worker process's command line contains ``marker`` (and,
        with ``holding``, which has a file under that directory open)."""
        for pid in self.pids():
            if marker in _cmdline(pid) and (holding is None or _holds(pid, holding)):
                parent = _ppid(pid)
                if parent in self.worker_raylets():
                    return parent
        return None

    def kill_node(self, raylet: int) -> list[int]:
        """SIGKILL one worker node: its raylet and every process below it."""
        doomed = [raylet]
        for pid in self.pids():
            chain, p = [], pid
            while p > 1 and p not in doomed and len(chain) < 32:
                chain.append(p)
                p = _ppid(p)
            if p in doomed:
                doomed.extend(chain)
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return doomed

    def stop(self, timeout_s: float = 8.0) -> list[int]:
        """End every process of the box (SIGTERM, then SIGKILL); returns those still alive."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout_s / 2
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        return self.pids()
