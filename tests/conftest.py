"""Shared fixtures: a private cache with a tiny trained teacher, one Ray session per test run."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest
import tiers

# Before anything imports torch / ray: one thread per process, no auth on the local Ray, a cache
# that never touches the user's home.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.25"
os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"  # as kdci-ray's own local Ray
_CACHE = tempfile.mkdtemp(prefix="kdci_cache_")
os.environ["KDCI_RAY_CACHE"] = _CACHE

# Tiny, fast settings every loop test starts from (16x16 digits, tiny CNNs).
TINY = {
    "preset": "embedded",
    "teacher.arch": "tiny_cnn",
    "teacher.epochs": 4,
    "teacher.min_acc": 0.5,
    "student.arch": "tiny_cnn",
    "train.rounds": 2,
    "train.kd_steps": 2,
    "train.batch_size": 16,
    "train.eval_every": 1,
    "dafl.batch_size": 16,
    "dafl.latent_dim": 16,
    "deepinv.batch_size": 16,
    "deepinv.iterations": 3,
    "kdci.k": 4,
    "fast.batch_size": 16, "fast.latent_dim": 16, "fast.width": 8, "fast.g_steps": 2,
    "fast.warmup": 0,
    "cmi.batch_size": 16, "cmi.latent_dim": 16, "cmi.width": 8, "cmi.g_steps": 2,
    "cmi.bank_size": 64, "cmi.n_neg": 32,
    "pool.size": 512,
    "mosaickd.ood_subset": 64, "mosaickd.batch_size": 16, "mosaickd.latent_dim": 16,
    "mosaickd.width": 8, "mosaickd.ndf": 8,
    "dfnd.select_n": 64,
}


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    """TINY settings with the tiny teacher trained once into the test cache."""
    from kdci_ray.experiments.dfkd import resolve
    from kdci_ray.train.teacher import ensure_teacher

    ensure_teacher(resolve(TINY), log=lambda msg: None)
    return dict(TINY)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if ray.is_initialized():
        yield ray
        return
    tmp = tempfile.mkdtemp(prefix="kr", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=tmp,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _sigint_left_as_found():
    """A test leaves Ctrl-C's handler as it found it: a process it starts later inherits an
    ignored SIGINT, and the Ctrl-C tests' drivers would not stop (in whichever test runs next)."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test left SIGINT handled by {after!r} (it found {before!r})")


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    if tiers.fast_tier(config):
        tiers.install_fast_tier_guard()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    tiers.running(item.nodeid if tiers.fast_tier(item.config) else None)
    try:
        yield
    finally:
        tiers.running(None)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(config, items) -> None:
    """Marks ``slow`` what starts Ray or a driver (``tests/tiers.py``).
    ``KDCI_TEST_SHUFFLE=<seed>`` runs the tests in a shuffled order (``make test-shuffled``):
    every test must own what it reads from a shared store, whatever ran before it."""
    tiers.mark_slow_tests(items)
    seed = os.environ.get("KDCI_TEST_SHUFFLE")
    if seed:
        import random

        random.Random(int(seed)).shuffle(items)
        config.get_terminal_writer().line(f"tests shuffled with KDCI_TEST_SHUFFLE={seed}")
