"""A sweep's cost per trial by ``run.trainer``, side by side with the loop alone.

    python benchmarks/trainer_overhead.py [--full] [--only KEY=VALUE ...] [--repeats N]
        [--json PATH]

The trials of ``tune_configs/quickstart.yaml`` (``--smoke`` schedules unless ``--full``; all 8,
or those ``--only`` keeps) run three ways, in rotating order, on one warm local Ray
(``num_cpus`` = the machine's cores, as ``kdci-ray sweep`` starts it):

- ``in_process``: ``distill`` with the ``Collect`` reporter, one trial after another;
- ``tune_trial``: ``plan_sweep`` + ``run_sweep`` with ``run.trainer=tune_trial`` (the loop in
  the Tune trial's process, actors reused);
- ``ray_train``: the same sweep with ``run.trainer=ray_train`` (a one-worker TorchTrainer per
  trial).

Per way: the wall time, the CPU time of this process and every process under it (GCS, raylet,
Tune's trial actors, Train's controllers and workers; polled, ``ray_overhead.ProcessTreeCPU``),
and per trial: ``slot_s`` = sweep wall x concurrent trials / trials (how long a trial holds one
of the machine's slots), ``cpu_s`` = CPU / trials, and ``added_s`` = ``slot_s`` minus the
in-process wall time per trial. Target: a trainer adds <= 5 s per trial (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch and Ray are imported
from kdci_ray.engine import LOCAL_RAY_ENV  # noqa: E402 - after the thread setting

for _key, _value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(_key, _value)

HERE = Path(__file__).resolve().parent
QUICKSTART = HERE.parent / "tune_configs" / "quickstart.yaml"
TARGET_ADDED_S = 5.0
WAYS = ("in_process", "tune_trial", "ray_train")


def _ray_overhead() -> Any:
    """``benchmarks/ray_overhead.py`` (its process-tree CPU poller), loaded by path."""
    spec = importlib.util.spec_from_file_location("ray_overhead_bench", HERE / "ray_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def per_trial(wall_s: float, cpu_s: float, trials: int, slots: int,
              in_process_wall_s: float | None = None) -> dict[str, float]:
    """A way's totals as per-trial figures; ``added_s`` against the in-process wall per trial."""
    out = {"wall_s": wall_s, "cpu_total_s": cpu_s, "trials": trials, "slots": slots,
           "slot_s": wall_s * slots / trials, "cpu_s": cpu_s / trials}
    if in_process_wall_s is not None:
        out["added_s"] = out["slot_s"] - in_process_wall_s / trials
    return out


def run_way(way: str, args: argparse.Namespace, work: Path, tree_cpu: Any) -> tuple[float, float]:
    """One way over the selected trials: (wall s, CPU s of this process and its children)."""
    from kdci_ray import engine as driver
    from kdci_ray.engine import prepare_output

    over = [] if way == "in_process" else [f"run.trainer={way}"]
    plan = driver.plan_sweep(QUICKSTART, over, smoke=not args.full, only=args.only,
                             output=str(work / way))
    driver.check_inputs(plan, log=lambda message: None)
    with tree_cpu() as tree:
        start, cpu = time.perf_counter(), time.process_time()
        if way == "in_process":
            from kdci_ray.train.loop import Collect, distill

            for cfg in plan.configs:
                distill(cfg, Collect())
        else:
            prepare_output(plan, overwrite=True)
            outcome = driver.run_sweep(plan)
            if outcome.errors:
                raise RuntimeError(f"{way}: failed trials {outcome.errors}")
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu - tree.own_s + tree.started_s + tree.daemons_s


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from kdci_ray.engine import plan_sweep

    plan = plan_sweep(QUICKSTART, smoke=not args.full, only=args.only)
    trials, slots = len(plan.configs), min(plan.kind.max_concurrent(plan), len(plan.configs))
    tree_cpu = _ray_overhead().ProcessTreeCPU
    runs: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    for repeat in range(args.repeats):
        order = WAYS[repeat % 3:] + WAYS[:repeat % 3]
        for way in order:
            print(f"repeat {repeat + 1}/{args.repeats}: {way} ...", file=sys.stderr, flush=True)
            runs[way].append(run_way(way, args, work / str(repeat), tree_cpu))
    medians = {way: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
               for way, r in runs.items()}
    plain_wall = medians["in_process"][0]
    figures = {"in_process": per_trial(*medians["in_process"], trials, 1)}
    for way in WAYS[1:]:
        figures[way] = per_trial(*medians[way], trials, slots, plain_wall)
    return {"runs": {w: [{"wall_s": a, "cpu_s": b} for a, b in r] for w, r in runs.items()},
            "per_trial": figures,
            "targets_met": {way: figures[way]["added_s"] <= TARGET_ADDED_S for way in WAYS[1:]}}


def print_table(result: dict[str, Any]) -> None:
    meta = result["meta"]
    lines = [f"{meta['trials']} quickstart trials ({meta['schedule']} schedules), "
             f"{meta['repeats']} repeat(s), medians", "",
             "way | sweep wall s | CPU s | per trial: slot s | CPU s | added s | <= 5 s"]
    for way, f in result["per_trial"].items():
        added = f.get("added_s")
        met = "" if added is None else ("met" if result["targets_met"][way] else "MISSED")
        lines.append(f"{way} | {f['wall_s']:.1f} | {f['cpu_total_s']:.1f} | {f['slot_s']:.2f} | "
                     f"{f['cpu_s']:.2f} | {'' if added is None else f'{added:.2f}'} | {met}")
    tt, rt = result["per_trial"]["tune_trial"], result["per_trial"]["ray_train"]
    lines.append(f"\nray_train / tune_trial per trial: slot x{rt['slot_s'] / tt['slot_s']:.2f}, "
                 f"CPU x{rt['cpu_s'] / tt['cpu_s']:.2f}")
    lines.append(f"load average start {meta['loadavg_start'][0]:.2f}, end "
                 f"{meta['loadavg_end'][0]:.2f} on {meta['cpu_count']} CPUs")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the real quickstart schedule (slow)")
    p.add_argument("--only", action="append", metavar="KEY=VALUE",
                   help="quickstart grid filter, as kdci-ray sweep's (default: every trial)")
    p.add_argument("--repeats", type=int, default=1, help="runs per way (median)")
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    args = p.parse_args(argv)
    args.only = args.only or []

    import ray

    from kdci_ray.atomic import atomic_write_text
    from kdci_ray.engine import plan_sweep
    from kdci_ray.train.runtime import limit_threads
    from kdci_ray.train.teacher import ensure_teacher

    limit_threads()
    # the real teacher (as `make demo` trains it, cached), never a smoke one
    ensure_teacher(plan_sweep(QUICKSTART, only=args.only).configs[0], log=print)
    work = Path(tempfile.mkdtemp(prefix="trainer_overhead_"))
    ray_tmp = tempfile.mkdtemp(prefix="kr", dir="/tmp")  # short: Ray's socket paths
    meta = {"schedule": "full" if args.full else "smoke", "only": args.only,
            "repeats": args.repeats, "cpu_count": os.cpu_count(), "ray": ray.__version__,
            "omp_threads": os.environ["OMP_NUM_THREADS"], "target_added_s": TARGET_ADDED_S,
            "loadavg_start": list(os.getloadavg())}
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
             log_to_driver=False, _temp_dir=ray_tmp)
    try:
        result = {"meta": meta, **measure(args, work)}
    finally:
        ray.shutdown()
        for path in (work, ray_tmp):
            shutil.rmtree(path, ignore_errors=True)
    meta.update(trials=result["per_trial"]["in_process"]["trials"],
                loadavg_end=list(os.getloadavg()))
    print_table(result)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
