"""SKDCGN on a device other than the CPU: ``run.use_gpu``, the trial's resources and refusals,
the black box serving on a device, the pipeline's parts placing their work there, cache entries
loaded onto the CPU first (``map_location``) and moved.

There is no GPU here: the ``meta`` device (shapes only, no values) stands in for one where only
the movement of state is checked; reading a number back from it fails, so a training loop that
ran every step on it fails only there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from kdci_ray.cgn import config as cgn_config
from kdci_ray.cgn.blackbox import BlackBoxCGN, QuerySet
from kdci_ray.cgn.classifier import new_classifier, train_classifier
from kdci_ray.cgn.mechanisms import CGN, CHANNELS, MECHANISMS, module_device
from kdci_ray.cgn.pipeline import images_per_second
from kdci_ray.cgn.student import GeneratorStudentConfig, train_student
from kdci_ray.cgn.teacher_fit import TeacherFitConfig, fit_teacher
from kdci_ray.errors import ConfigError

META = torch.device("meta")
READ_BACK = r"item\(\) cannot be called on meta tensors"  # the only step meta cannot take
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


class _Weight(nn.Module):
    latent_dim, num_classes = 4, 3

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class WhereTeacher(nn.Module):
    """A stand-in teacher that answers where it computed: each answer is 1 where its weights
    were on ``meta``, 0 on the CPU (always returned as a CPU tensor, which ``meta`` cannot
    give); inputs on another device than its weights are refused, as a real module does."""

    latent_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.mechanisms = nn.ModuleDict({m: _Weight() for m in MECHANISMS})

    def mechanism(self, name: str, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        device = self.mechanisms[name].weight.device
        if noise.device != device or labels.device != device:
            raise RuntimeError(f"inputs on {noise.device} and {labels.device}, weights on "
                               f"{device}")
        return torch.full((len(noise), CHANNELS[name], 4, 4), float(device.type == "meta"))


# ----------------------------------------------------------------------------- config and trial


def test_run_use_gpu_and_the_gpu_share_are_skdcgn_keys_checked_at_resolve() -> None:
    default = cgn_config.resolve({})
    assert (default.run.use_gpu, default.run.gpus_per_trial) == (False, 1.0)
    assert {"run.use_gpu", "run.gpus_per_trial"} <= set(cgn_config.valid_keys())
    cfg = cgn_config.resolve({"run": {"use_gpu": True, "gpus_per_trial": 0.25}})
    assert (cfg.run.use_gpu, cfg.run.gpus_per_trial) == (True, 0.25)
    for bad in (0.0, -0.5, 2.0):
        with pytest.raises(ConfigError, match=r"'run.gpus_per_trial' must be in \(0, 1\]"):
            cgn_config.resolve({"run.use_gpu": True, "run.gpus_per_trial": bad})


def _plan(tmp_path: Path, **settings):
    from kdci_ray.engine import plan_sweep

    return plan_sweep({"kind": "skdcgn", "smoke": True, **settings}, launch_dir=tmp_path)


def test_a_gpu_trial_asks_tune_for_its_gpu_share_and_one_request_per_sweep(tmp_path) -> None:
    gpu = _plan(tmp_path, **{"run.use_gpu": True, "run.gpus_per_trial": 0.5})
    assert gpu.kind.trial_resources(gpu) == {"CPU": 1.0, "GPU": 0.5}
    cpu = _plan(tmp_path, **{"run.gpus_per_trial": 0.5})  # the share is read with use_gpu only
    assert cpu.kind.trial_resources(cpu) == {"CPU": 1.0}
    mixed = {"search": {"cases": {"where": [{"name": "cpu", "run.use_gpu": False},
                                            {"name": "gpu", "run.use_gpu": True}]}}}
    with pytest.raises(ConfigError, match="ask for different resources.*run.use_gpu"):
        _plan(tmp_path, **mixed)


def test_a_gpu_sweep_is_refused_on_a_cluster_without_gpus() -> None:
    from kdci_ray.engine.placement import NodeShape
    from kdci_ray.engine.skdcgn import check_trial_placeable, trial_bundle

    bundle = trial_bundle(cgn_config.resolve({"run.use_gpu": True}).run)
    cpus = [NodeShape("head", {"CPU": 8.0}, 1), NodeShape("cpu-worker", {"CPU": 16.0}, 3)]
    with pytest.raises(ConfigError, match="run.use_gpu is set but the Ray cluster has no GPU.*"
                                          "add a GPU node.*or set run.use_gpu=false"):
        check_trial_placeable(bundle, cpus)
    check_trial_placeable(trial_bundle(cgn_config.resolve({}).run), cpus)  # CPU trials fit
    check_trial_placeable(bundle, [*cpus, NodeShape("gpu", {"CPU": 4.0, "GPU": 1.0}, 1)])
    # a GPU node type the autoscaler may still add counts, unless max_workers leaves none
    autoscaled = [*cpus, NodeShape("gpu", {"CPU": 4.0, "GPU": 1.0}, 2, autoscaled=True)]
    check_trial_placeable(bundle, autoscaled)
    with pytest.raises(ConfigError, match="no node of the Ray cluster can hold an SKDCGN"):
        check_trial_placeable(bundle, autoscaled, max_added=0)
    with pytest.raises(ConfigError, match="no node of the Ray cluster can hold an SKDCGN"):
        check_trial_placeable(bundle, [NodeShape("gpu-without-cpus", {"GPU": 1.0}, 1)])


@no_cuda
def test_a_gpu_trial_without_cuda_fails_instead_of_running_on_the_cpu(tmp_path) -> None:
    from kdci_ray.engine.skdcgn import SKDCGN
    from kdci_ray.train.runtime import GPUUnavailable

    cfg = cgn_config.resolve({"smoke": True, "run.use_gpu": True})
    with pytest.raises(GPUUnavailable, match="run.use_gpu is set but this worker sees no usable"):
        SKDCGN().run_trial(cfg, tmp_path, {})
    assert not list(tmp_path.iterdir())  # nothing computed, nothing written


# ----------------------------------------------------------------------------- the black box


def test_the_teachers_process_answers_on_the_device_it_is_given() -> None:
    teacher = WhereTeacher()
    z, y = torch.randn(5, 4), torch.arange(5) % 3
    with BlackBoxCGN(teacher) as box:  # on the teacher's own device, the CPU
        assert box.device == torch.device("cpu")
        assert float(box.query("shape", z, y).abs().sum()) == 0.0
    with BlackBoxCGN(teacher, device="meta") as box:
        assert box.device == META
        for m in MECHANISMS:
            answer = box.query(m, z, y)  # CPU in: moved to the device there
            assert answer.device.type == "cpu" and answer.shape == (5, CHANNELS[m], 4, 4)
            assert torch.equal(answer, torch.ones_like(answer))
        assert box.speed(n=8, batch_size=4, repeats=1) > 0  # timed there too
    assert module_device(teacher).type == "cpu"  # the caller's teacher stays where it was


def test_the_probe_runs_on_the_teachers_device() -> None:
    torch.manual_seed(0)
    with BlackBoxCGN(CGN(width=4, latent_dim=6).to(META)) as box:  # not pickled as meta
        assert box.device == META and box.latent_dim == 6 and box.image_size == 16
        assert box.channels == CHANNELS
    with BlackBoxCGN(WhereTeacher().to(META)) as box:
        answer = box.query("background", torch.randn(2, 4), torch.zeros(2, dtype=torch.long))
        assert torch.equal(answer, torch.ones(2, 3, 4, 4))


@no_cuda
def test_a_device_the_teachers_process_cannot_use_is_one_clear_error() -> None:
    with pytest.raises(RuntimeError, match="teacher's process could not put the teacher on "
                                           "cuda"):
        BlackBoxCGN(CGN(width=4), device="cuda")


# ----------------------------------------------------------------------------- pipeline parts


def test_sampling_speed_times_the_mechanism_on_its_device() -> None:
    seen: set[torch.device] = set()

    def mechanism(name, noise, labels):
        seen.update((noise.device, labels.device))
        return noise

    assert images_per_second(mechanism, 4, 3, n=8, batch_size=4, repeats=1, device="meta") > 0
    assert seen == {META}


def _queries(mechanism: str = "foreground") -> QuerySet:
    g = torch.Generator().manual_seed(0)
    n = 32
    return QuerySet(mechanism, torch.randn(n, 6, generator=g), torch.arange(n) % 10,
                    torch.rand(n, CHANNELS[mechanism], 16, 16, generator=g))


def test_students_teachers_and_classifiers_train_on_the_device() -> None:
    student_cfg = GeneratorStudentConfig(width=4, steps=3, batch_size=8, d_width=4, adv_every=1)
    assert module_device(train_student(_queries(), GeneratorStudentConfig(width=4, steps=0), 10,
                                       device="meta")[0]) == META
    with pytest.raises(RuntimeError, match=READ_BACK):  # every step ran there
        train_student(_queries(), student_cfg, 10, device="meta")
    data = _digits()
    teacher_cfg = TeacherFitConfig(steps=0, width=4, latent_dim=6)
    assert module_device(fit_teacher(data, teacher_cfg, device="meta")[0]) == META
    for mode in ("supervised", "adversarial"):
        with pytest.raises(RuntimeError, match=READ_BACK):
            fit_teacher(data, TeacherFitConfig(mode=mode, steps=2, batch_size=8, width=4,
                                               latent_dim=6), device="meta")


def test_counterfactuals_are_composed_and_classifiers_trained_and_read_on_the_device() -> None:
    from kdci_ray.cgn.controls import classifier_features
    from kdci_ray.cgn.counterfactuals import (
        CounterfactualAugmentation,
        counterfactual_dataset,
        on_device,
    )

    seen: set[torch.device] = set()

    def blank(name, noise, labels):  # a mechanism computing where its inputs are
        seen.update((noise.device, labels.device))
        return torch.zeros(len(noise), CHANNELS[name], 16, 16, device=noise.device)

    perturbed = CounterfactualAugmentation(rotation=30.0, mask_noise=0.1, per_mask=2)
    x, y = counterfactual_dataset(on_device(blank, META), 12, 4, 10, seed=0, variant=perturbed)
    assert seen == {META} and x.device == META and x.shape == (12, 3, 16, 16)
    assert y.device.type == "cpu" and len(y) == 12  # labels are drawn on the CPU
    clf = train_classifier(x, y, steps=3, batch_size=4, arch="tiny_cnn", device=META)
    assert module_device(clf) == META
    features = classifier_features(clf, torch.rand(6, 3, 16, 16))  # CPU images moved there
    assert features.device == META and features.shape[0] == 6


def _digits():
    from kdci_ray.cgn.data import make_split

    return make_split("colored", "train", seed=0, copies=1)


# ----------------------------------------------------------------------------- cache entries


def _as_if_written_on_a_gpu(path: Path, monkeypatch) -> None:
    """Rewrite the torch file at ``path`` as a CUDA run writes it: every storage tagged
    ``cuda:0``; this machine cannot load it without ``map_location``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)


@no_cuda
def test_cache_entries_written_on_a_gpu_load_onto_the_cpu_then_the_device(tmp_path,
                                                                          monkeypatch) -> None:
    from kdci_ray.cgn.cache import (
        cached_reference,
        cached_students_of,
        cached_teacher_cgn,
        students_key,
        teacher_key,
    )
    from kdci_ray.cgn.pipeline import load_split

    monkeypatch.setenv("KDCI_RAY_CACHE", str(tmp_path))
    cfg = cgn_config.resolve({"smoke": True, "teacher.steps": 2, "student.steps": 2,
                              "queries.per_class": 4, "teacher.width": 8, "student.width": 4})
    train = load_split(cfg, "train")
    quiet = {"log": lambda _: None}
    teacher, cached = cached_teacher_cgn(cfg, train, **quiet)
    assert not cached and module_device(teacher).type == "cpu"
    _as_if_written_on_a_gpu(tmp_path / "cgn" / f"teacher-{teacher_key(cfg)}.pt", monkeypatch)
    again, cached = cached_teacher_cgn(cfg, train, **quiet)
    assert cached and all(torch.equal(a, b) for a, b in zip(
        teacher.state_dict().values(), again.state_dict().values(), strict=True))
    # an entry built on a GPU is its own (its numbers differ); the CPU's key is unchanged
    assert teacher_key(cfg, "cuda") == teacher_key(cfg, "cuda:1") != teacher_key(cfg)
    assert teacher_key(cfg, "cpu") == teacher_key(cfg)

    with BlackBoxCGN(teacher) as box:
        students, _ = cached_students_of(cfg, box, 10, **quiet)
        built = tmp_path / "cgn" / f"students-{students_key(cfg)}.pt"
        on_meta = tmp_path / "cgn" / f"students-{students_key(cfg, META)}.pt"
        shutil.copy(built, on_meta)  # as if a run on that device had built it
        _as_if_written_on_a_gpu(on_meta, monkeypatch)
        moved, cached = cached_students_of(cfg, box, 10, device=META, **quiet)
    assert cached and {module_device(s) for s in moved.values()} == {META}

    def reference() -> tuple[nn.Module, float]:
        return new_classifier("tiny_cnn", 10), 0.25

    model, acc, cached = cached_reference(cfg, "biased", reference,
                                          lambda: new_classifier("tiny_cnn", 10), device=META)
    assert (module_device(model), acc, cached) == (META, 0.25, False)
    (entry,) = (tmp_path / "cgn").glob("ref-biased-*.pt")
    _as_if_written_on_a_gpu(entry, monkeypatch)
    model, acc, cached = cached_reference(cfg, "biased", reference,
                                          lambda: new_classifier("tiny_cnn", 10), device=META)
    assert (module_device(model), acc, cached) == (META, 0.25, True)


def test_gpu_cache_entries_are_keyed_by_tf32_and_cpu_ones_are_not() -> None:
    """``run.tf32`` changes a GPU run's numbers: a teacher fitted with it is another entry."""
    from kdci_ray.cgn.cache import device_key, teacher_key
    from kdci_ray.cgn.config import resolve
    from kdci_ray.train.numerics import numerics

    plain, fast = resolve({"smoke": True}), resolve({"smoke": True, "run.tf32": True})
    with numerics(plain.run):
        assert device_key("cuda") == ["cuda"] and device_key("cpu") == []
        key_plain, key_cpu = teacher_key(plain, "cuda"), teacher_key(plain, "cpu")
    with numerics(fast.run):
        assert device_key("cuda") == ["cuda", "tf32"] and device_key("cpu") == []
        assert teacher_key(fast, "cuda") != key_plain
        assert teacher_key(fast, "cpu") == key_cpu  # TF32 is a GPU matter
