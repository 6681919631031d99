#!/usr/bin/env python3
"""Fingerprints of the numbers: every DFKD method without and with KDCI (plus a few KDCI, shift
and ablation variants) and an SKDCGN experiment, run in-process on tiny CPU settings, each
reduced to digests of what it computed: the final student's tensors (with KDCI's attention and
dictionary buffers) and every metric it reported, timings and cache hits left out.

    python tools/fingerprints.py            # compare this tree with tests/golden/fingerprints.json
    python tools/fingerprints.py --write    # record this tree's (after a deliberate numeric change)

``tests/test_fingerprints.py`` compares the same runs with the golden file, so a refactor that
changes a number fails the suite. CPU runs are bit-deterministic for one torch build, thread
count and CPU instruction set, which the golden file records (``environment``); elsewhere the test
skips and says so. Runs from the source tree (the repository root goes on ``sys.path``) in a fresh
cache directory of its own, unless ``KDCI_RAY_CACHE`` is set (the test suite's cache).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "fingerprints.json"

# tiny distillation settings (the teacher as the suite's TINY teacher, so a test session trains
# it once): 16x16 digits, tiny CNNs, 2 rounds of 2 KD steps
DFKD_SETTINGS: dict[str, Any] = {
    "preset": "embedded", "teacher.arch": "tiny_cnn", "teacher.epochs": 4,
    "teacher.min_acc": 0.5, "student.arch": "tiny_cnn", "train.rounds": 2, "train.kd_steps": 2,
    "train.batch_size": 16, "train.eval_every": 1, "kdci.k": 4,
    "dafl.batch_size": 16, "dafl.latent_dim": 16,
    "deepinv.batch_size": 16, "deepinv.iterations": 3,
    "fast.batch_size": 16, "fast.latent_dim": 16, "fast.width": 8, "fast.g_steps": 2,
    "fast.warmup": 0,
    "cmi.batch_size": 16, "cmi.latent_dim": 16, "cmi.width": 8, "cmi.g_steps": 2,
    "cmi.bank_size": 64, "cmi.n_neg": 32,
    "pool.size": 512,
    "mosaickd.ood_subset": 64, "mosaickd.batch_size": 16, "mosaickd.latent_dim": 16,
    "mosaickd.width": 8, "mosaickd.ndf": 8,
    "dfnd.select_n": 64,
}
METHODS = ("dafl", "deepinv", "fast", "cmi", "mosaickd", "dfnd")
KDCI = {"kdci.enabled": True}
DFKD_RUNS: dict[str, dict[str, Any]] = {
    **{f"{m}": {"method": m} for m in METHODS},
    **{f"{m}+kdci": {"method": m, **KDCI} for m in METHODS},
    "fast+kdci log_prior shift": {"method": "fast", **KDCI, "kdci.fusion": "log_prior",
                                  "shift.imbalance": 8.0},
    "dfnd+kdci log_prior": {"method": "dfnd", **KDCI, "kdci.fusion": "log_prior"},
    "dafl+kdci scaled projection log_probs": {"method": "dafl", **KDCI, "kdci.fusion": "scaled",
                                              "kdci.projection": True,
                                              "kdci.space": "log_probs"},
    "deepinv+kdci source random_z without_p": {"method": "deepinv", **KDCI,
                                               "kdci.features": "source",
                                               "kdci.random_z": True, "kdci.without_p": True},
    "cmi+kdci expectation random_lambda": {"method": "cmi", **KDCI,
                                           "kdci.fusion": "expectation",
                                           "kdci.random_lambda": True},
}
# a tiny SKDCGN experiment (not smoke mode: its schedules are larger than these)
CGN_RUNS: dict[str, dict[str, Any]] = {
    "skdcgn": {"data.copies": 1, "teacher.steps": 5, "teacher.batch_size": 16,
               "student.steps": 5, "student.batch_size": 16, "queries.per_class": 4,
               "queries.heldout_per_class": 2, "classifier.counterfactuals": 64,
               "classifier.steps": 5, "classifier.batch_size": 16, "controls.samples": 32},
}
# reported values that measure time or say whether a cache served: not numbers of the method
LEFT_OUT_SUFFIXES = ("_s", "_per_s", "_cached", "sample_speed_ratio")
LEFT_OUT = ("kdci/cached",)


def kept(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without timings and cache hits."""
    return {k: v for k, v in metrics.items() if k not in LEFT_OUT
            and not k.startswith("time/") and not k.endswith(LEFT_OUT_SUFFIXES)}


def digest(value: Any) -> str:
    """sha256 of ``value``: tensors by name, dtype, shape and bytes, the rest as sorted JSON."""
    import torch

    h = hashlib.sha256()

    def feed(obj: Any, name: str) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else
                     t.float().numpy().tobytes())
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                feed(obj[key], f"{name}/{key}")
        else:
            h.update(f"{name}={json.dumps(obj, sort_keys=True, default=repr)}".encode())

    feed(value, "")
    return h.hexdigest()


def dfkd_fingerprint(overrides: dict[str, Any]) -> dict[str, str]:
    """One distillation run: digests of the final student's tensors (KDCI's too) and of every
    report's metrics."""
    import torch

    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.loop import Collect, distill

    report = Collect()
    distill(resolve(DFKD_SETTINGS, overrides), report)
    assert report.state is not None, "the run made no final checkpoint"
    tensors = {k: v for k, v in report.state.items()
               if isinstance(v, torch.Tensor) or (isinstance(v, dict) and k != "kdci_module")}
    return {"student": digest(tensors),
            "metrics": digest([[step, kept(m)] for step, m in report.history])}


def cgn_fingerprint(layer: dict[str, Any]) -> dict[str, str]:
    """One SKDCGN experiment: the digest of every metric it returns."""
    from kdci_ray.cgn.config import resolve
    from kdci_ray.cgn.pipeline import run

    return {"metrics": digest(kept(run(resolve(layer), None, log=lambda msg: None)))}


def environment() -> dict[str, Any]:
    """What CPU numbers depend on besides the code: torch, the thread count, the instruction
    set torch's CPU kernels use."""
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def fingerprints(log=print) -> dict[str, Any]:
    """Every run's fingerprint (the teacher trained or found in the cache first)."""
    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.runtime import limit_threads
    from kdci_ray.train.teacher import ensure_teacher

    limit_threads()
    ensure_teacher(resolve(DFKD_SETTINGS), log=lambda msg: None)
    runs: dict[str, Any] = {}
    for name, overrides in DFKD_RUNS.items():
        start = time.perf_counter()
        runs[name] = dfkd_fingerprint(overrides)
        log(f"{name}: {runs[name]['student'][:12]} {runs[name]['metrics'][:12]} "
            f"({time.perf_counter() - start:.1f} s)")
    for name, layer in CGN_RUNS.items():
        start = time.perf_counter()
        runs[name] = cgn_fingerprint(layer)
        log(f"{name}: {runs[name]['metrics'][:12]} ({time.perf_counter() - start:.1f} s)")
    return {"environment": environment(), "runs": runs}


def differences(golden: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per run (or digest) that differs, is missing or is new."""
    lines = []
    for name in sorted(set(golden["runs"]) | set(now["runs"])):
        old, new = golden["runs"].get(name), now["runs"].get(name)
        if old is None or new is None:
            lines.append(f"{name}: {'new' if old is None else 'no longer run'}")
            continue
        lines += [f"{name}: {what} digest differs" for what in sorted(set(old) | set(new))
                  if old.get(what) != new.get(what)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help=f"record this tree's fingerprints in {GOLDEN.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if "KDCI_RAY_CACHE" not in os.environ:
        os.environ["KDCI_RAY_CACHE"] = tempfile.mkdtemp(prefix="kdci_fingerprints_")
    sys.path.insert(0, str(ROOT))
    import kdci_ray  # noqa: F401 - pins the thread count before torch loads

    now = fingerprints()
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")
        return 0
    golden = json.loads(GOLDEN.read_text())
    if golden["environment"] != now["environment"]:
        print(f"recorded in {golden['environment']}, this is {now['environment']}: the digests "
              f"are not comparable")
    lines = differences(golden, now)
    print("\n".join(lines) if lines else f"all {len(now['runs'])} fingerprints match")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
