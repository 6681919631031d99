"""``kdci-ray cgn CONFIG``: an SKDCGN experiment file's grid as Ray Tune function trials.

The file is flat YAML (``kdci_ray.cgn.config`` keys) with an optional ``search:`` section in the
format of the distillation sweeps (``kdci_ray/search/space.py``): grid keys, and ``cases`` bundles
such as the composition study's variants (a case group named ``variant`` becomes the table's
``variant`` column). A trial is a plain Tune function (no Ray Train: nothing is distributed
within one trial), one CPU each; the trials of a sweep share teachers and students through the
on-disk cache (``kdci_ray.cgn.cache``). Each trial directory gets ``config.yaml``,
``metrics.json``, ``samples.png`` and TensorBoard events; the sweep directory gets
``summary.csv`` (one row per trial) and ``summary.md`` (mean ± std per variant and each
variant's effect against the first one).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kdci_ray.cgn import config as cgn_config
from kdci_ray.config import ConfigError
from kdci_ray.config.files import read_yaml
from kdci_ray.search.cases import CASES, case_lookup, column_name, config_layer, expand, is_case_key

COLUMNS = ["variant", "seed", "acc_biased", "acc_teacher_cf", "acc_student_cf", "acc_oracle",
           "retained_gain", "param_ratio", "sample_speed_ratio"]
EXTRA = ["mask_iou", "l1_shape", "l1_foreground", "l1_background", "teacher_params",
         "student_params", "teacher_images_per_s", "student_images_per_s", "teacher_s",
         "students_s", "classifiers_s", "total_s"]
REPO = Path(__file__).resolve().parents[2]


@dataclass
class CGNPlan:
    name: str
    settings: dict[str, Any]
    search: dict[str, Any]
    overrides: dict[str, Any]
    out_dir: Path
    configs: list[cgn_config.CGNConfig]
    points: list[dict[str, Any]]


def load(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(settings, search)`` of a SKDCGN file, every key checked."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SKDCGN config {path} does not exist (see tune_configs/skdcgn_*)")
    raw = read_yaml(path) or {}  # a key given twice is refused
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an SKDCGN config is a mapping of keys, got "
                          f"{type(raw).__name__}")
    search = raw.pop("search", None) or {}
    settings = cgn_config.flatten(raw)
    settings.setdefault("name", path.stem)
    cgn_config.check_keys(settings, str(path))
    cgn_config.check_keys({k: v for k, v in search.items() if k != CASES},
                          f"{path} (search section)")
    return settings, search


def plan(path: str | Path, overrides: list[str] | None = None, output: str | None = None,
         smoke: bool = False) -> CGNPlan:
    """Resolve every grid point now, so a bad value fails before Ray starts."""
    from kdci_ray.config import parse_overrides
    from kdci_ray.search.space import grid_points

    settings, search = load(path)
    over = parse_overrides(overrides or [])
    if smoke:
        over["smoke"] = True
    where = str(path)
    points = grid_points(search, where, cgn_config.check_keys)
    configs = [cgn_config.resolve(settings, config_layer(p), over, where=where) for p in points]
    name = str(settings["name"])
    out_dir = Path(output).expanduser().resolve() if output else REPO / "results" / name
    return CGNPlan(name, settings, search, over, out_dir, configs, points)


def trial(params: dict[str, Any], settings: dict[str, Any], overrides: dict[str, Any],
          cases: dict[str, dict[str, dict[str, Any]]]) -> None:
    """One Tune trial: resolve, run the pipeline, write its files, report once."""
    from ray import tune

    from kdci_ray.cgn.pipeline import run
    from kdci_ray.train.runtime import limit_threads

    limit_threads()
    trial_dir = Path(tune.get_context().get_trial_dir())
    cfg = cgn_config.resolve(settings, config_layer(expand(params, cases)), overrides)
    cgn_config.save(cfg, trial_dir / "config.yaml")
    metrics = run(cfg, trial_dir, log=lambda msg: print(msg, flush=True))
    row = {"variant": variant_name(params), "seed": cfg.seed, **metrics}
    (trial_dir / "metrics.json").write_text(json.dumps(row, indent=2))
    tune.report({k: v for k, v in row.items() if isinstance(v, (int, float))})


def variant_name(params: dict[str, Any]) -> str:
    """The ``variant`` case's name, else the searched values other than the seed, else
    ``baseline``."""
    if f"{CASES}.variant" in params:
        return str(params[f"{CASES}.variant"])
    parts = [f"{column_name(k) if is_case_key(k) else k.rsplit('.', 1)[-1]}={v}"
             for k, v in sorted(params.items()) if k != "seed"]
    return ",".join(parts) or "baseline"


def run_sweep(p: CGNPlan, resume: bool = False) -> str:
    """Run the grid on Ray Tune (local Ray or ``$RAY_ADDRESS``); returns the table. ``resume``
    continues the interrupted sweep in ``p.out_dir``: finished trials are kept, the others run
    again (their finished stages come back from the SKDCGN cache, ``kdci_ray.cgn.cache``)."""
    import ray
    from ray import tune

    from kdci_ray.search.space import build_param_space
    from kdci_ray.tune.driver import init_ray

    check = cgn_config.check_keys
    started = init_ray()
    try:
        trainable = tune.with_resources(
            tune.with_parameters(trial, settings=p.settings, overrides=p.overrides,
                                 cases=case_lookup(p.search, p.name, check)),
            {"cpu": 1})
        tuner = tune.Tuner.restore(str(p.out_dir), trainable, resume_unfinished=True,
                                   resume_errored=True) if resume else tune.Tuner(
            trainable, param_space=build_param_space(p.search, p.name, check),
            tune_config=tune.TuneConfig(trial_dirname_creator=_dirname,
                                        trial_name_creator=_dirname),
            run_config=tune.RunConfig(name=p.out_dir.name, storage_path=str(p.out_dir.parent),
                                      verbose=1))
        tuner.fit()
    finally:
        if started:
            ray.shutdown()
    return report(p.out_dir, p.name)


def _dirname(t: Any) -> str:
    params = dict(t.evaluated_params)
    seed = params.pop("seed", None)
    name = variant_name(params).replace(",", "_").replace("=", "")
    index = t.trial_id.rsplit("_", 1)[-1]
    return f"{name}" + (f"_seed{seed}" if seed is not None else "") + f"_{index}"


def rows(sweep_dir: Path) -> pd.DataFrame:
    """One row per finished trial (its ``metrics.json``), sorted by variant then seed."""
    found = [json.loads(f.read_text()) for f in sorted(sweep_dir.glob("*/metrics.json"))]
    frame = pd.DataFrame(found, columns=COLUMNS + EXTRA) if found else \
        pd.DataFrame(columns=COLUMNS + EXTRA)
    return frame.sort_values(["variant", "seed"], kind="stable").reset_index(drop=True)


def _ms(values: pd.Series, pct: bool = True) -> str:
    v = values.dropna().astype(float)
    if v.empty:
        return "–"
    scale = 100.0 if pct else 1.0
    mean = v.mean() * scale
    if len(v) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {v.std(ddof=1) * scale:.2f}"


def summary_markdown(frame: pd.DataFrame, title: str) -> str:
    """Mean ± std per variant; each variant's effect on student-counterfactual accuracy."""
    lines = [f"## {title}", "",
             "| variant | n | biased (%) | teacher CF (%) | student CF (%) | oracle (%) | "
             "retained gain | params s/t | speed s/t |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = list(dict.fromkeys(frame["variant"]))
    for name in order:
        g = frame[frame["variant"] == name]
        lines.append(f"| {name} | {len(g)} | {_ms(g['acc_biased'])} | "
                     f"{_ms(g['acc_teacher_cf'])} | {_ms(g['acc_student_cf'])} | "
                     f"{_ms(g['acc_oracle'])} | {_ms(g['retained_gain'], False)} | "
                     f"{_ms(g['param_ratio'], False)} | {_ms(g['sample_speed_ratio'], False)} |")
    if len(order) > 1:
        base = frame[frame["variant"] == order[0]]
        lines += ["", f"### Effect of each variant against `{order[0]}` (shifted-test accuracy "
                      f"of the student-counterfactual classifier, same seeds)", "",
                  "| variant | Δ student CF | Δ teacher CF |", "|---|---:|---:|"]
        for name in order[1:]:
            g = frame[frame["variant"] == name]
            deltas = []
            for col in ("acc_student_cf", "acc_teacher_cf"):
                d = g.set_index("seed")[col] - base.set_index("seed")[col]
                d = d.dropna()
                deltas.append("–" if d.empty else f"{100 * d.mean():+.2f} pp")
            lines.append(f"| {name} | {deltas[0]} | {deltas[1]} |")
    return "\n".join(lines) + "\n"


def report(sweep_dir: Path, title: str | None = None) -> str:
    frame = rows(sweep_dir)
    frame.to_csv(sweep_dir / "summary.csv", index=False)
    text = summary_markdown(frame, title or sweep_dir.name) if len(frame) else \
        f"## {title or sweep_dir.name}\n\nno finished trial yet\n"
    (sweep_dir / "summary.md").write_text(text)
    return text


def prepare_output(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """A new directory, the interrupted sweep to ``resume``, or an earlier one to ``overwrite``;
    anything else is refused untouched."""
    from kdci_ray.config import ConfigError

    started = any(out_dir.glob("experiment_state-*.json"))
    occupied = out_dir.is_dir() and any(out_dir.iterdir())
    if resume and overwrite:
        raise ConfigError("--resume continues a sweep and --overwrite replaces it: pass one")
    if resume and not started:
        raise ConfigError(f"nothing to resume in {out_dir}: no Ray Tune experiment state there; "
                          f"run without --resume to start the sweep")
    if not resume and occupied:
        if not started:
            raise ConfigError(f"refusing to write into {out_dir}: it is not empty and holds no "
                              f"sweep; choose another --output")
        if not overwrite:
            raise ConfigError(f"{out_dir} already holds a sweep; pass --resume to continue it, "
                              f"--overwrite to replace it, or choose another --output")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def main(config: str, overrides: list[str], output: str | None, smoke: bool, log,
         resume: bool = False, overwrite: bool = False) -> int:
    start = time.perf_counter()
    p = plan(config, overrides, output, smoke)
    prepare_output(p.out_dir, resume, overwrite)
    log(f"{len(p.configs)} SKDCGN trial(s) -> {p.out_dir}" + (" (resumed)" if resume else ""))
    table = run_sweep(p, resume)
    print(table, flush=True)
    frame = rows(p.out_dir)
    log(f"wrote {p.out_dir / 'summary.csv'} and summary.md; {len(frame)} of {len(p.configs)} "
        f"trials finished; wall time {time.perf_counter() - start:.0f} s")
    return 0 if len(frame) == len(p.configs) else 1
