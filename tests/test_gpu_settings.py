"""GPU settings checked on a CPU-only machine (issue 22): two workers on one GPU refused before
Ray starts, the device a Train worker uses, CPU threads of GPU workers without a teacher cache
miss, and the opt-in numerics (bf16 autocast, TF32, channels_last, deterministic)."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.distributed as dist

from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.train.loop import Collect, distill
from kdci_ray.train.runtime import current_runtime

CPU = torch.device("cpu")


def _digest(state: dict) -> str:
    h = hashlib.sha1()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- fault 3


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_two_workers_on_one_gpu_are_refused_before_ray(tiny_settings, fraction) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(tiny_settings, {"run.use_gpu": True, "run.workers": 2,
                                "run.gpus_per_worker": fraction})
    msg = str(err.value)
    assert "NCCL refuses" in msg and "run.gpus_per_worker: 1" in msg and "run.workers: 1" in msg
    # one worker per trial may share a GPU with other trials; whole GPUs per worker are fine
    resolve(tiny_settings, {"run.use_gpu": True, "run.workers": 1, "run.gpus_per_worker": 0.5})
    resolve(tiny_settings, {"run.use_gpu": True, "run.workers": 2, "run.gpus_per_worker": 1})


# ----------------------------------------------------------------------------- fault 4


def test_use_gpu_without_a_usable_gpu_is_an_error_not_a_cpu_run(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert current_runtime(use_gpu=False).device == CPU
    with pytest.raises(RuntimeError, match="run.use_gpu is set but this worker sees no usable"):
        current_runtime(use_gpu=True)


def test_a_worker_never_takes_another_workers_gpu(monkeypatch) -> None:
    """torchrun / Ray set LOCAL_RANK; a worker that sees one GPU (its own) with LOCAL_RANK 1
    used to take GPU ``1 % 1 = 0`` whatever it was given."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(RuntimeError, match="past the 1 GPU"):
        current_runtime(use_gpu=True)


def test_a_train_worker_uses_the_device_ray_train_assigned(tiny_settings, monkeypatch) -> None:
    import ray.train.torch

    from kdci_ray.train.ray_train import train_runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cuda", 1))
    cfg = resolve(tiny_settings, {"run.use_gpu": True})
    assert train_runtime(cfg).device == torch.device("cuda", 1)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: CPU)  # no GPU given to it
    with pytest.raises(RuntimeError, match="assigned cpu"):
        train_runtime(cfg)
    assert train_runtime(resolve(tiny_settings)).device == CPU  # use_gpu off: never asked


# ----------------------------------------------------------------------------- threads


def test_a_gpu_worker_uses_its_cpus_and_finds_the_same_teacher(tiny_settings) -> None:
    from kdci_ray.train.runtime import limit_threads, thread_count, worker_threads
    from kdci_ray.train.teacher import cached_teacher_problem, teacher_path

    cfg = resolve(tiny_settings, {"run.use_gpu": True, "run.cpus_per_worker": 2})
    assert worker_threads(cfg.run, CPU) == thread_count()  # a CPU worker's numbers need it
    assert worker_threads(cfg.run, torch.device("meta")) == 2  # a GPU worker: its CPUs
    path = teacher_path(cfg)
    try:
        assert limit_threads(worker_threads(cfg.run, torch.device("meta"))) == 2
        assert torch.get_num_threads() == 2
        assert teacher_path(cfg) == path and cached_teacher_problem(cfg) == ""
    finally:
        limit_threads()  # back to the job's count: the numbers of later tests depend on it
    assert torch.get_num_threads() == thread_count()


# ----------------------------------------------------------------------------- numerics


def test_numerics_hold_for_a_run_and_never_leak(tiny_settings) -> None:
    from kdci_ray.train.numerics import numerics

    fast = resolve(tiny_settings, {"run.tf32": True, "run.deterministic": True})
    before = torch.backends.cudnn.allow_tf32
    with numerics(fast.run):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.allow_tf32 == before
    with numerics(resolve(tiny_settings).run):
        # TF32 is off by default, cuDNN convolutions included (torch's own default is on)
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
        assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_mode_changes_no_bit_on_the_cpu(tiny_settings) -> None:
    runs = {}
    for flag in (False, True):
        rep = Collect()
        distill(resolve(tiny_settings, {"method": "deepinv", "kdci.enabled": True,
                                        "run.deterministic": flag}), rep)
        runs[flag] = _digest(rep.state["state_dict"])
    assert runs[True] == runs[False]
    assert not torch.are_deterministic_algorithms_enabled()  # the process's setting is back


@pytest.mark.parametrize("options", [{"run.amp": "bf16"}, {"run.channels_last": True}])
def test_opt_in_speed_settings_train(tiny_settings, options) -> None:
    """bf16 autocast and NHWC run through the whole loop (here on the CPU; their speed is a
    GPU matter): the student trains and its loss stays finite."""
    rep = Collect()
    final = distill(resolve(tiny_settings, {"method": "dafl", "kdci.enabled": True, **options}),
                    rep)
    assert final["finished"] == 1.0 and not final.get("stopped_nonfinite")
    assert all(v.dtype == torch.float32 for v in rep.state["state_dict"].values()
               if v.is_floating_point())  # weights stay float32 under autocast
    assert final["eval/acc"] > 0.1


def test_amp_takes_only_known_values(tiny_settings) -> None:
    with pytest.raises(ConfigError, match="run.amp"):
        resolve(tiny_settings, {"run.amp": "fp16"})
