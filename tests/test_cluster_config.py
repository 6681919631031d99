"""cluster.yaml (AWS) and cluster_onprem.yaml (Ray's `local` provider) pass Ray's own validation.

Offline: the same steps `ray up` runs before it touches a cloud (Ray 2.60,
``ray.autoscaler._private.commands._bootstrap_config``):

- ``ray.autoscaler._private.util.prepare_config``: merges the provider's ``defaults.yaml``
  (``fillout_defaults``), folds ``setup_commands`` into the head/worker lists, checks the docker
  block, fills per-node-type min/max workers; for the ``local`` provider, ``prepare_local``
  builds its single node type from ``head_ip``/``worker_ips``.
- ``ray.autoscaler._private.util.validate_config``: ``jsonschema`` against
  ``ray/autoscaler/ray-schema.json`` plus Ray's cross-field checks (head type, min/max workers).

Skipped for AWS: the provider's ``fillout_available_node_types_resources`` and
``bootstrap_config`` (they call EC2/IAM); cluster.yaml declares every node type's resources, so
validation does not depend on them. For the ``local`` provider the whole of ``_bootstrap_config``
runs (nothing there leaves this machine). The head's v2 autoscaler reads the config through
``ray.autoscaler.v2.instance_manager.config.AutoscalingConfig``, used here for the node types.
Any attempt to open a network connection fails the test.
"""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster_onprem.yaml"
MOUNT = "/mnt/kdci"
RAY_VERSION = "2.60.0"
TORCH_VERSION = "2.13.0"
INSTALL = re.compile(r"pip install .*-c constraints\.txt .*-e '\.\[gpu\]'")
BASE_INSTALL = re.compile(r"pip install .*-c constraints\.txt .*-e (\.|'\.\[gpu\]') ")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Validation must never reach a cloud: any outgoing connection fails the test."""

    def refuse(*args: Any, **kwargs: Any):
        raise AssertionError(f"cluster config validation tried to open a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh)


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config before it contacts the provider; returns the prepared one."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def start_commands(config: dict[str, Any], role: str) -> list[str]:
    return [c for c in config[f"{role}_start_ray_commands"] if "ray start" in c]


# -- Ray's validation accepts both files ------------------------------------------------------


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=["aws", "onprem"])
def test_ray_validation_accepts(path):
    prepared = ray_validate(load(path))
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_onprem_passes_the_whole_ray_up_bootstrap():
    resolved = _bootstrap_config(load(ONPREM), no_config_cache=True)
    (node_type,) = resolved["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(
        load(ONPREM)["provider"]["worker_ips"])


def test_aws_config_as_the_head_autoscaler_reads_it():
    config = AutoscalingConfig(load(AWS), skip_content_hash=True)
    types = config.get_node_type_configs()
    head = config.get_head_node_type()
    assert set(types) == {head, "gpu_spot", "gpu_ondemand"}
    assert types["gpu_spot"].priority > types["gpu_ondemand"].priority


# -- ... and the same validation rejects broken copies ----------------------------------------


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=["aws", "onprem"])
def test_unknown_top_level_key_is_rejected(path):
    broken = load(path)
    broken["storage_path"] = "s3://bucket/kdci"  # not a cluster-launcher field
    with pytest.raises(jsonschema.ValidationError, match="storage_path"):
        ray_validate(broken)


def test_node_type_without_node_config_is_rejected():
    broken = load(AWS)
    del broken["available_node_types"]["gpu_spot"]["node_config"]
    with pytest.raises(jsonschema.ValidationError, match="node_config"):
        ray_validate(broken)


def test_fractional_node_resources_are_rejected():
    broken = load(AWS)
    broken["available_node_types"]["gpu_spot"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(broken)


def test_unknown_head_node_type_is_rejected():
    broken = load(AWS)
    broken["head_node_type"] = "cpu_head"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_validate(broken)


def test_onprem_refuses_node_types():
    broken = load(ONPREM)
    broken["available_node_types"] = load(AWS)["available_node_types"]
    with pytest.raises(click.ClickException):
        ray_validate(broken)


# -- the properties kdci_ray relies on --------------------------------------------------------


def test_aws_head_advertises_no_gpu_and_workers_at_least_one():
    config = ray_validate(load(AWS))
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert types[head]["resources"].get("GPU", None) == 0  # declared, so never auto-detected
    assert types[head]["max_workers"] == 0
    workers = {name: t for name, t in types.items() if name != head}
    assert workers
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, name
        assert node_type["resources"].get("CPU", 0) >= 1, name
        assert node_type["max_workers"] >= (1 if name == "gpu_spot" else 0), name
    markets = {t["node_config"].get("InstanceMarketOptions", {}).get("MarketType", "on-demand")
               for t in workers.values()}
    assert markets == {"spot", "on-demand"}  # spot, and an on-demand type to opt into
    assert "InstanceMarketOptions" not in types[head]["node_config"]  # the head is never spot
    shapes = {(t["node_config"]["InstanceType"], tuple(sorted(t["resources"].items())))
              for t in workers.values()}
    assert len(shapes) == 1  # spot and on-demand are interchangeable for a trial


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=["aws", "onprem"])
def test_head_start_advertises_no_gpu_workers_do(path):
    config = load(path)
    (head,) = start_commands(config, "head")
    assert "--head" in head and "--num-gpus=0" in head
    for cmd in start_commands(config, "worker"):
        assert "--num-gpus=0" not in cmd and "--head" not in cmd


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=["aws", "onprem"])
def test_setup_installs_the_gpu_extra_with_the_constraints_on_gpu_workers_only(path):
    prepared = ray_validate(load(path))
    for role in ("head", "worker"):
        cmds = prepared[f"{role}_setup_commands"]
        assert any(BASE_INSTALL.search(c) and "cd ~/kdci_ray" in c for c in cmds), (role, cmds)
    assert any(INSTALL.search(c) for c in prepared["worker_setup_commands"])
    assert not any(INSTALL.search(c) for c in prepared["head_setup_commands"])  # no cuML: head
    for role in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        for cmd in load(path)[role]:
            assert "index-url" not in cmd and "://" not in cmd, cmd  # registry's default only
    # ray[default]: the dashboard and Jobs API (`ray job submit`) and the autoscaler's deps;
    # the package itself depends on ray[train,tune] only
    assert any("'ray[default]'" in c for c in prepared["head_setup_commands"])
    # GPU workers refuse a CPU-only torch build (the pin fixes the version, not the build)
    assert any("torch.cuda.is_available()" in c for c in prepared["worker_setup_commands"])
    assert load(path)["file_mounts"]["~/kdci_ray"] == "."


def test_both_files_install_the_same_way():
    assert load(AWS)["setup_commands"] == load(ONPREM)["setup_commands"]


def test_pins_agree_with_constraints_and_pyproject():
    constraints = (ROOT / "constraints.txt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pin in (f"ray=={RAY_VERSION}", f"torch=={TORCH_VERSION}"):
        assert re.search(rf"^{re.escape(pin)}\s*$", constraints, re.M), pin
    assert f"ray[train,tune]=={RAY_VERSION}" in pyproject
    assert f"torch=={TORCH_VERSION}" in pyproject
    assert "gpu = [" in pyproject
    image = load(AWS)["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{RAY_VERSION}-py311"), image
    for path in (AWS, ONPREM):
        check = " ".join(load(path)["setup_commands"])
        assert f"'{RAY_VERSION}'" in check and f"'{TORCH_VERSION}'" in check


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=["aws", "onprem"])
def test_token_auth_on_head_and_workers(path):
    config = load(path)
    for role in ("head", "worker"):
        cmds = start_commands(config, role)
        assert cmds, role
        for cmd in cmds:
            assert re.search(r"\bRAY_AUTH_MODE=token\b", cmd.split("ray start")[0]), (role, cmd)
    # the token itself: the client's ~/.ray/auth_token at Ray's default path on every node
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert not any("RAY_AUTH_TOKEN=" in c for c in config["head_start_ray_commands"]
                   + config["worker_start_ray_commands"])  # never the secret itself in the file


def test_aws_container_has_auth_and_the_shared_mount():
    run_options = load(AWS)["docker"]["run_options"]
    assert "--env=RAY_AUTH_MODE=token" in run_options
    assert f"--volume={MOUNT}:{MOUNT}" in run_options
    assert f"--env=KDCI_RAY_CACHE={MOUNT}/cache" in run_options


def test_every_node_type_names_a_fixed_ami_the_head_can_launch():
    """Workers are launched by the head's instance role, which may not resolve SSM names."""
    config = load(AWS)
    for name, node in config["available_node_types"].items():
        image = node["node_config"]["ImageId"]
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", image), (name, image)
    images = {n["node_config"]["ImageId"] for n in config["available_node_types"].values()}
    assert len(images) == 1


def test_on_demand_is_opt_in_and_documented_as_ray_does_it():
    types = load(AWS)["available_node_types"]
    assert types["gpu_ondemand"]["max_workers"] == 0
    assert types["gpu_spot"]["priority"] > types["gpu_ondemand"]["priority"]
    text = AWS.read_text()
    assert "falls back to the on-demand" not in text  # Ray 2.60 does not, on capacity errors
    assert "no automatic spot -> on-demand fallback on capacity errors" in text


@pytest.mark.parametrize("path", [AWS, ONPREM], ids=["aws", "onprem"])
def test_shared_storage_is_mounted_on_every_node(path):
    config = load(path)
    init = config["initialization_commands"]  # every node, before setup (AWS: on the host)
    mounts = [c for c in init if re.search(rf"mount -t nfs4? .* {re.escape(MOUNT)}\)?$", c)]
    assert len(mounts) == 1, init
    assert "mountpoint -q" in mounts[0]  # idempotent: a re-run of `ray up` does not stack mounts
    assert any(f"{MOUNT}/results" in c for c in init)
    for role in ("head", "worker"):
        for cmd in start_commands(config, role):
            assert f"KDCI_RAY_CACHE={MOUNT}/cache" in cmd, (role, cmd)
