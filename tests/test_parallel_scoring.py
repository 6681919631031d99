"""The dictionary job's forward passes spread over Ray actors equal the in-process pass."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kdci_ray.data.pool_format import TensorPool
from kdci_ray.data.selection import score_pool, top_n
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.models import create_model


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("tiny_cnn", 10, 1).eval()


def test_ray_scorer_matches_the_in_process_pass(ray_session) -> None:
    from kdci_ray.engine.parallel_scoring import RayScorer

    gen = torch.Generator().manual_seed(0)
    pool = TensorPool(torch.randint(0, 256, (300, 1, 16, 16), dtype=torch.uint8, generator=gen))
    teacher, other = _model(0), _model(1)
    mean, std = (0.5,), (0.25,)

    def local(model, images):
        with torch.no_grad():
            return model((images.float() / 255 - 0.5) / 0.25).logits

    _wait_for_free_cpus(ray_session, 2)
    with RayScorer(pool, {"teacher": teacher, "other": other}, mean, std, bundle={"CPU": 1},
                   workers=2, batch_size=32, chunk=64) as scorer:
        assert scorer.workers == 2
        for criterion in ("confidence", "entropy"):
            spread = scorer.pool_scores("teacher", criterion, len(pool))
            ref = score_pool(pool, lambda x: local(teacher, x), criterion)
            np.testing.assert_allclose(spread, ref, rtol=1e-5, atol=1e-7)
            assert np.array_equal(top_n(spread, 50), top_n(ref, 50))
        # any order of indices comes back in that order, from the model asked for
        idx = np.random.default_rng(0).permutation(len(pool))[:77]
        got = scorer.logits("other", idx)
        assert got.shape == (77, 10)
        torch.testing.assert_close(got, local(other, pool.get(idx)), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, local(teacher, pool.get(idx)))


def test_ray_scorer_waits_then_names_what_was_never_placed(ray_session) -> None:
    from kdci_ray.engine.parallel_scoring import ClusterWaitTimeout, RayScorer

    pool = TensorPool(torch.zeros((4, 1, 8, 8), dtype=torch.uint8))
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(ClusterWaitTimeout, match=r"no pool scoring worker of \{CPU: 1, GPU: 1\} "
                       r"was placed within run.start_timeout_s=3 s.*raise run.start_timeout_s"):
        RayScorer(pool, {"teacher": _model(0)}, (0.5,), (0.25,), bundle={"CPU": 1, "GPU": 1},
                  workers=1, start_timeout_s=3, log=lines.append)
    assert time.monotonic() - start >= 3  # it waited for the nodes, then gave up
    assert issubclass(ClusterWaitTimeout, ConfigError)  # the CLI prints it as one line


def _wait_for_free_cpus(ray, n: int, timeout_s: float = 60.0) -> None:
    """Actors of earlier tests give their CPUs back asynchronously after ``ray.kill``."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) >= n, ray.available_resources()


def _remove_new_files(folder: Path, before: set[Path]) -> int:
    new = [p for p in folder.rglob("*") if p.is_file() and p not in before]
    for p in new:
        p.unlink()
    return len(new)


def test_dictionary_job_on_ray_workers_builds_the_in_process_dictionary(
        tiny_settings, ray_session) -> None:
    from kdci_ray.cache import cache_dir
    from kdci_ray.engine.dictionary_job import build_shared_dictionary

    # a pool seed no other test uses: selection and dictionary are not cached yet
    cfg = resolve({**tiny_settings, "method": "dfnd", "kdci.enabled": True, "pool.seed": 4321})
    root = cache_dir()
    before = {p for p in root.rglob("*") if p.is_file()}
    _wait_for_free_cpus(ray_session, 2)
    lines: list[str] = []
    spread = build_shared_dictionary(cfg, log=lines.append, workers=2)
    assert spread["scoring_workers"] == 2 and not spread["cached"]
    assert any(line.startswith("selection (teacher): 512/512 images on 2 worker(s) of {CPU: 1}")
               for line in lines)
    assert any(line.startswith("dictionary features (teacher): 64/64 images on 2 worker(s) of "
                               "{CPU: 1}") for line in lines)
    protos = torch.load(spread["path"], weights_only=True)["prototypes"]
    # the same again in this process, from scratch: same selection, same dictionary
    assert _remove_new_files(root / "selections", before) == 2  # the .npy and its record
    assert _remove_new_files(root / "dictionaries", before) == 2  # the .pt and its record
    local = build_shared_dictionary(cfg, log=lambda msg: None, workers=1)
    assert local["scoring_workers"] == 1 and not local["cached"]
    assert local["spec"] == spread["spec"]  # same selection key, model key, K, backend
    torch.testing.assert_close(torch.load(local["path"], weights_only=True)["prototypes"],
                               protos, rtol=1e-4, atol=1e-4)
    assert local["inertia"] == pytest.approx(spread["inertia"], rel=1e-4)
    # a third build finds it and starts no workers
    again = build_shared_dictionary(cfg, log=lambda msg: None, workers=2)
    assert again["cached"] and again["scoring_workers"] == 1


def test_dictionary_command_rejects_a_negative_worker_count(tiny_settings, tmp_path,
                                                            capsys) -> None:
    import yaml

    from kdci_ray.cli import main

    config = tmp_path / "dict.yaml"
    config.write_text(yaml.safe_dump({**tiny_settings, "method": "dfnd", "kdci.enabled": True}))
    assert main(["dictionary", str(config), "--workers", "-1"]) == 2
    assert "--workers must be 0 (all free) or a positive count, got -1" in capsys.readouterr().err


def test_dictionary_actor_builds_what_the_driver_builds(ray_session) -> None:
    """The GPU actor's code, asked for no GPU: the same dictionary as in this process."""
    from kdci_ray.engine.parallel_scoring import build_dictionary_on_ray
    from kdci_ray.kdci.dictionary import build_dictionary

    gen = torch.Generator().manual_seed(0)
    features = torch.randn(300, 10, generator=gen) * 3
    options = {"k": 8, "pca_dim": 4, "seed": 0, "n_init": 1, "backend": "auto",
               "algorithm": "auto"}
    _wait_for_free_cpus(ray_session, 1)
    lines: list[str] = []
    remote = build_dictionary_on_ray(features, options, {"CPU": 1}, start_timeout_s=60,
                                     log=lines.append)
    local = build_dictionary(features, **options)
    assert torch.equal(remote.prototypes, local.prototypes)
    assert torch.equal(remote.proportions, local.proportions)
    assert (remote.inertia, remote.backend, remote.num_samples) == \
        (local.inertia, "sklearn", 300)
    assert lines == ["dictionary build: clustering 300 samples on a worker of {CPU: 1}"]


def test_dictionary_job_clusters_on_an_actor_and_stores_it_in_the_driver(
        tiny_settings, ray_session) -> None:
    from kdci_ray.engine.dictionary_job import build_shared_dictionary
    from kdci_ray.train.kdci_setup import dictionary_store

    cfg = resolve({**tiny_settings, "method": "dfnd", "kdci.enabled": True, "pool.seed": 4322})
    _wait_for_free_cpus(ray_session, 1)
    on_actor = build_shared_dictionary(cfg, log=lambda msg: None, actor_gpus=0)
    assert on_actor["built_on"] == "actor" and not on_actor["cached"]
    store = dictionary_store()
    assert any(e["key"] == on_actor["key"] for e in store.entries())  # saved by the driver
    actor_tensors = torch.load(on_actor["path"], weights_only=True)
    spec = _spec(on_actor)
    assert spec.key == on_actor["key"]
    for path in store.paths(spec):
        path.unlink()
    here = build_shared_dictionary(cfg, log=lambda msg: None)  # Ray up, no GPU: the driver
    assert here["built_on"] == "driver" and here["key"] == on_actor["key"]
    here_tensors = torch.load(here["path"], weights_only=True)
    assert all(torch.equal(actor_tensors[k], here_tensors[k]) for k in here_tensors)
    assert here["inertia"] == on_actor["inertia"]


def _spec(entry: dict):
    from kdci_ray.kdci.artifact import DictionarySpec

    return DictionarySpec(**entry["spec"])
