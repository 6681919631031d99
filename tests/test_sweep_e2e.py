"""End to end on real Ray: a Tune grid whose trials train through Ray Train, then the tables."""

from __future__ import annotations

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdci_ray.cli import main
from kdci_ray.engine import check_inputs, plan_sweep, run_sweep
from kdci_ray.engine.sweep_dir import prepare_output
from kdci_ray.models import create_model, load_checkpoint


def test_sweep_writes_tables_tensorboard_configs_and_checkpoints(tiny_settings, ray_session,
                                                                 tmp_path, capsys) -> None:
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("search:\n  method: [dafl]\n  kdci.enabled: [false, true]\n")
    out = tmp_path / "sweep"
    plan = plan_sweep(cfg, [f"{k}={v}" for k, v in tiny_settings.items()], output=str(out))
    check_inputs(plan, log=lambda m: None)
    prepare_output(plan, overwrite=False)
    outcome = run_sweep(plan)
    assert outcome.errors == []
    table = outcome.table

    rows = pd.read_csv(out / "summary.csv")
    for column in ("method", "kdci", "seed", "acc", "acc_kdci", "teacher_acc"):
        assert column in rows.columns
    assert len(rows) == 2 and set(rows["kdci"]) == {True, False}
    assert rows["acc"].between(0, 1).all() and rows["teacher_acc"].gt(0.5).all()
    assert rows.loc[~rows["kdci"], "acc_kdci"].isna().all()
    assert rows.loc[rows["kdci"], "acc_kdci"].between(0, 1).all()
    assert "KDCI − vanilla" in table and (out / "summary.md").read_text() == table

    for _, row in rows.iterrows():
        trial = out / row["trial"]
        assert (trial / "config.yaml").is_file()
        model = create_model("tiny_cnn", 10, 1)
        load_checkpoint(model, trial / "student.pt")  # the final student loads into its arch
        events = EventAccumulator(str(trial))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"eval/acc", "train/loss", "train/kd", "synth/loss", "lr"} <= tags
        assert not {"round", "step", "finished"} & tags  # bookkeeping: metrics.jsonl only
        assert any(t.startswith("kdci/") for t in tags) is bool(row["kdci"])
        assert ("eval/acc_kdci" in tags) is bool(row["kdci"])
        accs = [e.value for e in events.Scalars("eval/acc")]
        assert len(accs) == 2 and accs[-1] == pytest.approx(row["acc"], abs=1e-6)

    # `kdci-ray report` rebuilds the same table from the directory alone
    (out / "summary.csv").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(table.strip())
    for name in ("curves.png", "kdci_gain.png", "report.md"):
        assert (out / name).is_file() and f"wrote {out / name}" in printed
    assert "![KDCI gain](kdci_gain.png)" in (out / "report.md").read_text()
    rebuilt = pd.read_csv(out / "summary.csv")
    pd.testing.assert_frame_equal(rebuilt, rows)


def test_both_trainers_train_the_same_student(tiny_settings, ray_session, tmp_path) -> None:
    """``run.trainer``: the loop in the Tune trial's own process and the loop on a one-worker
    TorchTrainer are the same computation: bit-identical students and metrics, and the saved
    config says which trainer ran (``auto`` resolves to ``tune_trial`` for one CPU worker)."""
    import torch
    import yaml

    cfg = tmp_path / "one.yaml"
    cfg.write_text("method: dafl\nkdci.enabled: true\ntrain.rounds: 3\n")
    students, accs = {}, {}
    for trainer in ("auto", "ray_train"):
        out = tmp_path / trainer
        over = [f"{k}={v}" for k, v in tiny_settings.items()] + [f"run.trainer={trainer}"]
        plan = plan_sweep(cfg, over, output=str(out), single=True)
        check_inputs(plan, log=lambda m: None)
        prepare_output(plan, overwrite=False)
        assert run_sweep(plan).errors == []
        (trial,) = [p for p in out.iterdir() if (p / "config.yaml").is_file()]
        saved = yaml.safe_load((trial / "config.yaml").read_text())
        ran = saved["run.trainer"]
        assert ran == ("tune_trial" if trainer == "auto" else "ray_train")
        assert (trial / "train").is_dir() is (trainer == "ray_train")  # Train's own storage
        students[trainer] = torch.load(trial / "student.pt", weights_only=False)
        accs[trainer] = pd.read_csv(out / "summary.csv").iloc[0][["acc", "acc_kdci"]].tolist()
    assert accs["auto"] == accs["ray_train"]
    one, two = (students[k]["state_dict"] for k in ("auto", "ray_train"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert all(torch.equal(students["auto"]["kdci"][k], students["ray_train"]["kdci"][k])
               for k in students["auto"]["kdci"])
