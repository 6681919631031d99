"""Issue 25: the post-hoc label-shift readings, the teacher_ref fusion, seeds that draw their own
substitution data, and the benchmark's pass rule.

Readings are computed from one vanilla student at its final evaluation and change nothing it
does; ``teacher_ref`` is about 0 where the student mirrors the teacher and recovers a planted bias;
the oracle (fitted on the test labels) is never a shipped prediction; with ``pool.seed: -1`` two
seeds draw different pools, selections and dictionaries.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.experiments.dfkd.config import CHOICES
from kdci_ray.kdci import KDCIAttention, load_student
from kdci_ray.results import shift_readings
from kdci_ray.train.loop import Collect, Distillation, distill
from kdci_ray.train.readings import DEPLOYABLE, READINGS, REPORT_ONLY, biases
from kdci_ray.train.runtime import current_runtime

READING_KEYS = [f"eval/acc_{r}" for r in READINGS]


def _run(settings: dict, **over) -> tuple[dict, Collect]:
    rep = Collect()
    final = distill(resolve(settings, over), rep)
    return final, rep


@pytest.mark.parametrize("method", ["dfnd", "fast"])
def test_readings_report_every_reading_and_leave_the_student_as_it_was(tiny_settings,
                                                                       method) -> None:
    plain, plain_rep = _run(tiny_settings, method=method)
    read, read_rep = _run(tiny_settings, method=method, **{"shift.readings": True,
                                                           "shift.heldout": 48})
    student, reference = read_rep.state["state_dict"], plain_rep.state["state_dict"]
    assert all(torch.equal(student[k], reference[k]) for k in reference)  # bit for bit
    assert all(read[k] == v for k, v in plain.items() if not k.startswith("time/"))
    assert all(0.0 <= read[k] <= 1.0 for k in READING_KEYS), read
    assert read["shift/prior_ratio"] >= 1.0 and math.isfinite(read["shift/tau"])
    # only the final evaluation carries them
    assert not any(k in m for _, m in read_rep.history[:-1] for k in READING_KEYS)


def test_teacher_ref_is_zero_when_the_student_mirrors_the_teacher_and_recovers_a_bias() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(600, 10, generator=g) * 3
    test_logits, labels = torch.randn(50, 10, generator=g), torch.randint(10, (50,), generator=g)
    counts = torch.arange(1, 11) * 10
    found, metrics = biases(counts, test_logits, labels, kd_posteriors=None,
                            heldout_student=teacher, heldout_teacher=teacher, ridge=1e-6)
    assert found["teacher_ref"].abs().max() < 1e-4
    assert abs(metrics["shift/tau"]) < 1e-4
    planted = torch.linspace(-1.0, 1.0, 10)
    found, _ = biases(counts, test_logits, labels, kd_posteriors=None,
                      heldout_student=teacher - planted, heldout_teacher=teacher, ridge=1e-6)
    assert torch.allclose(found["teacher_ref"], planted - planted.mean(), atol=1e-3)
    # the control is the realised prior's correction: minus its centred log
    log_pi = torch.log((counts + 0.5) / (counts.sum() + 5.0))
    assert torch.allclose(found["control"], -(log_pi - log_pi.mean()), atol=1e-6)


def test_the_oracle_is_never_a_shipped_prediction(tiny_settings) -> None:
    assert REPORT_ONLY == ("oracle",) and "oracle" not in DEPLOYABLE
    assert "oracle" not in CHOICES["kdci.fusion"] and "oracle" not in KDCIAttention.FUSIONS
    with pytest.raises(ConfigError, match="kdci.fusion"):
        resolve(tiny_settings, {"kdci.enabled": True, "kdci.fusion": "oracle"})
    table = pd.DataFrame([_gain("dfnd", lv, r, 1.0) for lv in (1.0, 8.0, 64.0)
                          for r in ("control", "oracle")])
    verdicts = [line for line in _verdict_lines(table)]
    assert any(line.startswith("| control |") for line in verdicts)
    assert not any(line.startswith("| oracle |") for line in verdicts)  # no verdict, no ship


def _gain(method: str, level: float, reading: str, mean: float, half: float = 0.5) -> dict:
    return {"method": method, "shift.imbalance": level, "reading": reading, "kind": "post hoc",
            "n": 10, "mean_pp": mean, "low_pp": mean - half, "high_pp": mean + half}


def _verdict_lines(table: pd.DataFrame) -> list[str]:
    lines = []
    for reading, rows in table[table["reading"] != shift_readings.ORACLE].groupby("reading"):
        passed, _ = shift_readings.verdict(rows)
        lines.append(f"| {reading} | {passed} |")
    return lines


@pytest.mark.parametrize(("cells", "expected"), [
    ({1.0: (0.1, 0.5), 8.0: (3.0, 1.0), 64.0: (4.0, 1.0)}, True),
    ({1.0: (0.1, 0.5), 8.0: (0.4, 1.0), 64.0: (4.0, 1.0)}, False),  # r = 8 interval has 0
    ({1.0: (0.5, 0.6), 8.0: (3.0, 1.0), 64.0: (4.0, 1.0)}, False),  # r = 1: |mean| >= 0.3
    ({1.0: (0.1, 0.05), 8.0: (3.0, 1.0), 64.0: (4.0, 1.0)}, False),  # r = 1 excludes 0
])
def test_the_pass_rule_on_dfnd(cells, expected) -> None:
    rows = pd.DataFrame([_gain("dfnd", lv, "x", m, h) for lv, (m, h) in cells.items()]
                        + [_gain("fast", lv, "x", 0.0) for lv in cells])
    assert shift_readings.verdict(rows)[0] is expected


def test_the_pass_rule_on_fast_and_with_a_level_missing() -> None:
    dfnd = [_gain("dfnd", 1.0, "x", 0.0), _gain("dfnd", 8.0, "x", 3.0),
            _gain("dfnd", 64.0, "x", 3.0)]
    fast_low = pd.DataFrame(dfnd + [_gain("fast", 8.0, "x", -0.6)])
    passed, why = shift_readings.verdict(fast_low)
    assert passed is False and "Fast r=8" in why
    assert shift_readings.verdict(pd.DataFrame(dfnd[1:]))[0] is None


def _dictionary_of(settings: dict, seed: int, pool_seed: int):
    cfg = resolve(settings, {"method": "dfnd", "seed": seed, "pool.seed": pool_seed,
                             "kdci.enabled": True, "kdci.cache": False})
    run = Distillation(cfg, current_runtime(False))
    run._synthesize(0)  # the selection and the build-once dictionary (not stored)
    return cfg, run.method.subset, run.kdci, run.teacher


def test_two_seeds_draw_their_own_pool_selection_and_dictionary(tiny_settings) -> None:
    cfg1, subset1, kdci1, teacher = _dictionary_of(tiny_settings, 1, -1)
    cfg2, subset2, kdci2, _ = _dictionary_of(tiny_settings, 2, -1)
    assert (cfg1.pool.seed, cfg2.pool.seed) == (1, 2)  # resolved: the saved config says it
    assert subset1.key != subset2.key  # another pool, so another selection
    assert not torch.equal(subset1.images, subset2.images)
    assert kdci1.spec(teacher, subset1.key).seed == 1  # and another clustering seed
    assert not torch.equal(kdci1.dictionary.prototypes, kdci2.dictionary.prototypes)
    # the default draw (pool.seed 0) is shared by every seed
    _, shared1, k1, _ = _dictionary_of(tiny_settings, 1, 0)
    _, shared2, k2, _ = _dictionary_of(tiny_settings, 2, 0)
    assert shared1.key == shared2.key
    assert torch.equal(k1.dictionary.prototypes, k2.dictionary.prototypes)


def test_teacher_ref_fusion_trains_as_vanilla_and_ships_its_fitted_bias(tiny_settings,
                                                                        tmp_path) -> None:
    over = {"method": "dfnd", "kdci.enabled": True, "kdci.fusion": "teacher_ref",
            "kdci.train_through": False, "shift.heldout": 48}
    final, rep = _run(tiny_settings, **over)
    _, vanilla = _run(tiny_settings, method="dfnd")
    student = rep.state["state_dict"]
    assert all(torch.equal(student[k], v) for k, v in vanilla.state["state_dict"].items())
    bias = rep.state["kdci"]["bias"]
    assert bias.abs().sum() > 0 and final["shift/bias_norm"] == pytest.approx(
        float(bias.norm()), rel=1e-5)
    path = tmp_path / "student.pt"
    torch.save(rep.state, path)
    raw, shipped = load_student(path), load_student(path, compensated=True)
    x = torch.randn(5, 1, 16, 16)
    assert torch.allclose(shipped(x).logits, raw(x).logits + bias, atol=1e-6)
    with pytest.raises(ConfigError, match="train_through"):
        resolve(tiny_settings, {**over, "kdci.train_through": True})
    with pytest.raises(ConfigError, match="held-out"):
        resolve(tiny_settings, {**over, "method": "dafl"})
    with pytest.raises(ConfigError, match="leaves out"):  # DFND keeping the whole pool
        resolve(tiny_settings, {**over, "dfnd.select_n": 0})


def test_the_report_section_pairs_every_reading_and_arm_by_seed() -> None:
    rows = []
    for method, level, seed in [(m, lv, s) for m in ("dfnd", "fast") for lv in (1.0, 8.0, 64.0)
                                for s in range(4)]:
        base = 0.8 - 0.01 * seed
        gain = 0.03 if method == "dfnd" and level > 1 else 0.0
        rows.append({"trial": f"v{method}{level}{seed}", "schedule": method, "arm": "vanilla",
                     "shift.imbalance": level, "seed": seed, "kdci": False, "acc": base,
                     "acc_kdci": math.nan, "acc_control": base + gain + 0.001 * seed,
                     "acc_oracle": base + 0.05, "data_prior_ratio": level,
                     "data_prior_ratio_em": level})
        rows.append({"trial": f"s{method}{level}{seed}", "schedule": method, "arm": "softmax",
                     "shift.imbalance": level, "seed": seed, "kdci": True, "acc": base - 0.1,
                     "acc_kdci": base - 0.02, "acc_control": math.nan, "acc_oracle": math.nan,
                     "data_prior_ratio": level, "data_prior_ratio_em": level})
    frame = pd.DataFrame(rows)
    table = shift_readings.gains(frame)
    softmax = table[(table["reading"] == "softmax")]
    assert softmax["mean_pp"].round(6).eq(-2.0).all()  # acc_kdci of the arm - vanilla acc
    control = table[(table["reading"] == "control") & (table["method"] == "dfnd")
                    & (table["shift.imbalance"] == 8.0)].iloc[0]
    assert control["mean_pp"] == pytest.approx(3.15) and control["low_pp"] > 0
    assert control["of_oracle"] == pytest.approx(3.15 / 5.0)
    text = "\n".join(shift_readings.markdown(frame))
    assert "| control | PASS |" in text and "| softmax | FAIL |" in text
    assert "| oracle |" not in text.split("Pass rule")[1]  # a ceiling: no verdict
