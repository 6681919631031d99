"""The GPU paths of the loop, tested on a CPU-only machine (issue 22, faults 1, 2, 4 and the KD
step's host reads).

``meta`` tensors stand in for GPU tensors where only where state lives is checked, and a
process-group backend that refuses CPU tensors (``tests/device_checks.py``) stands in for NCCL.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from device_checks import (
    META,
    CpulessGroup,
    CPURefused,
    HostReads,
    cpu_checkpoint,
    cpuless_group,
    host_state_paths,
    tensors_of,
)

from kdci_ray.experiments.dfkd import resolve
from kdci_ray.methods import METHODS
from kdci_ray.models import create_model
from kdci_ray.train.datasets import load_data
from kdci_ray.train.kdci_setup import build_kdci
from kdci_ray.train.loop import Collect, distill, method_context
from kdci_ray.train.runtime import Runtime
from kdci_ray.train.teacher import load_teacher

# (what this change added is imported inside the tests, so that each test of a fault runs, and
# fails at its own assertion, on the commit before it)

ALL = ["dafl", "deepinv", "fast", "cmi", "mosaickd", "dfnd"]
# loading a CPU checkpoint into meta modules copies nothing (there is no data to check there)
pytestmark = pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- fault 1: NCCL


@pytest.mark.parametrize("method", ["dafl", "dfnd"])
def test_kdci_runs_under_a_backend_that_refuses_cpu_tensors(tiny_settings, method) -> None:
    """Ray Train creates a process group even for one worker (NCCL with GPUs): one rank issues
    no collective, so KDCI's refresh never hands NCCL a CPU tensor."""
    cfg = resolve(tiny_settings, {"method": method, "kdci.enabled": True})
    with cpuless_group(world_size=1):
        rep = Collect()
        final = distill(cfg, rep)
    assert final["finished"] == 1.0 and "eval/acc_kdci" in final
    assert any(m.get("kdci/samples", 0) > 0 for _, m in rep.history)  # a refresh ran


def test_collectives_of_several_ranks_take_the_backends_device() -> None:
    from kdci_ray.kdci.collectives import broadcast_from_main, collective_device, gather_to_cpu
    from kdci_ray.train.kd_step import nonfinite_loss

    with cpuless_group(world_size=2):
        assert collective_device(META) == META
        with pytest.raises(RuntimeError, match="takes only"):
            collective_device(CPU)  # NCCL-like: no CPU fallback for a CPU trial
        (out,) = broadcast_from_main([torch.zeros(4, 10)], META)
        assert out.device == META
        with HostReads().active():  # meta holds no data: the gathered copy is faked
            feats = gather_to_cpu(torch.zeros(3, 10, device=META), META)
        assert feats.shape == (6, 10) and feats.device == CPU
        with HostReads().active() as reads:
            assert nonfinite_loss(torch.zeros((), device=META), Runtime(0, 2, META)) is None
        assert reads.count == 1  # the flags all-reduced on the device, read back once
        assert CpulessGroup.seen and all(d == META for d in CpulessGroup.seen)


def test_the_refusing_backend_refuses_cpu_tensors() -> None:
    """The stand-in really behaves like NCCL (else the tests above would prove nothing)."""
    with cpuless_group(world_size=2), pytest.raises(CPURefused):
        dist.broadcast(torch.zeros(3), src=0)


# ----------------------------------------------------------------------------- state on meta


def _cpu_run(settings: dict, method: str, kdci: bool = True):
    """A CPU run's objects after one synthesis round and its refresh (as at a checkpoint)."""
    cfg = resolve(settings, {"method": method, "kdci.enabled": kdci})
    data = load_data(cfg)
    rt = Runtime(0, 1, CPU)
    teacher = load_teacher(cfg, data, CPU)
    student = create_model(cfg.student.arch, data.num_classes, data.channels)
    ctx = method_context(cfg, data, teacher, student, rt)
    m = METHODS[method](cfg.method_config, ctx)
    m.synthesize(0)
    for _ in range(2):
        m.sample(cfg.train.batch_size)
    kdci = build_kdci(cfg, METHODS[method].substitution, data, rt)
    if kdci is not None:
        kdci.start_round(0, teacher, m)
        with torch.no_grad():
            x = m.sample(cfg.train.batch_size)
            kdci.adjust(student(x).logits, teacher(x).logits)
    return cfg, data, teacher, student, m, kdci


def _on_meta(cfg, data, teacher, student, method, kdci):
    """The same run rebuilt on ``meta`` from its checkpoint state (read onto the CPU)."""
    rt = Runtime(0, 1, META)
    teacher_m = copy.deepcopy(teacher).to(META)
    student_m = copy.deepcopy(student).to(META)
    ctx = method_context(cfg, data, teacher_m, student_m, rt)
    method_m = METHODS[cfg.method](cfg.method_config, ctx)
    method_m.load_state_dict(cpu_checkpoint(method.state_dict()))
    for name in ("subset", "ood"):  # a fixed pool is selected again (from its cache) on resume
        held = getattr(method, name, None)
        if held is not None:
            moved = copy.copy(held)
            moved.ctx = ctx
            setattr(method_m, name, moved)
    if getattr(method, "weights", None) is not None:
        method_m.weights = method.weights.to(META)
    kdci_m = None
    if kdci is not None:
        kdci_m = build_kdci(cfg, METHODS[cfg.method].substitution, data, rt)
        kdci_m.load_state_dict(cpu_checkpoint(kdci.state_dict()))
    return teacher_m, student_m, method_m, kdci_m, rt


@pytest.mark.parametrize("method", ALL)
def test_restored_method_state_lives_on_the_runs_device(tiny_settings, method) -> None:
    """Resume on a GPU: a checkpoint is read onto the CPU, and every piece of the method's and
    KDCI's state goes back to the trial's device (image pools, Fast's BN memory, CMI's bank,
    the observed teacher logits); only random-generator states stay CPU byte tensors."""
    run = _cpu_run(tiny_settings, method)
    _, _, method_m, kdci_m, _ = _on_meta(*run)
    state = method_m.state_dict()
    host = host_state_paths(state)
    stray = [p for p, t in tensors_of(state) if p not in host and t.device != META]
    assert not stray, f"{method}: restored state left on the CPU: {stray}"
    kdci_state = kdci_m.state_dict()
    stray = [p for p, t in tensors_of(kdci_state)
             if p not in host_state_paths(kdci_state) and t.device != META]
    assert not stray, f"KDCI state left on the CPU: {stray}"


# ----------------------------------------------------------------------------- KD-step syncs


@pytest.mark.parametrize("kdci", [False, True])
@pytest.mark.parametrize("method", ALL)
def test_a_kd_step_reads_back_from_the_device_once(tiny_settings, method, kdci) -> None:
    """Outside evaluations a KD step synchronises host and device once (the non-finite check):
    sampling, augmentation, the teacher's class counts, KDCI's observation and metrics, the
    loss sums and the optimiser step never read a device value back or copy onto the device
    blockingly."""
    from kdci_ray.train.kd_step import KDStep

    run = _cpu_run(tiny_settings, method, kdci)
    cfg, data = run[0], run[1]
    teacher_m, student_m, method_m, kdci_m, rt = _on_meta(*run)
    params = [{"params": student_m.parameters(), "lr": cfg.train.lr}]
    if kdci_m is not None:
        params.append(kdci_m.param_group(cfg.train.lr))
    opt = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum,
                          weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    step = KDStep(cfg, method_m, teacher_m, student_m, kdci_m, opt, sched, rt, data.num_classes)
    student_m.train()
    steps = 3
    with HostReads().active() as reads:
        for _ in range(steps):
            assert step() is None
    assert reads.count == steps, reads.where
    assert set(reads.where) == {"tolist"}  # the non-finite check's one read
    assert any(k.startswith("train/") for k in step.sums)


# ----------------------------------------------------------------------------- fault 4: device


def test_worker_device_never_falls_back_to_the_cpu(monkeypatch) -> None:
    from kdci_ray.train import runtime
    from kdci_ray.train.runtime import GPUUnavailable, worker_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_device(False) == CPU
    with pytest.raises(GPUUnavailable, match="no usable CUDA device"):
        worker_device(True)
    with pytest.raises(GPUUnavailable):
        runtime.current_runtime(use_gpu=True)  # was: a silent CPU runtime


def test_worker_device_uses_the_gpu_ray_assigned(monkeypatch) -> None:
    from kdci_ray.train.runtime import GPUUnavailable, worker_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("LOCAL_RANK", "0")
    # Ray Train gave this worker the second of its GPUs: not LOCAL_RANK's
    assert worker_device(True, torch.device("cuda", 1)) == torch.device("cuda", 1)
    with pytest.raises(GPUUnavailable, match="assigned cpu"):
        worker_device(True, CPU)  # use_gpu, but Ray Train saw no GPU for this worker


def test_a_local_rank_past_the_visible_gpus_is_an_error(monkeypatch) -> None:
    from kdci_ray.train.runtime import GPUUnavailable, worker_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(GPUUnavailable, match="past the 1 GPU"):
        worker_device(True)  # LOCAL_RANK % device_count would take rank 0's GPU
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert worker_device(True) == torch.device("cuda", 0)


def test_the_head_may_have_no_gpu(monkeypatch) -> None:
    from kdci_ray.train.runtime import host_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert host_device(True) == CPU
