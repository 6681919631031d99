"""Ctrl-C on any command: one line saying what to run to continue, exit code 130, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml


def test_interrupting_the_dictionary_command_prints_one_line_and_exits_130(
        tiny_settings, tmp_path) -> None:
    config = tmp_path / "dict.yaml"
    # a pool no other test scores (its own seed), large enough to take a while
    config.write_text(yaml.safe_dump({**tiny_settings, "method": "dfnd", "kdci.enabled": True,
                                      "pool.size": 400_000, "pool.seed": 9013}))
    argv = ["dictionary", str(config)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # scored in-process
    proc = subprocess.Popen([sys.executable, "-m", "kdci_ray.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # the first progress line: the job is under way
        assert first.startswith("[kdci-ray] dfnd: selecting"), first
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"kdci-ray: interrupted; nothing half-written was kept (run `kdci-ray dictionary "
        f"{config}` again to continue)"), err
    assert err.count("kdci-ray:") == 1, err  # the progress lines above it are the job's own
    assert "ready" not in out  # it did not finish before the signal
