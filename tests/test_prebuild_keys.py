"""The build-once dictionary's pre-build (issue 22, faults 5 and 6), without Ray.

- the key of a sampling-based method's dictionary names the images the ranks' equal shares cover,
  not the world size, so a pre-build for ``run.workers`` ranks is what such a trial looks up;
- a rank's share is normalised only a slice at a time, and the pre-build scores in batches with
  numbers bit-identical to the one-shot pass it replaced;
- a stored dictionary is found before anything is scored, normalised or clustered;
- the driver runs on a GPU-less head with ``run.use_gpu`` (host_device), the scoring actors never
  fall back to the CPU silently (worker_device), and the GPU-actor decision is a pure function.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdci_ray.data.pool_format import TensorPool
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.methods.base import MethodContext
from kdci_ray.methods.open_world import OpenWorldSubset
from kdci_ray.models import create_model

SIDE, C = 8, 10


def _ctx(pool: TensorPool, rank: int, world_size: int, cache) -> MethodContext:
    torch.manual_seed(0)
    teacher = create_model("tiny_cnn", C, 1).eval()
    return MethodContext(teacher=teacher, student=create_model("tiny_cnn", C, 1), num_classes=C,
                         channels=1, image_size=SIDE, device=torch.device("cpu"), seed=rank,
                         rounds=1, rank=rank, world_size=world_size, mean=(0.5,), std=(0.25,),
                         open_world=pool, cache_dir=cache)


def _pool(n: int = 120) -> tuple[torch.Tensor, TensorPool]:
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, 1, SIDE, SIDE), dtype=torch.uint8, generator=gen)
    return images, TensorPool(images)


def test_subset_key_names_the_covered_images_not_the_world_size(tmp_path) -> None:
    images, pool = _pool()
    one = OpenWorldSubset(_ctx(pool, 0, 1, tmp_path), "confidence", 64)
    two = [OpenWorldSubset(_ctx(pool, r, 2, tmp_path), "confidence", 64) for r in range(2)]
    # 64 images: one rank and two ranks cover the same ones, in the same order
    assert one.key == two[0].key == two[1].key
    assert one.data_key(2) == one.key and two[0].data_key(1) == one.key
    # 63 images: two ranks cover the first 62 only, so a dictionary of theirs is another one
    odd1 = OpenWorldSubset(_ctx(pool, 0, 1, tmp_path), "confidence", 63)
    odd2 = OpenWorldSubset(_ctx(pool, 0, 2, tmp_path), "confidence", 63)
    assert odd1.covered(1) == 63 and odd2.covered(2) == 62
    assert odd1.key != odd2.key and odd1.data_key(2) == odd2.key
    # another selection (another criterion picks other images) or normalisation: another key
    assert OpenWorldSubset(_ctx(pool, 0, 1, tmp_path), "entropy", 64).key != one.key
    shifted = _ctx(pool, 0, 1, tmp_path)
    shifted.mean = (0.4,)
    assert OpenWorldSubset(shifted, "confidence", 64).key != one.key


def test_shard_is_normalised_only_when_sliced(tmp_path, monkeypatch) -> None:
    images, pool = _pool()
    subsets = [OpenWorldSubset(_ctx(pool, r, 2, tmp_path), "confidence", 63) for r in range(2)]
    calls: list[int] = []
    original = MethodContext.normalize

    def counting(self, x):
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(MethodContext, "normalize", counting)
    shards = [s.shard() for s in subsets]
    assert calls == []  # nothing normalised yet: not the whole share at once
    assert [len(s) for s in shards] == [31, 31]
    ctx = subsets[0].ctx
    kept = images[subsets[0].indices]
    for rank, shard in enumerate(shards):
        whole = original(ctx, kept[rank * 31:(rank + 1) * 31])
        sliced = torch.cat([shard[i:i + 8] for i in range(0, len(shard), 8)])
        assert torch.equal(sliced, whole)  # bit-identical, chunk by chunk
    assert max(calls) == 8


def _settings(tiny_settings: dict, **extra) -> dict:
    # a pool seed no other test uses: selection and dictionary are not cached yet
    return {**tiny_settings, "method": "dfnd", "kdci.enabled": True, **extra}


def _count_calls(monkeypatch) -> dict[str, list[int]]:
    """Sizes of every normalisation, teacher forward and k-means fit from now on."""
    import kdci_ray.kdci.dictionary as dictionary_module
    from kdci_ray.models.small import SmallCNN

    seen: dict[str, list[int]] = {"normalize": [], "forward": [], "kmeans": []}
    normalize, forward = MethodContext.normalize, SmallCNN.forward
    fit = dictionary_module.fit_kmeans

    def counting_normalize(self, x):
        seen["normalize"].append(len(x))
        return normalize(self, x)

    def counting_forward(self, x):
        seen["forward"].append(len(x))
        return forward(self, x)

    def counting_fit(x, *args, **kwargs):
        seen["kmeans"].append(len(x))
        return fit(x, *args, **kwargs)

    monkeypatch.setattr(MethodContext, "normalize", counting_normalize)
    monkeypatch.setattr(SmallCNN, "forward", counting_forward)
    monkeypatch.setattr(dictionary_module, "fit_kmeans", counting_fit)
    return seen


def test_prebuild_scores_in_batches_bit_identical_to_the_one_shot_pass(tiny_settings,
                                                                       monkeypatch) -> None:
    from kdci_ray.engine.dictionary_job import _PoolJob, build_selection, build_shared_dictionary
    from kdci_ray.kdci import KDCI
    from kdci_ray.kdci.dictionary import build_dictionary, teacher_logits

    cfg = resolve(_settings(tiny_settings, **{"pool.seed": 5101}))
    build_selection(cfg, log=lambda msg: None)  # selected now: the pool is not scored below
    seen = _count_calls(monkeypatch)
    entry = build_shared_dictionary(cfg, log=lambda msg: None)
    assert not entry["cached"] and entry["num_samples"] == 64
    batch = cfg.train.batch_size  # what a trial's refresh scores at a time (16)
    assert seen["normalize"] and max(seen["normalize"]) <= batch < 64  # never the whole subset
    assert seen["kmeans"] == [64]
    monkeypatch.undo()

    # the one-shot pass it replaced: the whole subset normalised, scored, clustered with the
    # pool's seed (a build-once dictionary's clustering seed is the pool's draw, pool.seed)
    job = _PoolJob(cfg, lambda msg: None, 1)
    subset = job.select()
    kdci = KDCI(cfg.kdci, job.data.num_classes, job.rt.device, seed=cfg.seed,
                score_batch=cfg.train.batch_size)
    s = kdci.config
    logits = teacher_logits(job.teacher, job.ctx.normalize(subset.images[:64]), kdci.score_batch)
    ref = build_dictionary(logits.float().cpu(), s.k, s.pca_dim, cfg.pool.seed, s.n_init,
                           s.backend, s.algorithm)
    stored = torch.load(entry["path"], weights_only=True)
    assert torch.equal(stored["prototypes"], ref.prototypes)
    assert torch.equal(stored["proportions"], ref.proportions)
    assert entry["inertia"] == ref.inertia


def _trial_rank(cfg, rank: int, world_size: int):
    """What rank ``rank`` of a ``world_size``-rank trial of ``cfg`` holds after its first
    synthesis (no process group: the method is told its rank; nothing is wrapped), and its KDCI."""
    from dataclasses import replace

    from kdci_ray.methods import METHODS
    from kdci_ray.train.datasets import load_data
    from kdci_ray.train.kdci_setup import build_kdci
    from kdci_ray.train.loop import method_context
    from kdci_ray.train.runtime import Runtime
    from kdci_ray.train.teacher import load_teacher

    cpu = torch.device("cpu")
    data = load_data(cfg)
    teacher = load_teacher(cfg, data, cpu)
    student = create_model(cfg.student.arch, data.num_classes, data.channels)
    ctx = method_context(cfg, data, teacher, student, Runtime(rank, 1, cpu))
    ctx = replace(ctx, rank=rank, world_size=world_size)
    method = METHODS[cfg.method](cfg.method_config, ctx)
    method.synthesize(0)
    return teacher, method, build_kdci(cfg, METHODS[cfg.method].substitution, data,
                                       Runtime(0, 1, cpu))


def test_a_stored_dictionary_is_found_before_anything_is_scored(tiny_settings,
                                                                monkeypatch) -> None:
    """Pre-built for two ranks; then found by a one-rank pre-build (the same 64 images) and by
    rank 0 of a two-rank trial, each reading only the selection and the store."""
    from kdci_ray.engine.dictionary_job import build_shared_dictionary

    settings = _settings(tiny_settings, **{"pool.seed": 5102})
    two = resolve({**settings, "run.workers": 2})
    first = build_shared_dictionary(two, log=lambda msg: None)
    assert not first["cached"] and first["built_on"] == "driver"
    teacher, method, kdci = _trial_rank(two, rank=0, world_size=2)
    assert method.substitution_key() == first["spec"]["data_key"]

    seen = _count_calls(monkeypatch)
    again = build_shared_dictionary(resolve({**settings, "run.workers": 1}),
                                    log=lambda msg: None)
    assert again["cached"] and again["key"] == first["key"] and again["built_on"] == "none"
    metrics = kdci.start_round(0, teacher, method)  # the trial's refresh
    assert metrics["kdci/cached"] == 1.0
    assert seen == {"normalize": [], "forward": [], "kmeans": []}
    monkeypatch.undo()
    # 63 images for two ranks cover 62: not the same images, so not the same dictionary
    odd = build_shared_dictionary(resolve({**settings, "dfnd.select_n": 63, "run.workers": 2}),
                                  log=lambda msg: None)
    assert not odd["cached"] and odd["num_samples"] == 62 and odd["key"] != first["key"]


def test_prebuild_with_use_gpu_runs_on_a_gpu_less_head(tiny_settings) -> None:
    from kdci_ray.engine.dictionary_job import build_shared_dictionary

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the GPU-less head is what is tested")
    cfg = resolve(_settings(tiny_settings, **{"pool.seed": 5103, "run.use_gpu": True}))
    entry = build_shared_dictionary(cfg, log=lambda msg: None)  # host_device: the CPU, no error
    assert not entry["cached"] and entry["backend"] == "sklearn"
    assert entry["built_on"] == "driver"  # no Ray cluster with a GPU to send it to


def test_scoring_actor_takes_the_worker_device_never_a_silent_cpu(monkeypatch) -> None:
    import kdci_ray.train.runtime as runtime
    from kdci_ray.engine.parallel_scoring import _ScoringWorker

    pool = TensorPool(torch.zeros((4, 1, SIDE, SIDE), dtype=torch.uint8))
    models = {"teacher": create_model("tiny_cnn", C, 1)}
    if not torch.cuda.is_available():  # given a GPU it cannot see: an error, not the CPU
        with pytest.raises(runtime.GPUUnavailable, match="no usable CUDA device"):
            _ScoringWorker(pool, models, (0.5,), (0.25,), use_gpu=True, batch_size=2)
    asked: list[bool] = []

    def device(use_gpu: bool, assigned=None) -> torch.device:
        asked.append(use_gpu)
        return torch.device("cpu")

    monkeypatch.setattr(runtime, "worker_device", device)
    worker = _ScoringWorker(pool, models, (0.5,), (0.25,), use_gpu=True, batch_size=2)
    assert asked == [True] and worker.device == torch.device("cpu")
    assert worker.logits("teacher", np.arange(4)).shape == (4, C)


def test_gpu_actor_decision() -> None:
    from kdci_ray.engine.dictionary_job import builds_on_gpu_actor, dictionary_bundle
    from kdci_ray.engine.placement import NodeShape
    from kdci_ray.experiments.dfkd import RunConfig

    head = NodeShape("head", {"CPU": 8.0}, 1)
    gpu = NodeShape("gpu", {"CPU": 8.0, "GPU": 4.0, "trainer": 1.0}, 1)
    gpu_later = NodeShape("gpu (autoscaled)", {"CPU": 8.0, "GPU": 1.0}, 2, autoscaled=True)
    on_gpu = RunConfig(use_gpu=True, gpus_per_worker=2, cpus_per_worker=2)
    assert dictionary_bundle(on_gpu) == {"CPU": 2.0, "GPU": 1.0}  # one GPU, a worker's CPUs
    assert dictionary_bundle(on_gpu, gpus=0) == {"CPU": 2.0}
    assert not builds_on_gpu_actor(RunConfig(use_gpu=False), [head, gpu])
    assert not builds_on_gpu_actor(on_gpu, None)  # no Ray reachable: the driver builds
    assert not builds_on_gpu_actor(on_gpu, [head])  # a cluster without GPUs
    assert builds_on_gpu_actor(on_gpu, [head, gpu])
    assert builds_on_gpu_actor(on_gpu, [head, gpu_later])  # the autoscaler can add one
    assert not builds_on_gpu_actor(on_gpu, [head, gpu_later], max_added=0)
    # the actor asks for a trial worker's custom resources too
    custom = RunConfig(use_gpu=True, worker_resources="trainer=1")
    assert dictionary_bundle(custom)["trainer"] == 1.0
    assert builds_on_gpu_actor(custom, [head, gpu])
    assert not builds_on_gpu_actor(custom, [head, gpu_later])
