"""``kdci_ray.sweep``: a sweep from a Python script, checked exactly like the command line, with
Tune's callbacks, search algorithms, schedulers and ``num_samples`` passed through."""

from __future__ import annotations

import pandas as pd
import pytest
from ray import tune

import kdci_ray
from kdci_ray.errors import ConfigError


def _experiment(tiny_settings: dict, **search) -> dict:
    return {**tiny_settings, "name": "api", "method": "dafl", "search": search}


def test_bad_input_raises_the_cli_error_before_anything_is_written(tiny_settings,
                                                                   tmp_path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'train.kd_steps'"):
        kdci_ray.sweep({**_experiment(tiny_settings), "train.kd_step": 3},
                       output=tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown config key 'kdci.enable'"):
        kdci_ray.sweep(_experiment(tiny_settings), overrides={"kdci.enable": True},
                       output=tmp_path / "out")
    with pytest.raises(ConfigError, match="num_samples must be an integer >= 1"):
        kdci_ray.sweep(_experiment(tiny_settings), output=tmp_path / "out", num_samples=0)
    assert not (tmp_path / "out").exists()


def test_a_scheduler_that_stops_train_driving_trials_is_refused(tiny_settings, ray_session,
                                                                tmp_path) -> None:
    from ray.tune.schedulers import ASHAScheduler

    with pytest.raises(ConfigError, match="stops trials early.*Ray Train worker groups"):
        kdci_ray.sweep(_experiment(tiny_settings, seed=[0, 1]), output=tmp_path / "out",
                       overrides={"run.trainer": "ray_train"}, scheduler=ASHAScheduler())
    with pytest.raises(ConfigError, match="needs sampled keys"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        kdci_ray.sweep(_experiment(tiny_settings, seed=[0, 1]), output=tmp_path / "out",
                       search_alg=BasicVariantGenerator())
    assert not (tmp_path / "out").exists()


class Seen(tune.Callback):
    """A user's Tune callback: records every trial result it hears."""

    def __init__(self) -> None:
        self.results: list[dict] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.results.append(dict(result))


def test_a_sampled_sweep_from_python_in_smoke_mode(tiny_settings, ray_session, tmp_path) -> None:
    seen = Seen()
    result = kdci_ray.sweep(
        _experiment(tiny_settings, **{"kdci.enabled": [False, True],
                                      "train.lr": {"loguniform": [0.01, 0.1]}}),
        overrides={"train.rounds": 2}, output=tmp_path / "sweep", smoke=True, num_samples=2,
        callbacks=[seen], log=lambda line: None)
    assert result.ok and result.directory == (tmp_path / "sweep").resolve()
    summary = result.summary
    assert isinstance(summary, pd.DataFrame) and len(summary) == 4  # 2 grid points x 2 samples
    assert sorted(summary["kdci"].tolist()) == [False, False, True, True]
    lrs = [float(v) for v in summary["train.lr"]] if "train.lr" in summary else []
    assert len(set(lrs)) == 4 and all(0.01 <= v <= 0.1 for v in lrs)  # sampled anew each time
    assert len(result.result_grid) == 4 and result.result_grid.num_errors == 0
    assert any(r.get("finished") for r in seen.results)
    assert pd.read_csv(result.directory / "summary.csv").shape[0] == 4
    for name in ("report.md", "sweep.yaml"):
        assert (result.directory / name).is_file()
    assert "num_samples: 2" in (result.directory / "sweep.yaml").read_text()


def test_a_scheduler_stops_tune_trial_trials_safely(tiny_settings, ray_session, tmp_path) -> None:
    """A scheduler stops half of a ``tune_trial`` sweep's trials after round 2 (a deterministic
    stand-in for ASHA, whose choices depend on timing): they are reported as stopped by the
    scheduler (not unfinished), the trials after them still run (no CPU leaked), and every CPU
    is free again at the end."""
    import ray
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class StopSmallLr(FIFOScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            if result.get("round", 0) >= 2 and trial.config["train.lr"] < 0.03:
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    result = kdci_ray.sweep(
        _experiment(tiny_settings, **{"train.lr": [0.01, 0.02, 0.05, 0.1]}),
        overrides={"train.rounds": 4, "train.eval_every": 1}, output=tmp_path / "stop",
        scheduler=StopSmallLr(), log=lambda line: None)
    assert not result.errors and not result.unfinished
    rounds = {float(r.config["train.lr"]): int(r.metrics.get("round", 0))
              for r in result.result_grid}
    assert rounds == {0.01: 2, 0.02: 2, 0.05: 4, 0.1: 4}
    assert sorted(result.stopped.values()) == ["stopped early by the scheduler"] * 2
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
