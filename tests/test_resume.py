"""Resumable checkpoints of the one loop, in-process: a run resumed from a mid-run checkpoint ends
exactly where the uninterrupted run ends, for every method, with and without KDCI."""

from __future__ import annotations

import pytest
import torch

from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.methods import METHODS
from kdci_ray.train.loop import Collect, distill
from kdci_ray.train.resume import RANK_FILE, load_resume_state, save_snapshot

THREE_ROUNDS = {"train.rounds": 3, "train.eval_every": 1, "pool.size": 400}


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("kdci", [False, True])
def test_resumed_run_matches_the_uninterrupted_run(tiny_settings, method, kdci) -> None:
    cfg = resolve(tiny_settings, {**THREE_ROUNDS, "method": method, "kdci.enabled": kdci})
    whole = Collect()
    final = distill(cfg, whole)
    assert [s.round for s in whole.snapshots] == [1, 2, 3]  # checkpoint_every 0: every eval
    assert [s.final for s in whole.snapshots] == [False, False, True]

    resumed = Collect()
    after = distill(cfg, resumed, resume=whole.snapshots[0].resume)
    # only rounds 2 and 3 ran, with the step counter carried on
    assert [m["round"] for _, m in resumed.history] == [2, 3]
    assert [s for s, _ in resumed.history] == [s for s, _ in whole.history[1:]]
    assert _equal_states(resumed.state["state_dict"], whole.state["state_dict"])
    if kdci:
        assert _equal_states(resumed.state["kdci"], whole.state["kdci"])
    for key in ("eval/acc", "train/loss", "lr"):
        assert after[key] == final[key], key
    assert after["eval/teacher_acc"] == final["eval/teacher_acc"]


def test_checkpoint_interval_and_the_final_checkpoint(tiny_settings) -> None:
    cfg = resolve(tiny_settings, {"train.rounds": 5, "train.eval_every": 1,
                                  "run.checkpoint_every": 2})
    rep = Collect()
    distill(cfg, rep)
    assert len(rep.history) == 5
    assert [s.round for s in rep.snapshots] == [2, 4, 5]  # every 2nd round, and the last


def test_snapshot_files_round_trip_and_a_wrong_rank_is_refused(tiny_settings, tmp_path) -> None:
    cfg = resolve(tiny_settings, {"train.rounds": 2, "kdci.enabled": True})
    rep = Collect()
    distill(cfg, rep)
    save_snapshot(tmp_path, rep.snapshots[0], rank=0)
    assert (tmp_path / "student.pt").is_file()
    assert (tmp_path / RANK_FILE.format(rank=0)).is_file()
    state = load_resume_state(tmp_path, 0)
    assert state["round"] == 1 and state["world_size"] == 1
    with pytest.raises(FileNotFoundError, match="no resume state for rank 1"):
        load_resume_state(tmp_path, 1)
    with pytest.raises(ValueError, match="kdci.enabled"):
        distill(resolve(tiny_settings, {"train.rounds": 2}), Collect(), resume=state)
    state["world_size"] = 2
    with pytest.raises(ValueError, match="run.workers"):
        distill(cfg, Collect(), resume=state)


@pytest.mark.parametrize("over, match", [
    ({"run.checkpoint_every": 3, "train.eval_every": 2}, "multiple of train.eval_every"),
    ({"run.max_failures": -2}, "run.max_failures"),
    ({"run.use_gpu": True, "run.gpus_per_worker": 0}, "run.gpus_per_worker"),
    ({"run.use_gpu": True, "run.gpus_per_worker": 1.5}, "whole number"),
    ({"run.inject_failure_round": 9}, "run.inject_failure_round"),
])
def test_run_keys_are_checked(tiny_settings, over, match) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve(tiny_settings, over)
