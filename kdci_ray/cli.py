"""``kdci-ray``: teacher | train | sweep | report | keys.

Examples::

    kdci-ray teacher                                  # train + cache the embedded digits teacher
    kdci-ray teacher --config tune_configs/quickstart.yaml teacher.epochs=40 --force
    kdci-ray sweep tune_configs/quickstart.yaml       # the grid, on local Ray or $RAY_ADDRESS
    kdci-ray train tune_configs/quickstart.yaml method=deepinv kdci.enabled=true
    kdci-ray sweep tune_configs/quickstart.yaml --smoke --output /tmp/smoke
    kdci-ray report results/quickstart                # rebuild the table of a (partial) sweep
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kdci_ray.config import ConfigError, parse_overrides, resolve, valid_keys
from kdci_ray.models import CheckpointMismatchError


def _log(msg: str) -> None:
    print(f"[kdci-ray] {msg}", flush=True)


def cmd_teacher(args: argparse.Namespace) -> None:
    from kdci_ray.config import load_experiment
    from kdci_ray.train.teacher import teacher_path, train_teacher

    settings = load_experiment(args.config).settings if args.config else {}
    cfg = resolve(settings, parse_overrides(args.overrides))
    path = teacher_path(cfg)
    if path.is_file() and not args.force:
        _log(f"teacher already cached at {path} (use --force to retrain)")
        return
    path, acc = train_teacher(cfg, _log)
    _log(f"teacher {cfg.teacher.arch} on {cfg.data.name}: test acc {acc:.4f}, saved to {path}")


def _sweep(args: argparse.Namespace, single: bool) -> int:
    from kdci_ray.tune.driver import check_inputs, plan_sweep, prepare_output, run_sweep

    start = time.perf_counter()
    plan = plan_sweep(args.config, args.overrides, args.output, args.smoke, single=single)
    check_inputs(plan, _log)
    prepare_output(plan, args.overwrite)
    _log(f"{len(plan.configs)} trial(s) -> {plan.out_dir}")
    outcome = run_sweep(plan)
    print(outcome.table, flush=True)
    _log(f"wrote {plan.out_dir / 'summary.csv'} and summary.md; "
         f"wall time {time.perf_counter() - start:.0f} s")
    _log(f"compare the runs: tensorboard --logdir {plan.out_dir}")
    for err in outcome.errors:
        _log(f"trial failed: {err}")
    return 1 if outcome.errors else 0


def cmd_report(args: argparse.Namespace) -> None:
    from kdci_ray.tune.driver import report

    print(report(Path(args.dir)), flush=True)


def cmd_keys(args: argparse.Namespace) -> None:
    del args
    print("\n".join(valid_keys()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdci-ray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("teacher", help="train and cache the teacher of a config")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--config", help="experiment YAML whose teacher to train (default: digits)")
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.set_defaults(func=cmd_teacher)

    for name, single, text in (("sweep", False, "run the config's search grid with Ray Tune"),
                               ("train", True, "run one configuration (search ignored)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="experiment YAML under tune_configs/")
        p.add_argument("overrides", nargs="*", help="section.key=value (win over the grid)")
        p.add_argument("--output", help="sweep directory (default results/<config stem>)")
        p.add_argument("--smoke", action="store_true", help="tiny schedules, every code path")
        p.add_argument("--overwrite", action="store_true",
                       help="replace an earlier sweep's results in the output directory")
        p.set_defaults(func=lambda a, s=single: _sweep(a, s))

    p = sub.add_parser("report", help="rebuild summary.csv/summary.md from a sweep directory")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("keys", help="list every config key")
    p.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (ConfigError, CheckpointMismatchError, FileNotFoundError, ValueError) as exc:
        print(f"kdci-ray: error: {exc}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
