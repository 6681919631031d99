"""benchmarks/ray_overhead.py: its pure helpers, on synthetic time stamps (no timing asserted)."""

from __future__ import annotations

import pytest
from bench_module import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("ray_overhead")


def worker_stamps(**changes: float) -> dict[str, float]:
    stamps = {"entered": 110.0, "process_created": 104.0, "distill_start": 110.5,
              "distill_end": 120.5, "exited": 121.0, "setup_s": 2.0, "report_s": 0.5,
              "checkpoint_s": 1.5, "ray_report_s": 0.25, "ray_checkpoint_report_s": 1.0,
              "worker_cpu_s": 9.0, "cpu_before_entry_s": 6.0}
    return stamps | changes


def test_split_of_a_ray_run_adds_up_to_its_wall_time(bench) -> None:
    split = bench.split_ray_run(100.0, 122.0, worker_stamps())
    assert split["wall_s"] == 22.0
    assert split["startup_s"] == 10.0 and split["spawn_s"] == 4.0 and split["boot_s"] == 6.0
    assert split["adapter_s"] == 1.0 and split["teardown_s"] == 1.0
    assert split["loop_s"] == 6.0  # distill 10 s - set-up 2 - report 0.5 - checkpoint 1.5
    assert sum(split[part] for part in bench.SPLIT) == pytest.approx(split["wall_s"])
    assert split["ray_checkpoint_report_s"] == 1.0 and split["worker_cpu_before_entry_s"] == 6.0


def test_a_worker_started_before_the_call_has_no_spawn_time(bench) -> None:
    split = bench.split_ray_run(100.0, 122.0, worker_stamps(process_created=50.0))
    assert split["spawn_s"] == 0.0 and split["boot_s"] == split["startup_s"] == 10.0


def test_added_time_per_part_and_idle_lower_bound(bench) -> None:
    plain = {"wall_s": 8.0, "cpu_s": 7.5, "setup_s": 0.5, "loop_s": 7.0, "report_s": 0.0,
             "checkpoint_s": 0.5}
    ray = bench.split_ray_run(100.0, 122.0, worker_stamps()) | {"cpu_s": 30.0}
    added = bench.added_by_ray(plain, ray, cores=2)
    assert added["added_s"] == 14.0
    assert added["idle_added_lower_bound_s"] == 7.5  # 30 CPU s over 2 cores - 7.5 in-process
    assert added["startup_added_s"] == 10.0 and added["teardown_added_s"] == 1.0
    assert added["setup_added_s"] == 1.5 and added["checkpoint_added_s"] == 1.0
    assert added["added_s"] == pytest.approx(sum(added[p.replace("_s", "_added_s")]
                                                 for p in bench.SPLIT))


def test_medians_skip_what_is_not_a_number(bench) -> None:
    runs = [{"wall_s": 3.0, "started_processes": {"ray::A": 1.0}}, {"wall_s": 1.0,
            "started_processes": {}}, {"wall_s": 2.0, "started_processes": {}}]
    assert bench.median_run(runs) == {"wall_s": 2.0}


def test_verdicts_per_method_and_overall(bench) -> None:
    def trial(method: str, added: float) -> dict:
        return {"method": method, "median": {"added_s": added}}

    trials = {"a": trial("dafl", 4.0), "b": trial("dafl", 6.0), "c": trial("deepinv", 1.0)}
    assert bench.verdicts(trials) == {"dafl": False, "deepinv": True, "overall": False}
    assert bench.verdicts(trials, limit=10.0) == {"dafl": True, "deepinv": True, "overall": True}


def test_timed_reporter_splits_reports_checkpoints_and_set_up(bench, monkeypatch) -> None:
    clock = iter([10.0, 13.0, 13.5, 20.0, 22.0])  # created, call 1 in/out, call 2 in/out
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    seen = []
    reporter = bench.TimedReporter(lambda metrics, step, snapshot: seen.append(step))
    reporter({"time/elapsed_s": 1.0}, 1, None)
    reporter({"time/elapsed_s": 8.0}, 2, object())
    assert seen == [1, 2]
    assert reporter.times == {"report_s": 0.5, "checkpoint_s": 2.0, "setup_s": 2.0}
