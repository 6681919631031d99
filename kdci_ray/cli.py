"""``kdci-ray``: teacher | train | sweep | dictionary | cgn | report | env | keys.

Examples::

    kdci-ray teacher                                  # train + cache the embedded digits teacher
    kdci-ray teacher --config tune_configs/quickstart.yaml teacher.epochs=40 --force
    kdci-ray sweep tune_configs/quickstart.yaml       # the grid, on local Ray or $RAY_ADDRESS
    kdci-ray train tune_configs/quickstart.yaml method=deepinv kdci.enabled=true
    kdci-ray sweep tune_configs/quickstart.yaml --smoke --output /tmp/smoke
    kdci-ray sweep results/quickstart --resume        # continue an interrupted sweep
    kdci-ray sweep tune_configs/cifar10_table1.yaml --only method=dafl --only method=dfnd
    kdci-ray dictionary tune_configs/dictionary_size.yaml   # KDCI dictionaries, built once
    kdci-ray dictionary tune_configs/cifar10_table1.yaml --workers 0   # scored on Ray's workers
    kdci-ray cgn tune_configs/skdcgn_double_colored.yaml   # SKDCGN, 3 seeds
    kdci-ray cgn tune_configs/skdcgn_double_colored.yaml --only seed=0   # as `sweep --only`
    kdci-ray keys --kind skdcgn                       # the SKDCGN config keys
    kdci-ray report results/quickstart                # rebuild the table of a (partial) sweep
    kdci-ray env results/quickstart                   # the software it ran with, vs. this one
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from kdci_ray.config.files import not_an_override
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import parse_overrides, resolve, valid_keys
from kdci_ray.models import CheckpointMismatchError
from kdci_ray.train.runtime import limit_threads


def _log(msg: str) -> None:
    print(f"[kdci-ray] {msg}", flush=True)


def cmd_teacher(args: argparse.Namespace) -> None:
    from kdci_ray.cache import check_cache_dir
    from kdci_ray.engine.files import absolute_paths, load_experiment
    from kdci_ray.engine.kinds import kind_named
    from kdci_ray.train.teacher import cached_teacher_problem, teacher_path, train_teacher

    settings = load_experiment(args.config, kind="dfkd").settings if args.config else {}
    over = absolute_paths(parse_overrides(args.overrides), kind_named("dfkd").file_keys,
                          Path.cwd())  # read against the working directory, as by `sweep`
    cfg = resolve(settings, over)
    check_cache_dir()  # before training, not after
    path = teacher_path(cfg)
    problem = cached_teacher_problem(cfg)
    if not problem and not args.force:
        _log(f"teacher already cached at {path} (use --force to retrain)")
        return
    if problem and path.is_file():
        _log(f"{problem}; retraining it")
    path, acc = train_teacher(cfg, _log)
    _log(f"teacher {cfg.teacher.arch} on {cfg.data.name}: test acc {acc:.4f}, saved to {path}")


def _sweep(args: argparse.Namespace, single: bool, kind: str | None = None) -> int:
    """``kdci-ray sweep`` / ``train`` / ``cgn``: ``kdci_ray.sweep`` and its exit code."""
    from kdci_ray.api import sweep
    from kdci_ray.engine.plan import check_sweep_arguments

    check_sweep_arguments(output=args.output)  # `--output ""` is no default: refused
    start = time.perf_counter()
    resume = getattr(args, "resume", False)
    result = sweep(args.config, args.overrides, args.output, args.smoke, resume=resume,
                   overwrite=args.overwrite, only=getattr(args, "only", None) or None,
                   kind=kind, single=single, log=_log)
    print(result.table, flush=True)
    if (result.directory / "report.md").is_file():
        _log(f"wrote {result.directory / 'report.md'}, summary.csv and summary.md; "
             f"wall time {time.perf_counter() - start:.0f} s")
    from kdci_ray.environment import tensorboard_command

    _log(f"compare the runs: {tensorboard_command()} --logdir {result.directory}")
    for err in result.errors:
        _log(f"trial failed: {err}")
    for name, reason in result.stopped.items():
        _log(f"trial stopped: {name}: {reason}")
    if result.unfinished:
        _log(f"interrupted: {len(result.unfinished)} trial(s) unfinished; continue with "
             f"`kdci-ray sweep {result.directory} --resume` (finished trials are kept, "
             f"unfinished ones continue from their last checkpoint)")
        return 130
    return 1 if result.errors or result.stopped else 0


def cmd_dictionary(args: argparse.Namespace) -> int:
    """Build (or find) the build-once KDCI dictionaries of a config's grid, print their records."""
    from kdci_ray.engine import check_resources, init_ray, plan_sweep
    from kdci_ray.engine.cluster_wait import watch_cluster
    from kdci_ray.engine.dictionary_job import build_all, default_scoring_workers, sampling_methods

    plan = plan_sweep(args.config, args.overrides, smoke=args.smoke, only=args.only)
    configs = [c for c in plan.configs if c.method in sampling_methods()]
    if not configs:
        raise ConfigError(
            f"{args.config}: no grid point uses a sampling-based method "
            f"({', '.join(sampling_methods())}); the generation-based methods rebuild their "
            f"dictionary every round from fresh synthetic images, so there is nothing to build"
        )
    workers = default_scoring_workers() if args.workers is None else args.workers
    if workers < 0:
        raise ConfigError(f"--workers must be 0 (all free) or a positive count, got {workers}")
    started = init_ray() if workers != 1 else False
    try:
        if workers != 1:
            check_resources(plan)  # a scorer the cluster can never place: refused at once
        with watch_cluster(_log):
            entries = build_all(configs, _log, only_shared=False, workers=workers)
    finally:
        if started:
            from kdci_ray.engine.runner import shutdown_ray

            shutdown_ray()
    _log(f"{len(entries)} dictionar{'y' if len(entries) == 1 else 'ies'} ready")
    return 0


def cmd_cgn(args: argparse.Namespace) -> int:
    """SKDCGN (an alias of ``sweep`` for ``kind: skdcgn`` files)."""
    return _sweep(args, single=False, kind="skdcgn")


def cmd_report(args: argparse.Namespace) -> None:
    from kdci_ray.engine.lock import locked_report

    written: list[str] = []
    print(locked_report(Path(args.dir), log=written.append), flush=True)
    for line in written:
        _log(line)


def cmd_env(args: argparse.Namespace) -> None:
    """This environment's versions; with a sweep directory, what that sweep recorded (its
    ``environment.json``), the differences, and the cache entries its driver and trials used."""
    import json

    from kdci_ray.environment import (
        compare,
        describe,
        read_environment,
        snapshot,
        sweep_cache_uses,
    )

    now = snapshot()
    if args.dir is None:
        print(json.dumps(now, indent=2) if args.json else describe(now, args.all))
        return
    where = Path(args.dir)
    if not where.is_dir():
        raise ConfigError(f"{where} is not a directory: give a sweep directory (or nothing, "
                          f"for this environment alone)")
    recorded, uses = read_environment(where), sweep_cache_uses(where)
    if args.json:
        print(json.dumps({"recorded": recorded, "here": now, "caches": uses}, indent=2))
    else:
        print(compare(recorded, now, uses, str(where), args.all))


KIND_NAMES = ("dfkd", "skdcgn")  # the experiment kinds, the default first


def cmd_keys(args: argparse.Namespace) -> None:
    """Every config key as ``KIND KEY``, or one kind's keys alone (``--kind``)."""
    from kdci_ray.engine.kinds import kind_named

    if args.kind:
        print("\n".join(kind_named(args.kind).schema.valid_keys()))
        return
    width = max(map(len, KIND_NAMES))
    print("\n".join(f"{kind:<{width}}  {key}" for kind in KIND_NAMES
                    for key in kind_named(kind).schema.valid_keys()))


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
        _sweep_arguments(p, "experiment YAML under tune_configs/", single)
        p.set_defaults(func=lambda a, s=single: _sweep(a, s))

    p = sub.add_parser("dictionary", help="build the KDCI dictionaries of a config's "
                                          "sampling-based runs once, as shared artifacts")
    p.add_argument("config", help="experiment YAML (its grid's distinct dictionaries are built)")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--smoke", action="store_true", help="tiny pool and selection")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="restrict the grid as for `sweep --only`")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="score the pool on N Ray workers (0: every free GPU with run.use_gpu, "
                        "else CPU, of $RAY_ADDRESS or a local Ray; 1: in this process; "
                        "default: 0 when RAY_ADDRESS is set, else 1)")
    p.set_defaults(func=cmd_dictionary)

    p = sub.add_parser("cgn", help="SKDCGN: distil a counterfactual generative network into "
                                   "small student generators and score their counterfactuals "
                                   "(`sweep` for `kind: skdcgn` files, the same options)")
    _sweep_arguments(p, "SKDCGN YAML, e.g. tune_configs/skdcgn_double_colored.yaml", False)
    p.set_defaults(func=cmd_cgn)

    p = sub.add_parser("report", help="rebuild summary.csv/summary.md from a sweep directory")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("env", help="the versions of this environment; with a sweep directory, "
                                   "what it ran with, the differences and the caches it used")
    p.add_argument("dir", nargs="?", help="a sweep directory (its environment.json)")
    p.add_argument("--all", action="store_true", help="every installed package, not the main ones")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("keys", help="list every config key, each after its experiment kind "
                                    "(dfkd: distillation, the default; skdcgn: `kind: skdcgn`)")
    p.add_argument("--kind", choices=KIND_NAMES,
                   help="only this kind's keys, one a line without the kind")
    p.set_defaults(func=cmd_keys)
    return parser


def _sweep_arguments(p: argparse.ArgumentParser, config_help: str, single: bool) -> None:
    """The arguments of ``sweep`` and ``cgn`` (``single``: ``train``'s, without a grid)."""
    p.add_argument("config", help=config_help +
                   ("" if single else ", or a sweep directory to --resume"))
    p.add_argument("overrides", nargs="*", help="section.key=value (win over the grid)")
    p.add_argument("--output", help="sweep directory (default results/<config stem>)")
    p.add_argument("--smoke", action="store_true", help="tiny schedules, every code path")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier sweep's results in the output directory")
    if single:
        return
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted sweep in the output directory (or pass that "
                        "directory as CONFIG): finished trials are kept, the others continue "
                        "from their last checkpoint")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="run only the grid points whose resolved config has this value "
                        "(repeat: same key = OR, different keys = AND; cases.<group>=NAME "
                        "selects cases by name)")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like ``parse_args``, but ``key=value`` overrides may also follow options
    (``sweep CONFIG --smoke --only method=dafl data.root=/data``)."""
    args, extra = parser.parse_known_args(argv)
    words = [a for a in extra if not a.startswith("-") and "=" not in a]
    if words and hasattr(args, "overrides"):
        raise not_an_override(words[0], _keys_of(args.command))
    stray = [a for a in extra
             if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def _keys_of(command: str) -> list[str]:
    """The config keys a command's overrides may name (``sweep`` / ``train``: any kind's)."""
    from kdci_ray.cgn.config import valid_keys as skdcgn_keys

    if command == "cgn":
        return skdcgn_keys()
    return valid_keys() + ([] if command in ("teacher", "dictionary") else skdcgn_keys())


def _continue_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """What to run to continue an interrupted command."""
    again = "kdci-ray " + shlex.join(argv)
    if args.command in ("sweep", "cgn") and not args.resume:
        return f"`{again} --resume` continues it if its trials had started, else run it again"
    return f"run `{again}` again to continue"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(build_parser(), argv)
    except ConfigError as exc:
        print(f"kdci-ray: error: {exc}", file=sys.stderr)
        return 2
    try:
        limit_threads()  # one thread unless OMP_NUM_THREADS says otherwise, however launched
        code = args.func(args)
    except KeyboardInterrupt:
        print(f"kdci-ray: interrupted; nothing half-written was kept "
              f"({_continue_hint(args, argv)})", file=sys.stderr)
        return 130
    except (ConfigError, CheckpointMismatchError, FileNotFoundError, ValueError) as exc:
        print(f"kdci-ray: error: {exc}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
