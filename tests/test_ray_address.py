"""``RAY_ADDRESS`` naming an address where nothing listens: one clear error within seconds, not
Ray's endless retries (it warns every 5 s for minutes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from kdci_ray.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_address_where_nothing_listens_is_refused_with_the_fix() -> None:
    from kdci_ray.engine.runner import check_address

    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        check_address(address, wait_s=1.0)
    assert time.monotonic() - start < 10
    assert str(info.value) == (
        f"nothing answers at RAY_ADDRESS={address}: start the cluster (`ray up` / `ray start "
        f"--head`) or unset RAY_ADDRESS to run on a local Ray")
    with pytest.raises(ConfigError, match="nothing answers at RAY_ADDRESS=ray://"):
        check_address(f"ray://{address}", wait_s=0.5)


def test_an_address_that_answers_passes() -> None:
    from kdci_ray.engine.runner import check_address

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_address(f"127.0.0.1:{server.getsockname()[1]}", wait_s=0.5)
    check_address("auto")  # Ray looks for a local cluster itself, and fails at once


def test_sweep_with_a_dead_ray_address_fails_fast_with_one_message(tiny_settings,
                                                                  tmp_path) -> None:
    """The user's case: `kdci-ray sweep` with RAY_ADDRESS where nothing listens hung for more
    than five minutes; now exit code 2 and the message within about 30 s."""
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({**tiny_settings, "method": "dafl"}, sort_keys=False))
    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdci_ray.cli", "sweep", str(config), "--output",
         str(tmp_path / "out")], env={**os.environ, "RAY_ADDRESS": address},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, (out, err)
    assert time.monotonic() - start < 35
    assert err.strip().splitlines()[-1] == f"kdci-ray: error: nothing answers at RAY_ADDRESS=" \
        f"{address}: start the cluster (`ray up` / `ray start --head`) or unset RAY_ADDRESS " \
        f"to run on a local Ray", err
    assert "Traceback" not in err
