"""A dictionary pre-built for ``run.workers: 2`` is the one a two-rank trial loads (issue 22,
fault 5): the real loop on two gloo ranks in plain torch.distributed (as tests/test_ddp.py) finds
it in the store (``kdci/cached = 1`` on rank 0) and builds nothing."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdci_ray.experiments.dfkd import resolve
from kdci_ray.train.loop import Collect, distill

# a pool seed no other test uses: its selection and dictionary exist only once pre-built here
SETTINGS = {"method": "dfnd", "kdci.enabled": True, "run.workers": 2, "pool.seed": 5201,
            "train.rounds": 1}


def _rank_main(rank: int, settings: dict, store_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    try:
        rep = Collect()
        distill(resolve(settings), rep)
        torch.save([metrics for _, metrics in rep.history], Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_rank_trial_loads_the_dictionary_prebuilt_for_two_workers(tiny_settings,
                                                                      tmp_path) -> None:
    from kdci_ray.engine.dictionary_job import build_shared_dictionary
    from kdci_ray.train.kdci_setup import dictionary_store

    settings = {**tiny_settings, **SETTINGS}
    entry = build_shared_dictionary(resolve(settings), log=lambda msg: None)
    assert not entry["cached"] and entry["num_samples"] == 64
    store = dictionary_store()
    before = {e["key"] for e in store.entries()}

    mp.spawn(_rank_main, args=(settings, str(tmp_path / "store"), str(tmp_path)), nprocs=2,
             join=True)
    history = torch.load(tmp_path / "rank0.pt")
    refreshes = [m for m in history if "kdci/cached" in m]
    assert refreshes and refreshes[0]["kdci/cached"] == 1.0  # found, not rebuilt by rank 0
    assert refreshes[0]["kdci/inertia"] == entry["inertia"]  # and it is the pre-built one
    assert {e["key"] for e in store.entries()} == before  # the trial stored nothing new
