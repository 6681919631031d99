"""NaN is never accepted (issue 13): a teacher with NaN weights is refused before Ray starts; a
run whose loss turns non-finite stops with its reason, unretried, and the table says so."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from kdci_ray.cli import main
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.methods import METHODS
from kdci_ray.models import create_model, save_checkpoint
from kdci_ray.results.table import rows_from_sweep, summarize
from kdci_ray.train.loop import Collect, distill, stop_reason
from kdci_ray.train.run_logs import STOPPED_FILE

BROKEN = "non-finite logits (NaN/inf) on the test split; the checkpoint is broken"
THREE_ROUNDS = {"method": "dafl", "train.rounds": 3, "train.kd_steps": 2, "train.eval_every": 1}


def _nan_checkpoint(tmp_path: Path) -> Path:
    model = create_model("tiny_cnn", 10, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return save_checkpoint(model, tmp_path / "nan_teacher.pt", test_acc=0.99)


@pytest.mark.parametrize("which", ["teacher", "kdci source model"])
def test_a_nan_checkpoint_is_refused_before_ray_starts(tiny_settings, tmp_path, capsys,
                                                       monkeypatch, which) -> None:
    import kdci_ray.engine as engine
    from kdci_ray.engine import runner

    def no_ray() -> bool:
        raise AssertionError("Ray started although the checkpoint is broken")

    monkeypatch.setattr(engine, "init_ray", no_ray)
    monkeypatch.setattr(runner, "init_ray", no_ray)
    nan = str(_nan_checkpoint(tmp_path))
    body = ({"teacher.checkpoint": nan} if which == "teacher" else
            {"kdci.enabled": True, "kdci.source": "model", "kdci.source_arch": "tiny_cnn",
             "kdci.source_checkpoint": nan})
    config = tmp_path / "nan.yaml"
    config.write_text(yaml.safe_dump({**tiny_settings, "method": "dafl", **body}))
    out = tmp_path / "out"
    code = main(["sweep", str(config), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"kdci-ray: error: {which.replace('kdci', 'KDCI')} checkpoint {nan}")
    assert BROKEN in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def _nan_on_call(method: str, call: int):
    """``method``'s student loss, turning NaN on its ``call``-th step (1-based)."""
    original = METHODS[method].student_loss
    calls = [0]

    def student_loss(self, student_logits, teacher_logits):
        losses = original(self, student_logits, teacher_logits)
        calls[0] += 1
        if calls[0] == call:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    return student_loss


def _finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_nan_loss_stops_the_run_before_it_reaches_the_weights(tiny_settings,
                                                                monkeypatch) -> None:
    cfg = resolve(tiny_settings, THREE_ROUNDS)
    monkeypatch.setattr(METHODS["dafl"], "student_loss", _nan_on_call("dafl", 3))  # round 2, step 1
    rep = Collect()
    final = distill(cfg, rep)
    assert final["stopped_nonfinite"] == 1.0 and final["finished"] == 0.0
    assert final["round"] == 1 and final["step"] == 2  # one round done, no step after the NaN
    assert stop_reason(final) == ("non-finite loss (nan) in round 2, KD step 1; train.lr may "
                                  "be too high")
    assert rep.history[-1][1]["stopped_nonfinite"] == 1.0  # reported, too
    assert stop_reason(rep.history[0][1]) == ""  # round 1 ended normally
    assert [s.round for s in rep.snapshots] == [1] and rep.state is None  # no final student
    assert all(_finite(s.student["state_dict"]) for s in rep.snapshots)


def test_nan_weights_after_a_finite_loss_never_reach_a_checkpoint(tiny_settings,
                                                                 monkeypatch) -> None:
    def poison(self) -> None:  # the step overflowed the weights although its loss was finite
        if not hasattr(self, "_stepped"):
            self._stepped = True
            with torch.no_grad():
                next(self.ctx.student.parameters()).fill_(float("inf"))

    cfg = resolve(tiny_settings, {**THREE_ROUNDS, "train.kd_steps": 1})
    monkeypatch.setattr(METHODS["dafl"], "after_student_step", poison)
    rep = Collect()
    final = distill(cfg, rep)
    assert stop_reason(final) == ("non-finite student weights after round 1; train.lr may be "
                                  "too high")
    assert rep.snapshots == [] and final["round"] == 0


def _rank_main(rank: int, settings: dict, store_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    try:
        if rank == 1:  # only one rank sees the NaN: both must stop at that step, none may hang
            METHODS["dafl"].student_loss = _nan_on_call("dafl", 3)
        final = distill(resolve(settings, THREE_ROUNDS), Collect())
        torch.save({"final": final, "reason": stop_reason(final)},
                   Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_a_nan_on_one_rank_stops_every_rank_at_that_step(tiny_settings, tmp_path) -> None:
    procs = mp.spawn(_rank_main, args=(tiny_settings, str(tmp_path / "store"), str(tmp_path)),
                     nprocs=2, join=False)
    deadline = time.monotonic() + 180
    while not procs.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in procs.processes:
                proc.kill()
            pytest.fail("the ranks hung: one stopped, the other waited in DDP")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        assert r["reason"] == ("non-finite loss (nan) in round 2, KD step 1; train.lr may be "
                               "too high")
        assert r["final"]["step"] == 2 and r["final"]["finished"] == 0.0


@pytest.mark.parametrize("lr", [1e30, 1e6])  # here: a NaN loss; inf weights, finite loss
def test_a_huge_learning_rate_stops_the_run_and_checkpoints_no_nan(tiny_settings, lr) -> None:
    cfg = resolve(tiny_settings, {"method": "dafl", "train.lr": lr, "train.rounds": 3})
    rep = Collect()
    final = distill(cfg, rep)
    assert final["stopped_nonfinite"] == 1.0 and final["finished"] == 0.0
    assert stop_reason(final).endswith("; train.lr may be too high")
    assert all(_finite(s.student["state_dict"]) for s in rep.snapshots)


def _trial(sweep: Path, name: str, reports: list[dict], stopped: str = "") -> None:
    trial = sweep / name
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"method": "dafl", "seed": int(name[-1])}))
    (trial / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reports))
    if stopped:
        (trial / STOPPED_FILE).write_text(json.dumps({"reason": stopped, "round": 2}))


def test_the_table_says_why_a_trial_stopped_and_counts_no_result(tmp_path) -> None:
    reason = "non-finite loss (nan) in round 2, KD step 1; train.lr may be too high"
    first = {"eval/acc": 0.4, "eval/teacher_acc": 0.9, "round": 1, "finished": 0.0}
    _trial(tmp_path, "t0", [first, {**first, "eval/acc": 0.6, "round": 2, "finished": 1.0}])
    _trial(tmp_path, "t1", [first, {"eval/teacher_acc": 0.9, "round": 1, "finished": 0.0,
                                    "stopped_nonfinite": 1.0}], stopped=reason)
    rows = rows_from_sweep(tmp_path).set_index("trial")
    assert rows.loc["t0", "stopped"] == "" and rows.loc["t0", "finished"]
    assert rows.loc["t1", "stopped"] == reason and not rows.loc["t1", "finished"]
    assert math.isnan(rows.loc["t1", "acc"])  # no result, not its last good evaluation
    summary = summarize(rows.reset_index()).iloc[0]
    assert summary["n"] == 1 and summary["acc_mean"] == pytest.approx(0.6)


def test_a_diverging_trial_is_stopped_not_retried_and_reported(tiny_settings, ray_session,
                                                               tmp_path, capsys) -> None:
    import pandas as pd

    config = tmp_path / "diverge.yaml"
    config.write_text(yaml.safe_dump({**tiny_settings, "method": "dafl", "train.lr": 1e30,
                                      "train.rounds": 3}))
    out = tmp_path / "out"
    code = main(["train", str(config), "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert "trial stopped: " in printed and "interrupted" not in printed
    (trial,) = [p for p in out.iterdir() if (p / STOPPED_FILE).is_file()]
    reason = json.loads((trial / STOPPED_FILE).read_text())["reason"]
    assert reason.endswith("; train.lr may be too high") and reason in printed
    assert not (trial / "failures.jsonl").exists()  # stopped, not failed: never retried
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert row["stopped"] == reason and not row["finished"] and math.isnan(row["acc"])
