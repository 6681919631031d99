"""SKDCGN configs, the sweep's table, and one smoke sweep through the one engine (``kdci-ray
sweep`` of a ``kind: skdcgn`` file, and its ``kdci-ray cgn`` alias) on Ray Tune."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdci_ray.cgn import config as cgn_config
from kdci_ray.config import ConfigError
from kdci_ray.engine import plan_sweep as plan
from kdci_ray.results.skdcgn import COLUMNS, summary_markdown

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
    with pytest.raises(ConfigError, match="composition.transparency"):
        cgn_config.resolve({"composition.transparency": 0.0})
    cfg = cgn_config.resolve({"composition": {"transparency": 0.75}, "seed": 3})
    assert cfg.composition.transparency == 0.75 and cfg.seed == 3
    smoke = cgn_config.resolve({"smoke": True})
    assert smoke.teacher.steps == cgn_config.SMOKE["teacher.steps"] < cfg.teacher.steps
    assert set(cgn_config.to_flat(cfg)) == set(cgn_config.valid_keys())


def test_composition_study_expands_to_variants_times_seeds() -> None:
    p = plan(REPO / "tune_configs" / "skdcgn_composition.yaml")
    assert len(p.configs) == 18
    by_variant: dict[str, list] = {}
    assert p.kind.name == "skdcgn"
    for point, cfg in zip(p.parsed.points(), p.configs, strict=True):
        by_variant.setdefault(point["cases.variant"]["name"], []).append(cfg)
    assert list(by_variant) == ["baseline", "mask_noise", "transparent", "rotated", "mask_loss",
                                "cf_per_mask_5"]
    assert all(len(c) == 3 for c in by_variant.values())
    assert {c.composition.transparency for c in by_variant["transparent"]} == {0.75}
    assert {c.student.mask_loss_weight for c in by_variant["mask_loss"]} == {0.5}
    assert {c.composition.per_mask for c in by_variant["baseline"]} == {1}
    assert [c.seed for c in by_variant["rotated"]] == [0, 1, 2]
    assert plan(REPO / "tune_configs" / "skdcgn_double_colored.yaml").configs[0].data.variant \
        == "double_colored"
    # smoke mode keeps the first seed: --only seed=0 cut through SKDCGN cases
    smoke = plan(REPO / "tune_configs" / "skdcgn_composition.yaml", smoke=True)
    assert len(smoke.configs) == 6 and {c.seed for c in smoke.configs} == {0}
    assert all(c.smoke for c in smoke.configs) and smoke.only == ["seed=0"]


def test_a_case_with_an_unknown_key_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"kind": "skdcgn", "search": {"cases": {"variant": [
        {"name": "x", "composition.transparncy": 0.5}]}}}))
    with pytest.raises(ConfigError, match="composition.transparncy.*did you mean "
                                          "'composition.transparency'"):
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
         "sample_speed_ratio": 5.0}]).assign(trial="t")[COLUMNS]
    text = summary_markdown(frame, "study")
    assert "| baseline | 2 | 10.00 ± 0.00 | 85.00 ± 7.07 | 75.00 ± 7.07 |" in text
    # student CF: (0.6-0.7 + 0.6-0.8)/2 = -15 pp; teacher CF: (0 + 0.05)/2 = +2.5 pp
    assert "| noisy | student CF | -15.00 pp | [-78.53, +48.53] | no | 2 | 0 |" in text
    assert "| noisy | teacher CF | +2.50 pp |" in text
    assert "| noisy | retained gain | -0.259 | [-1.734, +1.216] | no | 2 | 0 |" in text


@pytest.mark.slow
def test_cgn_smoke_sweep_through_the_cli(ray_session, tmp_path: Path, capsys) -> None:
    from kdci_ray.cli import main

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"name": "study", "data.variant": "colored", "search": {
        "cases": {"variant": [{"name": "baseline", "composition.transparency": 1.0},
                              {"name": "transparent", "composition.transparency": 0.75}]},
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
    assert {yaml.safe_load((d / "config.yaml").read_text())["composition.transparency"]
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
