"""``run.trainer``: which Ray layer runs a trial's loop, decided once in the resolved config."""

from __future__ import annotations

import pytest

from kdci_ray.experiments.dfkd import resolve


@pytest.mark.parametrize("layer, want", [
    ({}, "tune_trial"),  # one CPU worker: a TorchTrainer would only add processes
    ({"run.workers": 2}, "ray_train"),  # a worker group: DDP through Ray Train
    ({"run.use_gpu": True}, "ray_train"),  # GPU trials keep Train's placement and restarts
    ({"run.worker_resources": "accel=1"}, "ray_train"),  # pinned to a node type: same
    ({"run.trainer": "ray_train"}, "ray_train"),  # an explicit choice wins
    ({"run.trainer": "tune_trial", "run.use_gpu": True}, "tune_trial"),
])
def test_auto_is_resolved_and_an_explicit_trainer_kept(layer: dict, want: str) -> None:
    cfg = resolve({"method": "dafl", **layer})
    assert cfg.run.trainer == want
    assert resolve({"method": "dafl", "run.trainer": cfg.run.trainer, **{
        k: v for k, v in layer.items() if k != "run.trainer"}}).run.trainer == want


def test_trial_resources_are_one_workers_bundle() -> None:
    from kdci_ray.train.tune_trial import trial_resources

    cfg = resolve({"method": "dafl", "run.cpus_per_worker": 2})
    assert trial_resources(cfg) == {"CPU": 2.0}
    gpu = resolve({"method": "dafl", "run.trainer": "tune_trial", "run.use_gpu": True,
                   "run.gpus_per_worker": 0.5, "run.worker_resources": "accel=1"})
    assert trial_resources(gpu) == {"CPU": 1.0, "GPU": 0.5, "accel": 1.0}
