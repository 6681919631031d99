"""benchmarks/kdci_overhead.py: one tiny run end to end (keys and their consistency; no timing or
memory figure asserted), and its pure helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bench_module import load_bench

TINY = ["--teacher", "tiny_cnn", "--student", "tiny_cnn", "--batch", "8", "--k", "4",
        "--refresh-every", "3", "--refresh-n", "24", "--steps", "1", "--blocks", "2",
        "--warmup", "1", "--refresh-repeats", "1", "--mem-steps", "1", "--no-source",
        "--time-malloc", "default"]  # no mallopt in the test process


@pytest.fixture(scope="module")
def bench():
    return load_bench("kdci_overhead")


def test_tiny_run_writes_cpu_and_wall_figures(bench, tmp_path: Path) -> None:
    out = tmp_path / "results" / "kdci_overhead.json"
    bench.main([*TINY, "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["threads"] == 1
    assert result["score_batch"] == result["batch"] == 8
    for key in ("cpu_step_s", "cpu_step_s_kdci", "step_s_vanilla", "step_s_kdci",
                "cpu_refresh_s", "refresh_s", "cpu_first_refresh_s", "cpu_own_s"):
        assert result[key] > 0, key
    assert result["cpu_time_overhead"] == pytest.approx(
        result["cpu_step_s_kdci"] / result["cpu_step_s"] - 1)
    assert result["wall_time_overhead"] == pytest.approx(
        result["step_s_kdci"] / result["step_s_vanilla"] - 1)
    assert result["time_malloc"] == "default"
    assert result["time_overhead_measure"] == "cpu"  # the headline on CPU is the CPU-time ratio
    assert result["time_overhead"] == result["cpu_time_overhead"]
    assert math.isfinite(result["time_overhead_ci95"])
    assert math.isfinite(result["time_overhead_isolated"])
    assert "cpu_step_s_kdci_source" not in result  # --no-source
    # memory: each variant in its own process, like for like from the same set-up
    assert "MALLOC_MMAP_THRESHOLD_" in result["mem_measure"]
    assert result["peak_mem_mb_vanilla"] > result["base_mem_mb"] > 0
    assert result["mem_overhead"] == pytest.approx(
        result["peak_mem_mb_kdci"] / result["peak_mem_mb_vanilla"] - 1)
    assert result["first_refresh_mem_mb"] >= 0
    assert result["mem"]["vanilla"]["first_refresh_peak_mb"] is None


def test_paired_interval_and_median_of_runs(bench) -> None:
    assert bench._ci95([1.1, 1.1, 1.1], [1.0, 1.0, 1.0]) == pytest.approx(0.0)
    assert bench._ci95([1.0], [1.0]) is None
    runs = [{"peak_mb": 3.0, "first": None, "flag": True}, {"peak_mb": 1.0, "first": None,
                                                             "flag": True}]
    assert bench._median_runs(runs) == {"peak_mb": 2.0, "first": None, "flag": True}
