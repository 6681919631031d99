"""The program pins its own thread counts (issue 13): the same command gives the same numbers
however it is launched (`make` sets OMP_NUM_THREADS=1, a plain shell does not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kdci_ray import THREAD_VARS

PROBE = """
import json, os
import kdci_ray
import torch
before = torch.get_num_threads()
from kdci_ray.train.runtime import limit_threads
import numpy  # a BLAS library loaded before the limit
from threadpoolctl import threadpool_info
count = limit_threads()
print(json.dumps({"count": count, "torch_at_import": before, "torch": torch.get_num_threads(),
                  "env": {v: os.environ.get(v) for v in kdci_ray.THREAD_VARS},
                  "pools": [p["num_threads"] for p in threadpool_info()]}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_one_thread_everywhere_without_any_thread_variable() -> None:
    seen = _probe()
    assert seen["count"] == 1
    assert seen["torch_at_import"] == 1  # the variables were set before torch loaded
    assert seen["torch"] == 1
    assert seen["env"] == dict.fromkeys(THREAD_VARS, "1")  # what Ray workers inherit
    assert seen["pools"] and set(seen["pools"]) == {1}  # BLAS / OpenMP of numpy and torch


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to tell 2 threads from 1")
def test_the_users_own_thread_count_wins() -> None:
    seen = _probe(OMP_NUM_THREADS="2")
    assert seen["count"] == 2 and seen["torch"] == 2
    assert seen["env"] == dict.fromkeys(THREAD_VARS, "2")
    assert set(seen["pools"]) == {2}


def test_a_bad_thread_count_is_one_clear_error(monkeypatch) -> None:
    from kdci_ray.train.runtime import thread_count

    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS must be a positive integer, got 'many'"):
        thread_count()
