"""SKDCGN configs, the sweep's table, and one smoke sweep through the one engine (``kdci-ray
sweep`` of a ``kind: skdcgn`` file, and its ``kdci-ray cgn`` alias) on Ray Tune."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdci_ray.cgn import config as cgn_config
from kdci_ray.engine import plan_sweep as plan
from kdci_ray.errors import ConfigError
from kdci_ray.results.skdcgn import COLUMNS, SWAPS, summary_markdown

REPO = Path(__file__).resolve().parents[1]


def test_keys_are_checked_typed_and_smoke_shrinks_everything() -> None:
    with pytest.raises(ConfigError, match="unknown SKDCGN config key 'student.widht'.*"
                                          "did you mean 'student.width'"):
        cgn_config.resolve({"student.widht": 4})
    with pytest.raises(ConfigError, match="student.width"):
        cgn_config.resolve({"student.width": "wide"})
    with pytest.raises(ConfigError, match="data.variant' must be one of colored"):
        cgn_config.resolve({"data.variant": "mnist"})
    with pytest.raises(ConfigError, match="must compress the teacher"):
        cgn_config.resolve({"student.width": 20, "teacher.width": 32})
    with pytest.raises(ConfigError, match="augmentation.transparency"):
        cgn_config.resolve({"augmentation.transparency": 0.0})
    with pytest.raises(ConfigError, match="'composition.transparency' was renamed to "
                                          "'augmentation.transparency'"):
        cgn_config.resolve({"composition.transparency": 0.75})
    cfg = cgn_config.resolve({"augmentation": {"transparency": 0.75}, "seed": 3})
    assert cfg.augmentation.transparency == 0.75 and cfg.seed == 3
    smoke = cgn_config.resolve({"smoke": True})
    assert smoke.teacher.steps == cgn_config.SMOKE["teacher.steps"] < cfg.teacher.steps
    assert set(cgn_config.to_flat(cfg)) == set(cgn_config.valid_keys())


def test_composition_study_expands_to_variants_times_seeds() -> None:
    p = plan(REPO / "tune_configs" / "skdcgn_cf_augmentation.yaml")
    assert len(p.configs) == 18
    by_variant: dict[str, list] = {}
    assert p.kind.name == "skdcgn"
    for point, cfg in zip(p.parsed.points(), p.configs, strict=True):
        by_variant.setdefault(point["cases.variant"]["name"], []).append(cfg)
    assert list(by_variant) == ["baseline", "mask_noise", "transparent", "rotated", "mask_loss",
                                "cf_per_mask_5"]
    assert all(len(c) == 3 for c in by_variant.values())
    assert {c.augmentation.transparency for c in by_variant["transparent"]} == {0.75}
    assert {c.student.mask_loss_weight for c in by_variant["mask_loss"]} == {0.5}
    assert {c.augmentation.per_mask for c in by_variant["baseline"]} == {1}
    assert [c.seed for c in by_variant["rotated"]] == [0, 1, 2]
    assert plan(REPO / "tune_configs" / "skdcgn_double_colored.yaml").configs[0].data.variant \
        == "double_colored"
    # smoke mode keeps the first seed: --only seed=0 cut through SKDCGN cases
    smoke = plan(REPO / "tune_configs" / "skdcgn_cf_augmentation.yaml", smoke=True)
    assert len(smoke.configs) == 6 and {c.seed for c in smoke.configs} == {0}
    assert all(c.smoke for c in smoke.configs) and smoke.only == ["seed=0"]


def test_a_case_with_an_unknown_key_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"kind": "skdcgn", "search": {"cases": {"variant": [
        {"name": "x", "augmentation.transparncy": 0.5}]}}}))
    with pytest.raises(ConfigError, match="augmentation.transparncy.*did you mean "
                                          "'augmentation.transparency'"):
        plan(bad)


def test_summary_states_each_variants_effect_on_the_same_seeds() -> None:
    frame = pd.DataFrame([
        {"variant": "baseline", "seed": 0, "acc_biased": 0.1, "acc_teacher_cf": 0.8,
         "acc_student_cf": 0.7, "acc_oracle": 0.95, "retained_gain": 6 / 7, "param_ratio": 0.2,
         "sample_speed_ratio": 5.0},
        {"variant": "baseline", "seed": 1, "acc_biased": 0.1, "acc_teacher_cf": 0.9,
         "acc_student_cf": 0.8, "acc_oracle": 0.95, "retained_gain": 7 / 8, "param_ratio": 0.2,
         "sample_speed_ratio": 5.0},
        {"variant": "noisy", "seed": 0, "acc_biased": 0.1, "acc_teacher_cf": 0.8,
         "acc_student_cf": 0.6, "acc_oracle": 0.95, "retained_gain": 5 / 7, "param_ratio": 0.2,
         "sample_speed_ratio": 5.0},
        {"variant": "noisy", "seed": 1, "acc_biased": 0.1, "acc_teacher_cf": 0.95,
         "acc_student_cf": 0.6, "acc_oracle": 0.95, "retained_gain": 0.5, "param_ratio": 0.2,
         "sample_speed_ratio": 5.0}]).assign(trial="t", label_fidelity=0.9, kid=0.002)[COLUMNS]
    text = summary_markdown(frame, "study")
    assert "| baseline | 2 | 10.00 ± 0.00 | 85.00 ± 7.07 | 75.00 ± 7.07 |" in text
    # student CF: (0.6-0.7 + 0.6-0.8)/2 = -15 pp; teacher CF: (0 + 0.05)/2 = +2.5 pp
    assert "| noisy | student CF | -15.00 pp | [-78.53, +48.53] | no | 2 | 0 |" in text
    assert "| noisy | teacher CF | +2.50 pp |" in text
    assert "| noisy | retained gain | -0.259 | [-1.734, +1.216] | no | 2 | 0 |" in text
    assert "| 6/7 |" not in text and "| 90.00 ± 0.00 | 2.00 ± 0.00 | 0.20 ± 0.00 |" in text
    assert "swaps" not in text  # no control measured: no control table
    with_swaps = frame.assign(**{c: 0.5 for c in SWAPS})
    with_swaps.loc[with_swaps["variant"] == "noisy", "acc_cf_STT"] = 0.3
    text = summary_markdown(with_swaps, "study")
    assert "### Teacher/student swaps" in text
    assert "| noisy | 87.50 ± 10.61 | 30.00 ± 0.00 | 50.00 ± 0.00 |" in text


def test_cgn_smoke_sweep_through_the_cli(ray_session, tmp_path: Path, capsys) -> None:
    from kdci_ray.cli import main

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"name": "study", "data.variant": "colored", "search": {
        "cases": {"variant": [{"name": "baseline", "augmentation.transparency": 1.0},
                              {"name": "transparent", "augmentation.transparency": 0.75}]},
        "seed": [0]}}))
    out = tmp_path / "sweep"
    code = main(["cgn", str(config), "--smoke", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    rows = pd.read_csv(out / "summary.csv")
    assert list(rows.columns[:len(COLUMNS)]) == COLUMNS
    assert list(rows["variant"]) == ["baseline", "transparent"] and list(rows["seed"]) == [0, 0]
    for col in ("acc_biased", "acc_teacher_cf", "acc_student_cf", "acc_oracle"):
        assert rows[col].between(0, 1).all()
    assert (rows["param_ratio"] < 0.25).all() and (rows["sample_speed_ratio"] > 0).all()
    # the two variants shared one teacher and one student set: built once, loaded once
    metrics = [json.loads(p.read_text()) for p in sorted(out.glob("*/metrics.json"))]
    assert sorted(m["teacher_cached"] for m in metrics) == [0.0, 1.0]
    assert sorted(m["students_cached"] for m in metrics) == [0.0, 1.0]
    # biased and oracle classifiers: each trained once in the sweep, loaded by the other trial
    # (which trial trains which depends on timing: the trials run side by side)
    assert sum(m["references_cached"] for m in metrics) == 2.0
    assert len({(m["acc_biased"], m["acc_oracle"]) for m in metrics}) == 1
    trial_dirs = sorted(p.parent for p in out.glob("*/metrics.json"))
    for d in trial_dirs:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        assert cfg["smoke"] and cfg["data.variant"] == "colored"
        assert (d / "samples.png").is_file() and list(d.glob("events.out.tfevents.*"))
    assert {yaml.safe_load((d / "config.yaml").read_text())["augmentation.transparency"]
            for d in trial_dirs} == {1.0, 0.75}
    table = (out / "summary.md").read_text()
    assert "### Effect of each variant against `baseline`" in table and "| transparent |" in table

    # the same sweep again is refused; --resume keeps the finished trials (nothing reruns)
    def outputs() -> dict:  # what a rerun would rewrite: metrics, Tune's reports, TensorBoard
        return {d: ((d / "metrics.json").read_text(), (d / "result.json").read_text(),
                    sorted(p.name for p in d.glob("events.out.tfevents.*"))) for d in trial_dirs}

    written = outputs()
    code = main(["cgn", str(config), "--smoke", "--output", str(out)])
    assert code == 2 and "--resume" in capsys.readouterr().err
    code = main(["cgn", str(config), "--smoke", "--output", str(out), "--resume"])
    assert code == 0
    assert outputs() == written
    assert (out / "summary.md").read_text() == table


def test_input_files_in_an_experiment_file_are_read_beside_it(tmp_path: Path,
                                                              monkeypatch) -> None:
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "published.yaml"
    config.write_text(yaml.safe_dump({
        "kind": "skdcgn", "teacher.mode": "pretrained", "data.published": True,
        "data.variant": "wildlife", "teacher.checkpoint": "../weights/teacher.pth",
        "data.textures": "../textures"}))
    cfg = plan(config).configs[0]
    assert cfg.teacher.checkpoint == str(tmp_path / "weights" / "teacher.pth")
    assert cfg.data.textures == str(tmp_path / "textures")
    # a relative path from the command line is read against the working directory, at once
    monkeypatch.chdir(tmp_path)
    relative = plan(config, overrides=["teacher.checkpoint=w.pth"])
    assert relative.configs[0].teacher.checkpoint == str(tmp_path / "w.pth")
    assert relative.overrides["teacher.checkpoint"] == str(tmp_path / "w.pth")  # as recorded
    absolute = plan(config, overrides=[f"teacher.checkpoint={tmp_path / 'other.pth'}",
                                       "student.losses=pixel", "retrain.steps=3"])
    assert absolute.configs[0].teacher.checkpoint == str(tmp_path / "other.pth")
    # command-line keys are the kind's (SKDCGN-only keys were once checked as distillation keys)
    assert absolute.configs[0].student.losses == "pixel" and absolute.configs[0].retrain.steps == 3


def test_the_published_teacher_config_finds_its_teacher_beside_the_repository() -> None:
    p = plan(REPO / "tune_configs" / "skdcgn_pretrained_double_colored.yaml")
    assert [c.seed for c in p.configs] == [0, 1, 2]
    cfg = p.configs[0]
    assert cfg.teacher.mode == "pretrained" and cfg.data.published
    assert cfg.teacher.checkpoint == str(
        (REPO.parent / "shared" / "data" / "cgn_mnist" / "weights" /
         "cgn_double_colored_MNIST.pth").resolve())
    # TinyGAN's settings, as the issue asks
    from kdci_ray.cgn.student import TINYGAN

    assert all(cgn_config.CGN_SCHEMA.value(cfg, k) == v for k, v in TINYGAN.items())


def _published(tmp: Path, **extra) -> Path:
    body = {"kind": "skdcgn", "teacher.mode": "pretrained", "data.published": True,
            "teacher.checkpoint": str(tmp / "teacher.pth"), **extra}
    path = tmp / "published.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_published_teacher_inputs_are_refused_before_ray(tmp_path: Path, capsys,
                                                         monkeypatch) -> None:
    from refusal import assert_refused

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    no_published = tmp_path / "no_published.yaml"
    no_published.write_text(yaml.safe_dump({"kind": "skdcgn", "teacher.mode": "pretrained",
                                            "teacher.checkpoint": "/t.pth"}))
    assert_refused(capsys, ["sweep", str(no_published), "--output", str(out)],
                   ["generate 32x32 images", "set data.published: true"], out)
    assert_refused(capsys, ["sweep", str(_published(tmp_path)), "--output", str(out),
                            "teacher.checkpoint=rel.pth"],
                   [f"checkpoint not found: {tmp_path / 'rel.pth'}"], out)  # the cwd's
    (tmp_path / "textures" / "object").mkdir(parents=True)  # no background/, no JPEGs
    wildlife = _published(tmp_path, **{"data.variant": "wildlife",
                                       "data.textures": str(tmp_path / "textures")})
    assert_refused(capsys, ["sweep", str(wildlife), "--output", str(out)],
                   [str(tmp_path / "textures"), "object/"], out)
    assert_refused(capsys, ["sweep", str(_published(tmp_path)), "--output", str(out),
                            "composition.rotation=30"],
                   ["'composition.rotation' was renamed to 'augmentation.rotation'"], out)


def test_variants_keep_the_sweeps_order_not_the_alphabets(tmp_path: Path) -> None:
    from kdci_ray.results.skdcgn import rows

    for trial, variant, seed in (("zeta_seed1_00002", "zeta", 1), ("alpha_seed0_00001", "alpha", 0),
                                 ("zeta_seed0_00000", "zeta", 0)):
        (tmp_path / trial).mkdir()
        (tmp_path / trial / "metrics.json").write_text(json.dumps(
            {"variant": variant, "seed": seed, "acc_student_cf": 0.5}))
    frame = rows(tmp_path)
    assert list(frame["trial"]) == ["zeta_seed0_00000", "zeta_seed1_00002", "alpha_seed0_00001"]
