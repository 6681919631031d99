#!/usr/bin/env python3
"""Every GPU path of kdci_ray once, one PASS / FAIL / SKIP line each (issue 22).

    python tools/gpu_check.py [--device cuda|cpu] [--json PATH] [--only TEXT ...]
    make gpu-check                              # the same, --device cuda

Runs from the source tree without installing the package (the repository root goes on
``sys.path``), with any torch >= 2.11, in a fresh cache directory of its own (nothing cached
elsewhere is trusted), on smoke schedules. What it checks:

- the environment: torch's CUDA and the device's name; cuML and CuPy; the cuML tests (they must
  run, not skip); the 600k x 100 dictionary with cuML against scikit-learn (time ratio, inertia);
- each DFKD method on the device without and with KDCI; the label-shift paths (class-balanced
  KD, the post-hoc readings, the ``teacher_ref_scalar`` fusion) on DFND and Fast; the KD step's
  host-device synchronisations (``torch.cuda.set_sync_debug_mode``: at most one per step);
- resume on the device of every method (a failure injected after the first checkpoint, the
  checkpoint read back with ``map_location="cpu"``, the run continued; on a GPU with
  ``run.deterministic`` it must end bit-identical to the uninterrupted run, as on the CPU);
- DDP with torch's own launcher (torchrun; NCCL on a GPU: one rank per GPU, so one rank on a
  one-GPU machine, the process group Ray Train creates for one worker); two workers on one GPU
  (refused before anything starts);
- a Ray Train trial with ``run.use_gpu`` and KDCI; the dictionary pre-build on a Ray actor with
  a GPU (cuML under ``kdci.backend: auto``);
- an SKDCGN smoke experiment on the device; bf16 autocast, TF32 and channels_last (time ratios).

A path whose software is missing (Ray, cuML, pytest) is SKIP with the reason; with the full
``gpu`` extra nothing is skipped. ``--device cpu`` runs every step a CPU can (the test suite does,
``tests/test_gpu_check.py``). Exit status 0 when no line says FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("dafl", "deepinv", "fast", "cmi", "mosaickd", "dfnd")
BUDGET_S = 480.0  # the whole check on one GPU


class Skip(Exception):
    """The path cannot run here (missing software, or a GPU-only path on the CPU)."""


@dataclass
class Line:
    name: str
    status: str  # PASS | FAIL | SKIP
    seconds: float
    detail: str
    error: str = ""


class Checker:
    """Runs the checks in order, prints a line per path, keeps the results."""

    def __init__(self, device: str, work: Path, only: list[str]) -> None:
        import torch

        self.device = device
        self.cuda = device == "cuda"
        self.work = work
        self.only = only
        self.lines: list[Line] = []
        self.name = (torch.cuda.get_device_name() if self.cuda and torch.cuda.is_available()
                     else platform.processor() or "cpu")

    def run(self, name: str, check: Callable[[], str], always: bool = False) -> None:
        if self.only and not always and not any(part in name for part in self.only):
            return
        start = time.perf_counter()
        try:
            line = Line(name, "PASS", 0.0, check())
        except Skip as why:
            line = Line(name, "SKIP", 0.0, str(why))
        except Exception as exc:  # a FAIL line names the error; the JSON keeps the traceback
            last = (str(exc).strip().splitlines() or [""])[-1]
            line = Line(name, "FAIL", 0.0, f"{type(exc).__name__}: {last}"[:300],
                        traceback.format_exc()[-4000:])
        line.seconds = time.perf_counter() - start
        self.lines.append(line)
        print(f"{line.status:4}  {name:34} {line.seconds:7.1f} s  [{self.name}]  {line.detail}",
              flush=True)


# ----------------------------------------------------------------------------- settings


def settings(device: str, method: str = "dafl", kdci: bool = False, **extra: Any) -> dict:
    """A smoke run of ``method`` on the embedded data, on ``device``."""
    return {"preset": "embedded", "method": method, "smoke": True, "kdci.enabled": kdci,
            "run.use_gpu": device == "cuda", **extra}


def student_digest(state: dict, weights_only: bool = False) -> str:
    """A short hash of a state dict (``weights_only``: without BatchNorm's running statistics,
    which each DDP rank updates from its own batches)."""
    import hashlib

    import torch

    h = hashlib.sha1()
    for key, value in sorted(state.items()):
        if weights_only and ("running_" in key or "num_batches" in key):
            continue
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                 .tobytes())
    return h.hexdigest()[:12]


def need(module: str, why: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skip(f"{module} is not installed ({why})") from exc


# ----------------------------------------------------------------------------- environment


def check_torch(c: Checker) -> str:
    import torch

    if c.cuda and not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
    where = (f"CUDA {torch.version.cuda}, capability {torch.cuda.get_device_capability()}"
             if c.cuda else "CPU")
    return f"torch {torch.__version__}, Python {platform.python_version()}, {where}"


def check_cuml(c: Checker) -> str:
    if not c.cuda:
        raise Skip("cuML needs a GPU")
    cuml = need("cuml", "the gpu extra: pip install -e '.[gpu]'")
    cupy = need("cupy", "the gpu extra")
    from kdci_ray.cluster import cuml_backend

    if not cuml_backend.available():
        raise RuntimeError("cuML imports but kdci_ray's cuML backend finds no usable GPU")
    return f"cuML {cuml.__version__}, CuPy {cupy.__version__}"


def check_cuml_tests(c: Checker) -> str:
    if not c.cuda:
        raise Skip("the cuML tests need a GPU")
    need("cuml", "the gpu extra")
    need("pytest", "the dev extra")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "tests/test_cluster_backends.py", "tests/test_cuml_signatures.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-200:]
    if out.returncode != 0 or "skipped" in tail:
        raise RuntimeError(f"cuML tests did not all run and pass: {tail}")
    return tail


def _blobs(n: int, d: int = 100, centers: int = 128, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (centers, d)).astype(np.float32)
    return means[rng.integers(0, centers, n)] + rng.normal(0, 1, (n, d)).astype(np.float32)


def check_dictionary(c: Checker) -> str:
    """K = 128 over 600k x 100 (20k x 100 on the CPU): scikit-learn's default CPU path, and
    cuML beside it when there is one (time ratio, inertia relative to scikit-learn's)."""
    from kdci_ray.cluster import fit_kmeans
    from kdci_ray.train.runtime import limit_threads

    n = 600_000 if c.cuda else 20_000
    x = _blobs(n)
    limit_threads(os.cpu_count() or 1)  # scikit-learn as fast as this node allows
    try:
        start = time.perf_counter()
        ref = fit_kmeans(x, 128, backend="sklearn", algorithm="auto")
        cpu_s = time.perf_counter() - start
    finally:
        limit_threads()
    line = f"N={n} D=100 K=128: sklearn {cpu_s:.1f} s (inertia {ref.inertia:.4g})"
    if not c.cuda:
        return line + "; cuML needs a GPU"
    need("cuml", "the gpu extra")
    fit_kmeans(x[:20_000], 128, backend="cuml")  # warm-up (CUDA context, kernels)
    start = time.perf_counter()
    gpu = fit_kmeans(x, 128, backend="cuml")
    gpu_s = time.perf_counter() - start
    rel = (gpu.inertia - ref.inertia) / ref.inertia
    if rel > 0.01:
        raise RuntimeError(f"cuML inertia {gpu.inertia:.4g} is {rel:+.1%} off scikit-learn's")
    return f"{line}; cuML {gpu_s:.2f} s, {cpu_s / gpu_s:.0f}x, inertia {rel:+.2%}"


# ----------------------------------------------------------------------------- the loop


def check_teacher(c: Checker) -> str:
    """The embedded smoke teacher, trained once into this check's own cache."""
    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.teacher import ensure_teacher

    cfg = resolve(settings(c.device))
    ensure_teacher(cfg, log=lambda msg: None)
    return f"{cfg.teacher.arch} on {cfg.data.name} (smoke: {cfg.teacher.epochs} epoch)"


def check_kd(c: Checker, method: str, kdci: bool) -> str:
    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.loop import Collect, distill

    cfg = resolve(settings(c.device, method, kdci))
    rep = Collect()
    final = distill(cfg, rep)
    if not final.get("finished") or final.get("stopped_nonfinite"):
        raise RuntimeError(f"the run did not finish: {final}")
    kdci_part = f", acc_kdci {final['eval/acc_kdci']:.3f}" if kdci else ""
    return f"{int(final['step'])} KD steps, acc {final['eval/acc']:.3f}{kdci_part}"


def check_label_shift(c: Checker, method: str) -> str:
    """The label-shift paths of issue 25 on the device: a skewed run with class-balanced KD,
    the post-hoc readings and the ``teacher_ref_scalar`` fusion (its bias fitted on held-out
    inputs, loaded into the deployable module)."""
    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.loop import Collect, distill
    from kdci_ray.train.readings import READINGS

    cfg = resolve(settings(c.device, method, True, **{
        "kdci.fusion": "teacher_ref_scalar", "kdci.train_through": False,
        "shift.imbalance": 8.0, "shift.readings": True, "shift.heldout": 32,
        "train.balance_beta": 1.0}))
    rep = Collect()
    final = distill(cfg, rep)
    missing = [r for r in READINGS if f"eval/acc_{r}" not in final]
    if not final.get("finished") or missing or "eval/acc_kdci" not in final:
        raise RuntimeError(f"the run did not finish with every reading (missing {missing})")
    return (f"acc {final['eval/acc']:.3f}, teacher_ref_scalar {final['eval/acc_kdci']:.3f} "
            f"(tau {final['shift/tau']:.2f}), oracle {final['eval/acc_oracle']:.3f}")


def check_syncs(c: Checker) -> str:
    """KD steps under ``torch.cuda.set_sync_debug_mode("warn")``: each synchronising call
    warns; at most one per step (the non-finite check)."""
    if not c.cuda:
        raise Skip("CUDA's sync debug mode needs a GPU (the suite counts them on meta: "
                   "tests/test_gpu_paths.py)")
    import warnings

    import torch

    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train import loop

    per_step: list[int] = []
    original = loop.KDStep.__call__

    def counted(self):
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return original(self)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                per_step.append(sum("synchroniz" in str(w.message) for w in seen))

    worst: dict[str, int] = {}
    first: dict[str, int] = {}
    loop.KDStep.__call__ = counted
    try:
        for method in METHODS:
            for kdci in (False, True):
                per_step.clear()
                loop.distill(resolve(settings(c.device, method, kdci,
                                              **{"train.kd_steps": 6})), loop.Collect())
                # a run's first step may initialise CUDA libraries: counted apart
                first[f"{method}{'+kdci' if kdci else ''}"] = per_step[0] if per_step else 0
                worst[f"{method}{'+kdci' if kdci else ''}"] = max(per_step[1:], default=0)
    finally:
        loop.KDStep.__call__ = original
    over = {k: v for k, v in worst.items() if v > 1}
    if over:
        raise RuntimeError(f"more than one synchronisation per KD step: {over}")
    return (f"at most {max(worst.values())} per step after the first in every method ± KDCI "
            f"(first steps: at most {max(first.values())})")


def check_resume(c: Checker, method: str) -> str:
    """A failure injected after round 1's checkpoint; the checkpoint (with KDCI's state) read
    back with ``map_location="cpu"``; the run continued on the device to the end."""
    import torch

    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.loop import Collect, distill

    cfg = resolve(settings(c.device, method, True, **{"train.rounds": 3,
                                                      "run.deterministic": True}))
    whole = Collect()
    distill(cfg, whole)
    path = c.work / f"resume_{method}.pt"

    class Injected(RuntimeError):
        pass

    def fail_after_first_checkpoint(metrics, step, snapshot) -> None:
        if snapshot is not None:
            torch.save(snapshot.resume, path)
            raise Injected("injected failure after the first checkpoint")

    try:
        distill(cfg, fail_after_first_checkpoint)
        raise RuntimeError("the injected failure did not happen")
    except Injected:
        pass
    state = torch.load(path, map_location="cpu", weights_only=False)
    resumed = Collect()
    distill(cfg, resumed, resume=state)
    a, b = (student_digest(r.state["state_dict"]) for r in (whole, resumed))
    if a != b:
        raise RuntimeError(f"resumed run ended at {b}, the uninterrupted one at {a} "
                           f"(run.deterministic is set)")
    return f"resumed from round {state['round']}, bit-identical to the uninterrupted run ({a})"


def check_two_workers_one_gpu(c: Checker) -> str:
    from kdci_ray.errors import ConfigError
    from kdci_ray.experiments.dfkd import resolve

    try:
        resolve(settings("cuda", "dafl", True, **{"run.workers": 2,
                                                  "run.gpus_per_worker": 0.5}))
    except ConfigError as err:
        return f"refused before Ray starts: {str(err)[:90]}..."
    raise RuntimeError("run.workers=2 with run.gpus_per_worker=0.5 was accepted")


def check_torchrun(c: Checker) -> str:
    import torch

    ranks = max(1, min(2, torch.cuda.device_count())) if c.cuda else 2
    out = c.work / "ddp"
    out.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={ranks}", str(Path(__file__).resolve()), "--ddp-worker",
           str(out), "--device", c.device]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed: {(done.stderr or done.stdout)[-300:]}")
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]
    if len({r["student"] for r in results}) != 1:
        raise RuntimeError(f"the ranks' students differ: {results}")
    backend = results[0]["backend"]
    return (f"{ranks} rank(s) on {backend} with KDCI (dafl, dfnd): finished, same weights on "
            f"every rank")


def ddp_worker(out: Path, device: str) -> None:
    """One torchrun rank: the loop with KDCI under the launcher's process group."""
    import torch
    import torch.distributed as dist

    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.loop import Collect, distill

    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    try:
        digests = []
        for method in ("dafl", "dfnd"):
            rep = Collect()
            final = distill(resolve(settings(device, method, True)), rep)
            assert final["finished"] == 1.0, final
            digests.append(student_digest(rep.state["state_dict"], weights_only=True))
        (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(
            {"student": "|".join(digests), "backend": backend}))
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- Ray


def _ray(c: Checker):
    ray = need("ray", "pip install -e . installs Ray 2.60")
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(address="local", num_cpus=max(2, min(4, os.cpu_count() or 2)),
                 num_gpus=1 if c.cuda else 0, include_dashboard=False, log_to_driver=False,
                 _temp_dir=tempfile.mkdtemp(prefix="kg", dir="/tmp"))
    return ray


def check_ray_train(c: Checker) -> str:
    _ray(c)
    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.ray_train import fit

    cfg = resolve(settings(c.device, "dafl", True, **{"run.trainer": "ray_train"}))
    run_dir = c.work / "ray_train"
    result = fit(cfg, run_dir)
    metrics = result.metrics or {}
    if not metrics.get("finished") or not (run_dir / "student.pt").is_file():
        raise RuntimeError(f"the trial did not finish: {metrics}")
    return (f"TorchTrainer, use_gpu={cfg.run.use_gpu}, KDCI: acc {metrics['eval/acc']:.3f}, "
            f"acc_kdci {metrics['eval/acc_kdci']:.3f}")


def check_prebuild(c: Checker) -> str:
    _ray(c)
    from kdci_ray.engine.dictionary_job import build_shared_dictionary
    from kdci_ray.experiments.dfkd import resolve

    # a pool of its own: nothing in the store yet, so the dictionary is built now
    cfg = resolve(settings(c.device, "dfnd", True, **{"kdci.backend": "auto", "pool.seed": 77}))
    entry = build_shared_dictionary(cfg, log=lambda msg: None,
                                    actor_gpus=1.0 if c.cuda else 0.0)
    if entry["built_on"] != "actor":
        raise RuntimeError(f"built on {entry['built_on']}, not on a Ray actor")
    if c.cuda and entry["backend"] != "cuml":
        try:
            need("cuml", "the gpu extra")
        except Skip as why:
            return f"on a GPU actor with {entry['backend']} ({why})"
        raise RuntimeError(f"clustered with {entry['backend']}, not cuML, on the GPU actor")
    return (f"N={entry['num_samples']}, K={entry['k']} on a Ray actor "
            f"({'GPU' if c.cuda else 'CPU'}), backend {entry['backend']}")


# ----------------------------------------------------------------------------- SKDCGN, speed


def check_skdcgn(c: Checker) -> str:
    from kdci_ray.cgn.config import resolve as resolve_cgn
    from kdci_ray.cgn.pipeline import run

    cfg = resolve_cgn({"smoke": True, "run.use_gpu": c.cuda})
    try:  # sample grids go to TensorBoard through tensorboardX (a bare GPU image lacks it)
        import tensorboardX  # noqa: F401

        out_dir = c.work / "skdcgn"
    except ImportError:
        out_dir = None
    metrics = run(cfg, out_dir, log=lambda msg: None, device=c.device)
    return (f"shifted-test acc: biased {metrics['acc_biased']:.3f}, teacher counterfactuals "
            f"{metrics['acc_teacher_cf']:.3f}, student counterfactuals "
            f"{metrics['acc_student_cf']:.3f} (smoke schedules)")


def check_speed(c: Checker, option: dict[str, Any]) -> str:
    """One method's KD steps with ``option`` against without (same process, warm)."""
    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.loop import Collect, distill

    timing = ({"train.rounds": 2, "train.kd_steps": 20, "train.batch_size": 256} if c.cuda
              else {"train.rounds": 1, "train.kd_steps": 2, "train.batch_size": 32})

    def kd_seconds(extra: dict[str, Any]) -> float:
        start = time.perf_counter()
        distill(resolve(settings(c.device, "deepinv", True, **timing, **extra)), Collect())
        return time.perf_counter() - start

    kd_seconds({})  # warm-up
    base, opt = kd_seconds({}), kd_seconds(option)
    return f"{base:.2f} s without, {opt:.2f} s with ({base / opt:.2f}x)"


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--json", type=Path, default=None, help="write the lines here as JSON")
    p.add_argument("--only", nargs="*", default=[], help="run the checks whose name has TEXT")
    p.add_argument("--ddp-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ddp_worker is not None:
        ddp_worker(args.ddp_worker, args.device)
        return 0
    import kdci_ray  # noqa: F401  (pins the thread count before torch loads)

    work = Path(tempfile.mkdtemp(prefix="kdci_gpu_check_"))
    os.environ["KDCI_RAY_CACHE"] = str(work / "cache")  # nothing cached elsewhere is trusted
    c = Checker(args.device, work, args.only)
    start = time.perf_counter()
    c.run("torch", lambda: check_torch(c))
    c.run("cuml", lambda: check_cuml(c))
    c.run("cuml-tests", lambda: check_cuml_tests(c))
    c.run("dictionary-k128", lambda: check_dictionary(c))
    c.run("teacher", lambda: check_teacher(c), always=True)  # every later path uses it
    for method in METHODS:
        for kdci in (False, True):
            c.run(f"kd/{method}{'+kdci' if kdci else ''}",
                  lambda m=method, k=kdci: check_kd(c, m, k))
    for method in ("dfnd", "fast"):
        c.run(f"label-shift/{method}", lambda m=method: check_label_shift(c, m))
    c.run("kd-step-syncs", lambda: check_syncs(c))
    for method in METHODS:
        c.run(f"resume/{method}+kdci", lambda m=method: check_resume(c, m))
    c.run("two-workers-one-gpu", lambda: check_two_workers_one_gpu(c))
    c.run("ddp-torchrun+kdci", lambda: check_torchrun(c))
    c.run("ray-train+kdci", lambda: check_ray_train(c))
    c.run("dictionary-prebuild-actor", lambda: check_prebuild(c))
    c.run("skdcgn-smoke", lambda: check_skdcgn(c))
    for name, option in (("amp-bf16", {"run.amp": "bf16"}), ("tf32", {"run.tf32": True}),
                         ("channels-last", {"run.channels_last": True})):
        c.run(f"speed/{name}", lambda o=option: check_speed(c, o))
    total = time.perf_counter() - start
    failed = [line.name for line in c.lines if line.status == "FAIL"]
    print(f"{len(c.lines) - len(failed)} of {len(c.lines)} paths did not fail "
          f"({sum(line.status == 'SKIP' for line in c.lines)} skipped) in {total:.0f} s on "
          f"{c.name}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json is not None:
        args.json.write_text(json.dumps({
            "device": c.name, "device_kind": args.device, "total_s": total,
            "budget_s": BUDGET_S, "python": platform.python_version(),
            "torch": __import__("torch").__version__, "commit": _commit(),
            "lines": [asdict(line) for line in c.lines]}, indent=2))
    return 1 if failed else 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
