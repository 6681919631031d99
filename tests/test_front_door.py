"""The front door (issue 23): what the command line and ``kdci_ray.sweep`` take, refuse and make
absolute before anything reaches Ray.

Overrides of a key the search varies, empty or mistyped arguments, an empty experiment or cache
variable, unchecked SKDCGN values and ``kdci.backend: cuml`` without a GPU are refused with one
message; relative paths are read once, against the working directory (command line, dicts,
``$KDCI_RAY_CACHE``) or the experiment file's directory, the same for every kind, and recorded
absolute; a smoke sweep's tables say so first; ``from kdci_ray import ConfigError`` works and the
README's Python example pairs its arms.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from refusal import assert_refused

import kdci_ray
from kdci_ray.engine import plan_sweep
from kdci_ray.engine.placement import NodeShape
from kdci_ray.engine.sweep_dir import prepare_output
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve, save_resolved

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "tune_configs" / "quickstart.yaml"
TINY = {"preset": "embedded", "method": "dafl", "teacher.arch": "tiny_cnn",
        "student.arch": "tiny_cnn", "train.rounds": 2, "train.kd_steps": 2}


def _yaml(path: Path, body: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- 4: searched keys


def test_an_override_of_a_grid_key_is_refused_naming_only(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    err = assert_refused(capsys, ["sweep", str(QUICKSTART), "--smoke", "--only", "seed=0",
                                  "--only", "method=dafl", "kdci.enabled=yes", "--output",
                                  str(out)],
                         ["override kdci.enabled=yes", "search section's grid varies",
                          "--only kdci.enabled=yes"], out)
    assert "count identical trials" in err
    with pytest.raises(ConfigError, match="override seed=3 .*--only seed=3"):
        kdci_ray.sweep({**TINY, "search": {"seed": [0, 1]}}, overrides={"seed": 3},
                       output=out)
    assert not out.exists()


def test_an_override_of_a_case_or_sampled_key_is_refused(tmp_path) -> None:
    cases = {**TINY, "search": {"cases": {"length": [{"name": "short", "train.rounds": 2},
                                                     {"name": "long", "train.rounds": 4}]}}}
    with pytest.raises(ConfigError, match="cases of search 'cases.length' set.*"
                                          "--only cases.length=NAME"):
        plan_sweep(cases, ["train.rounds=3"])
    sampled = {**TINY, "search": {"train.lr": {"loguniform": [0.01, 0.1]}}}
    with pytest.raises(ConfigError, match="search section samples.*narrow its range"):
        plan_sweep(sampled, {"train.lr": 0.05})
    # smoke is no grid key; `train` ignores the search, so its overrides are its values
    assert plan_sweep(cases, ["smoke=true"], smoke=True).configs[0].smoke
    assert plan_sweep(cases, ["train.rounds=3"], single=True).configs[0].train.rounds == 3


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """``(config, overrides)`` of each ``kdci-ray sweep|cgn|dictionary X.yaml ...`` command."""
    text = re.sub(r"\\\n#?", " ", text)
    found = []
    for cfg, rest in re.findall(r"kdci-ray (?:sweep|cgn|dictionary) (\S+\.yaml)([^\n`]*)", text):
        words = rest.split()
        overrides = [w for i, w in enumerate(words) if re.match(r"^[a-z_][a-z_.0-9]*=", w)
                     and (i == 0 or words[i - 1] != "--only")]  # --only selects, not sets
        found.append((cfg, [w if "..." not in w else w.replace("...", "/x") for w in overrides]))
    return found


def test_no_shipped_command_overrides_a_searched_key() -> None:
    sources = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "tune_configs").glob("*"))]
    commands = [c for path in sources for c in _commands(path.read_text())]
    assert any(over for _, over in commands)  # the Table 1 smoke commands are among them
    for config, overrides in commands:
        if overrides:
            plan_sweep(REPO / config, overrides, smoke=True, launch_dir=Path("/tmp"))


# ----------------------------------------------------------------------------- 5: empty, types


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n"])
def test_an_empty_experiment_is_refused(tmp_path, capsys, text) -> None:
    config = _yaml(tmp_path / "empty.yaml", text)
    out = tmp_path / "out"
    assert_refused(capsys, ["sweep", str(config), "--output", str(out)],
                   [f"{config} is empty: an experiment names at least"], out)
    with pytest.raises(ConfigError, match="the experiment given is empty"):
        plan_sweep({})


@pytest.mark.parametrize("argument", [{"smoke": "no"}, {"single": 1}, {"only": "seed=0"},
                                      {"output": "  "}, {"num_samples": "2"}])
def test_sweep_arguments_of_the_wrong_type_are_refused(tmp_path, argument) -> None:
    name = next(iter(argument))
    with pytest.raises(ConfigError, match=f"sweep argument {name} "):
        kdci_ray.sweep({**TINY, "search": {"seed": [0, 1]}},
                       **{"output": tmp_path / "out", **argument})
    assert not (tmp_path / "out").exists()
    for bad in ({"output": ""}, {"overrides": "a=1"}, {"overrides": {1: 2}}, {"config": 3}):
        with pytest.raises(ConfigError, match=f"sweep argument {next(iter(bad))} "):
            plan_sweep(**{"config": TINY, **bad})


def test_resume_and_overwrite_must_be_bools() -> None:
    from kdci_ray.engine.plan import check_sweep_arguments

    for name in ("resume", "overwrite"):
        with pytest.raises(ConfigError, match=f"argument {name} .*must be True or False, got 'no'"):
            check_sweep_arguments(**{name: "no"})
    check_sweep_arguments(resume=False, overwrite=True, smoke=False, output=None, only=None)


def test_an_empty_output_on_the_command_line_is_refused(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_refused(capsys, ["sweep", str(QUICKSTART), "--smoke", "--output", ""],
                   ["output (--output) is empty", "leave --output out"], tmp_path / "results")


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_cache_variable_is_refused(tmp_path, capsys, monkeypatch, value) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDCI_RAY_CACHE", value)
    out = tmp_path / "out"
    assert_refused(capsys, ["sweep", str(QUICKSTART), "--smoke", "--output", str(out)],
                   ["KDCI_RAY_CACHE is set but empty", "unset it"], out)
    assert list(tmp_path.iterdir()) == []  # nothing written where it would have pointed


# ----------------------------------------------------------------------------- 6: paths


def test_relative_paths_are_made_absolute_once_for_every_kind(tmp_path, monkeypatch) -> None:
    """A file's against its directory (settings, grid values, cases), the command line's and a
    dict's against the working directory; the record holds them absolute."""
    work, files = tmp_path / "work", tmp_path / "configs"
    work.mkdir()
    monkeypatch.chdir(work)
    config = _yaml(files / "exp.yaml", {
        **TINY, "data.root": "data", "run.output": "out",
        "search": {"kdci.source_checkpoint": ["a.pt", "/abs/b.pt"],
                   "cases": [{"name": "one", "pool.path": "../pools/npz"},
                             {"name": "two", "pool": {"path": "~/p2"}}]}})
    plan = plan_sweep(config)
    assert plan.configs[0].data.root == str(files / "data") and plan.out_dir == files / "out"
    assert {c.kdci.source_checkpoint for c in plan.configs} == {str(files / "a.pt"), "/abs/b.pt"}
    assert {c.pool.path for c in plan.configs} == {str(tmp_path / "pools/npz"), "~/p2"}
    # the command line: against the working directory, and recorded so
    plan = plan_sweep(config, ["teacher.checkpoint=ck.pt", "data.root=../d"],
                      output="sweep")
    assert plan.overrides["teacher.checkpoint"] == str(work / "ck.pt")
    assert plan.configs[0].data.root == str(tmp_path / "d") and plan.out_dir == work / "sweep"
    prepare_output(plan, overwrite=False)
    record = yaml.safe_load((work / "sweep" / "sweep.yaml").read_text())
    assert record["overrides"]["teacher.checkpoint"] == str(work / "ck.pt")
    assert record["settings"]["data.root"] == str(files / "data")
    # resumed from another directory, the recorded sweep means the same files
    monkeypatch.chdir(tmp_path)
    again = plan_sweep(work / "sweep")
    assert again.configs[0].teacher.checkpoint == str(work / "ck.pt")
    # a dict: against the working directory (or launch_dir); SKDCGN's the same way
    assert plan_sweep({**TINY, "teacher.checkpoint": "t.pt"}, launch_dir=work).configs[0] \
        .teacher.checkpoint == str(work / "t.pt")
    cgn = plan_sweep({"kind": "skdcgn", "teacher.mode": "pretrained", "data.published": True,
                      "teacher.checkpoint": "w.pth"})
    assert cgn.configs[0].teacher.checkpoint == str(tmp_path / "w.pth")


def test_a_relative_cache_is_made_absolute_before_ray(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDCI_RAY_CACHE", "relcache")
    plan_sweep({**TINY})
    assert os.environ["KDCI_RAY_CACHE"] == str(tmp_path / "relcache")
    from kdci_ray.cache import cache_dir

    monkeypatch.chdir(REPO)  # a trial's own directory: the same cache
    assert cache_dir() == tmp_path / "relcache"


def test_a_relative_cache_serves_the_trials_of_a_fresh_run(tmp_path) -> None:
    """The teacher trained before Ray is the one the trials find (its own local Ray, started
    after the front door made the cache absolute)."""
    config = _yaml(tmp_path / "exp.yaml", TINY)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(KDCI_RAY_CACHE="rel", PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-m", "kdci_ray.cli", "sweep", str(config), "--smoke",
                          "--output", "o"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert list((tmp_path / "rel" / "teachers").glob("*.pt"))
    assert pd.read_csv(tmp_path / "o" / "summary.csv")["finished"].all()


def test_a_relative_checkpoint_on_the_command_line_reaches_the_trials(
        tiny_settings, ray_session, tmp_path, monkeypatch, capsys) -> None:
    from kdci_ray.cli import main
    from kdci_ray.models import create_model, save_checkpoint

    monkeypatch.chdir(tmp_path)
    save_checkpoint(create_model("tiny_cnn", 10, 1), tmp_path / "ck.pt")
    config = _yaml(tmp_path / "exp.yaml", {**tiny_settings, "method": "dafl"})
    code = main(["sweep", str(config), "--smoke", "teacher.checkpoint=ck.pt", "--output", "o"])
    assert code == 0, capsys.readouterr()
    saved = yaml.safe_load(next((tmp_path / "o").glob("*/config.yaml")).read_text())
    assert saved["teacher.checkpoint"] == str(tmp_path / "ck.pt")


# ----------------------------------------------------------------------------- 7: values


@pytest.mark.parametrize("override, key", [
    ("student.lr=-1", "student.lr"), ("student.beta1=5", "student.beta1"),
    ("retrain.beta2=1", "retrain.beta2"), ("teacher.code_lr=0", "teacher.code_lr"),
    ("classifier.lr=nan", "classifier.lr"), ("student.adv_every=0", "student.adv_every"),
    ("teacher.latent_dim=0", "teacher.latent_dim"), ("student.pixel_decay=2",
                                                     "student.pixel_decay"),
    ("teacher.mask_max=1.5", "teacher.mask_max"), ("student.adv_weight=-0.1",
                                                   "student.adv_weight")])
def test_skdcgn_values_are_checked_before_ray(tmp_path, capsys, override, key) -> None:
    config = _yaml(tmp_path / "cgn.yaml", {"kind": "skdcgn"})
    out = tmp_path / "out"
    assert_refused(capsys, ["sweep", str(config), "--smoke", override, "--output", str(out)],
                   [f"config key '{key}'"], out)


def test_cuml_without_a_gpu_is_refused_before_any_trial(tmp_path, capsys, monkeypatch) -> None:
    from kdci_ray.cluster import cuml_backend
    from kdci_ray.engine.dfkd import check_cuml_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cuml_backend, "available", lambda: False)
    config = _yaml(tmp_path / "exp.yaml", {**TINY, "kdci.enabled": True, "kdci.backend": "cuml"})
    out = tmp_path / "out"
    assert_refused(capsys, ["sweep", str(config), "--output", str(out)],
                   ["kdci.backend=cuml", "no CUDA GPU with cuML", "kdci.backend: auto"], out)
    plan_sweep(config, ["kdci.enabled=false"])  # KDCI off: no k-means, nothing to refuse
    # on a cluster the workers may have GPUs: refused only when none of its nodes has one
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    plan = plan_sweep(config)
    cpu, gpu = NodeShape("cpu", {"CPU": 8}, 2), NodeShape("g5", {"CPU": 8, "GPU": 1}, 4, True)
    check_cuml_cluster(plan.configs, [cpu, gpu])
    with pytest.raises(ConfigError, match=r"no node of the Ray cluster has a GPU \(nodes: 2 x "
                                          r"cpu\).*kdci.backend: auto"):
        check_cuml_cluster(plan.configs, [cpu])


# ----------------------------------------------------------------------------- 11: messages


@pytest.mark.parametrize("argv", [["trainlr"], ["--smoke", "trainlr"], ["--smoke", "train.lr"]])
def test_a_word_that_is_no_override_gets_a_did_you_mean(tmp_path, capsys, argv) -> None:
    out = tmp_path / "out"
    assert_refused(capsys, ["sweep", str(QUICKSTART), *argv, "--output", str(out)],
                   ["is not a key=value override", "did you mean train.lr=...?"], out)


def test_report_on_a_file_says_it_takes_a_sweep_directory(tmp_path, capsys) -> None:
    file = _yaml(tmp_path / "exp.yaml", TINY)
    err = assert_refused(capsys, ["report", str(file)], [f"{file} is a file",
                                                         "takes a sweep directory"])
    assert "not found" not in err


def test_resume_after_the_record_was_deleted_names_one_way_out(tmp_path, capsys) -> None:
    config = _yaml(tmp_path / "exp.yaml", {**TINY, "search": {"seed": [0, 1]}})
    out = tmp_path / "out"
    prepare_output(plan_sweep(config, output=str(out)), overwrite=False)
    save_resolved(resolve(TINY), out / "seed0_00000" / "config.yaml")
    (out / "sweep.yaml").unlink()
    err = assert_refused(capsys, ["sweep", str(out), "--resume"], ["no sweep.yaml (deleted?)"])
    assert f"--output {out} --resume" in err and f"--output {out} --overwrite" in err
    assert "without --resume" not in err


# ----------------------------------------------------------------------------- 12: smoke note


def _sweep_dir(root: Path, smoke: bool) -> Path:
    for kdci in (False, True):
        trial = root / f"dafl_kdci{int(kdci)}_0000{int(kdci)}"
        save_resolved(resolve({**TINY, "kdci.enabled": kdci, "kdci.k": 4, "smoke": smoke}),
                      trial / "config.yaml")
        report = {"round": 2, "eval/acc": 0.076, "eval/acc_kdci": 0.08, "finished": 1.0}
        (trial / "result.json").write_text(json.dumps(report) + "\n")
    return root


@pytest.mark.parametrize("smoke", [True, False])
def test_a_smoke_sweep_says_so_first(tmp_path, smoke) -> None:
    from kdci_ray.results import report

    sweep = _sweep_dir(tmp_path / "sweep", smoke)
    report(sweep)
    for name in ("report.md", "summary.md"):
        lines = [ln for ln in (sweep / name).read_text().splitlines() if ln.strip()]
        assert lines[0].startswith("#")
        assert ("Smoke run" in lines[1]) is smoke, (name, lines[:3])
    assert (sweep / "report.md").read_text().count("Smoke run") == int(smoke)


# ----------------------------------------------------------------------------- 13: Python


def test_config_error_is_exported_without_importing_torch() -> None:
    code = ("import sys, kdci_ray; assert 'torch' not in sys.modules; "
            "from kdci_ray import ConfigError; from kdci_ray.config import ConfigError as C; "
            "assert ConfigError is C and 'ConfigError' in kdci_ray.__all__")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_pairs_its_arms_by_seed(tmp_path, monkeypatch) -> None:
    plans = []

    def planned(config, **kw):
        plans.append(plan_sweep(config, kw.get("overrides"), str(tmp_path / "out")))
        return SimpleNamespace(summary=pd.DataFrame(columns=["trial", "method", "kdci", "seed",
                                                             "acc", "acc_kdci"]),
                               result_grid=None)

    monkeypatch.setattr(kdci_ray, "sweep", planned, raising=False)
    exec(_readme_example(), {})
    seeds = {on: sorted(c.seed for c in plans[0].configs if c.kdci.enabled is on)
             for on in (False, True)}
    assert seeds[False] == seeds[True] and len(seeds[True]) >= 2


def test_the_readme_example_runs_in_smoke_mode(ray_session, tmp_path, monkeypatch) -> None:
    from kdci_ray.api import sweep

    results = []

    def smoke_sweep(config, **kw):
        results.append(sweep(config, **{**kw, "output": tmp_path / "out", "smoke": True}))
        return results[-1]

    monkeypatch.setattr(kdci_ray, "sweep", smoke_sweep, raising=False)
    exec(_readme_example(), {})
    assert results[0].ok and sorted(results[0].summary["kdci"]) == [False, True]
