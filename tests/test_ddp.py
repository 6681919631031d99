"""Genuine data parallelism: each rank its own synthetic data, gradients averaged, equal weights.

The first test runs the real loop on two gloo ranks in plain torch.distributed and checks one SGD
step against two single-process runs: DDP's weights must equal the mean of theirs. The second runs
the same loop through Ray Train's TorchTrainer with two workers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdci_ray.experiments.dfkd import resolve
from kdci_ray.methods.deepinv import DeepInversion
from kdci_ray.train.loop import Collect, distill
from kdci_ray.train.runtime import Runtime

ONE_STEP = {"method": "deepinv", "train.rounds": 1, "train.kd_steps": 1,
            "train.momentum": 0.0, "train.weight_decay": 0.0, "train.lr_schedule": "constant",
            "train.lr": 0.5}


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest()


def _record_first_sample(store: list[str]):
    original = DeepInversion.sample

    def sample(self, batch_size):
        x = original(self, batch_size)
        store.append(_digest(x))
        return x

    return sample


def _rank_main(rank: int, settings: dict, store_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    try:
        seen: list[str] = []
        DeepInversion.sample = _record_first_sample(seen)
        rep = Collect()
        distill(resolve(settings, ONE_STEP), rep)
        torch.save({"state": rep.state["state_dict"], "sample": seen[0]},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _params(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}


def test_two_gloo_ranks_average_gradients(tiny_settings, tmp_path) -> None:
    mp.spawn(_rank_main, args=(tiny_settings, str(tmp_path / "store"), str(tmp_path)),
             nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["sample"] != ranks[1]["sample"]  # each rank its own synthetic data
    p0, p1 = _params(ranks[0]["state"]), _params(ranks[1]["state"])
    assert all(torch.equal(p0[k], p1[k]) for k in p0)  # same weights on every rank

    singles = []
    for r in range(2):
        rep = Collect()
        distill(resolve(tiny_settings, ONE_STEP),
                rep, Runtime(rank=r, world_size=1, device=torch.device("cpu")))
        singles.append(_params(rep.state["state_dict"]))
    moved = False
    for k in p0:
        expected = (singles[0][k] + singles[1][k]) / 2
        assert torch.allclose(p0[k], expected, atol=1e-6), k
        moved |= not torch.allclose(singles[0][k], singles[1][k])
    assert moved  # the two ranks' gradients really differed


def test_ray_train_two_workers_same_weights_different_data(tiny_settings, ray_session,
                                                           tmp_path) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    settings = {**tiny_settings, "method": "dafl", "kdci.enabled": True, "run.workers": 2}
    out = tmp_path / "ranks"
    out.mkdir()

    def worker(config: dict) -> None:
        from kdci_ray.methods.dafl import DAFL

        seen: list[str] = []
        original = DAFL.sample

        def sample(self, batch_size):
            x = original(self, batch_size)
            seen.append(hashlib.sha1(x.numpy().tobytes()).hexdigest())
            return x

        DAFL.sample = sample
        rep = Collect()
        cfg = resolve(config["settings"])
        distill(cfg, rep)
        rank = ray.train.get_context().get_world_rank()
        torch.save({"state": rep.state["state_dict"], "kdci": rep.state["kdci"],
                    "samples": seen, "world": dist.get_world_size()},
                   Path(config["out"]) / f"rank{rank}.pt")
        ray.train.report({"rank_done": 1.0})

    trainer = TorchTrainer(
        worker, train_loop_config={"settings": settings, "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=2),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path), name="ddp",
                                       failure_config=ray.train.FailureConfig(
                                           controller_failure_limit=1)),
    )
    from kdci_ray.train.ray_train import sigint_handler_kept

    with sigint_handler_kept():  # Train's fit leaves its Ctrl-C handler behind
        trainer.fit()
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in range(2))
    assert r0["world"] == r1["world"] == 2
    assert set(r0["samples"]).isdisjoint(r1["samples"])  # every batch differs across ranks
    p0, p1 = _params(r0["state"]), _params(r1["state"])
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    # every rank's attention saw the same dictionary (built from all ranks, broadcast from 0)
    assert torch.equal(r0["kdci"]["prototypes"], r1["kdci"]["prototypes"])
    assert all(torch.equal(r0["kdci"][k], r1["kdci"][k]) for k in r0["kdci"])


LOG_PRIOR_FROM_MODEL = {"method": "dafl", "kdci.enabled": True, "kdci.source": "model",
                        "kdci.source_arch": "tiny_cnn", "kdci.fusion": "log_prior",
                        "kdci.features": "source", "train.rounds": 1, "train.kd_steps": 3}


def _log_prior_rank(rank: int, settings: dict, store_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    try:
        rep = Collect()
        final = distill(resolve(settings, LOG_PRIOR_FROM_MODEL), rep)
        torch.save({"final": final, "state": rep.state["state_dict"]},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_with_another_models_dictionary_and_the_fixed_log_prior(tiny_settings,
                                                                    tmp_path) -> None:
    """Issue 22, fault 8: with ``kdci.source: model`` the attention carries a learned map of the
    other model's prototypes; the ``log_prior`` fusion reads only their arg-max, so the map gets
    no gradient and DDP refused the second step on two ranks. The map is frozen there."""
    from kdci_ray.train.datasets import load_data
    from kdci_ray.train.kdci_setup import load_source_model

    cfg = resolve(tiny_settings, LOG_PRIOR_FROM_MODEL)
    load_source_model(cfg, load_data(cfg), torch.device("cpu"), log=lambda m: None)  # cached once
    mp.spawn(_log_prior_rank, args=(tiny_settings, str(tmp_path / "store"), str(tmp_path)),
             nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["final"]["finished"] == 1.0 and r["final"]["step"] == 3 for r in ranks)
    p0, p1 = _params(ranks[0]["state"]), _params(ranks[1]["state"])
    assert all(torch.equal(p0[k], p1[k]) for k in p0)  # DDP kept the ranks' students equal
