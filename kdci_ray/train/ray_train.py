"""The Ray Train adapter: run the one loop on ``run.workers`` workers with a TorchTrainer.

Ray Train sets up the process group (gloo on CPU, NCCL on GPU); the loop sees torch.distributed
and DDP-wraps what it trains. Rank 0 writes TensorBoard events (exact tags: ``eval/acc``,
``train/loss``, ``kdci/*``...) into the run directory and the final checkpoint goes through
``ray.train.report`` like in Ray's own examples.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train.torch import TorchTrainer

from kdci_ray.config import ExperimentConfig, resolve, save_resolved

CHECKPOINT_FILE = "student.pt"


def train_func(config: dict[str, Any]) -> None:
    """Per-worker entry point (``train_loop_per_worker``)."""
    from tensorboardX import SummaryWriter

    from kdci_ray.train.task import distill

    cfg = resolve(config["settings"])
    rank = ray.train.get_context().get_world_rank()
    writer = SummaryWriter(config["run_dir"], flush_secs=10) if rank == 0 else None

    def report(metrics: dict[str, float], step: int, state: dict[str, Any] | None) -> None:
        if writer is not None:
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)
            writer.flush()
        if state is None or rank != 0:  # one checkpoint per run, from rank 0
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / CHECKPOINT_FILE)
            save_resolved(cfg, Path(tmp) / "config.yaml")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    try:
        distill(cfg, report)
    finally:
        if writer is not None:
            writer.close()


def fit(cfg: ExperimentConfig, settings: dict[str, Any], run_dir: Path,
        callbacks: list | None = None) -> ray.train.Result:
    """Train one configuration with Ray Train; the final student lands in ``run_dir/student.pt``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"settings": settings, "run_dir": str(run_dir)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.run.workers, use_gpu=cfg.run.use_gpu,
            resources_per_worker={"CPU": cfg.run.cpus_per_worker,
                                  **({"GPU": 1} if cfg.run.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name="train", storage_path=str(run_dir),
            failure_config=ray.train.FailureConfig(controller_failure_limit=3),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as ckpt_dir:
            shutil.copy2(Path(ckpt_dir) / CHECKPOINT_FILE, run_dir / CHECKPOINT_FILE)
    return result
