"""benchmarks/trainer_overhead.py: its per-trial arithmetic (no timing asserted)."""

from __future__ import annotations

import pytest
from bench_module import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("trainer_overhead")


def test_a_trial_holds_its_slot_for_the_sweep_time_shared_by_the_trials(bench) -> None:
    # 8 trials, 2 at a time, 40 s of sweep: each held a slot 10 s; alone each took 24/8 = 3 s
    f = bench.per_trial(wall_s=40.0, cpu_s=72.0, trials=8, slots=2, in_process_wall_s=24.0)
    assert f["slot_s"] == 10.0 and f["cpu_s"] == 9.0
    assert f["added_s"] == pytest.approx(7.0)


def test_the_in_process_way_has_no_added_time(bench) -> None:
    f = bench.per_trial(wall_s=24.0, cpu_s=23.0, trials=8, slots=1)
    assert f["slot_s"] == 3.0 and "added_s" not in f
