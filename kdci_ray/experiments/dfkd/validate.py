"""Value checks on a resolved distillation config that need more than a type."""

from __future__ import annotations

import difflib
import math

from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd.config import CHOICES, ExperimentConfig
from kdci_ray.methods import METHODS, Method
from kdci_ray.train.resources import parse_resources


def validate(cfg: ExperimentConfig) -> None:
    """Value checks that need more than a type."""
    positive = {
        "train.rounds": cfg.train.rounds,
        "train.kd_steps": cfg.train.kd_steps,
        "train.batch_size": cfg.train.batch_size,
        "train.eval_every": cfg.train.eval_every,
        "train.eval_batch_size": cfg.train.eval_batch_size,
        "teacher.batch_size": cfg.teacher.batch_size,
        "teacher.epochs": cfg.teacher.epochs,
        "run.workers": cfg.run.workers,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
    for key, value in (("train.lr", cfg.train.lr), ("teacher.lr", cfg.teacher.lr),
                       ("kdci.lr_scale", cfg.kdci.lr_scale)):
        if not value > 0 or value == float("inf"):
            raise ConfigError(f"config key '{key}' must be a learning rate > 0, got {value}")
    for key, value, top in (("train.momentum", cfg.train.momentum, 1.0),
                            ("train.weight_decay", cfg.train.weight_decay, float("inf"))):
        if not 0 <= value < top:
            raise ConfigError(f"config key '{key}' must be in [0, {top:g}), got {value}")
    beta = cfg.train.balance_beta
    if not (math.isfinite(beta) and 0 <= beta <= 4):
        raise ConfigError(
            f"config key 'train.balance_beta' must be a finite exponent in [0, 4], got {beta}: "
            f"set 0 for plain KD, or 0.5 or 1 to weight each KD sample by the inverse of the "
            f"teacher's class prior")
    _check_archs(cfg)
    _check_run(cfg)
    _check_shift(cfg)
    _check_post_hoc(cfg)
    if not (math.isfinite(cfg.kdci.tau) and cfg.kdci.tau != 0):
        raise ConfigError(f"config key 'kdci.tau' must be a finite non-zero factor, got "
                          f"{cfg.kdci.tau}")
    if cfg.kdci.uniform_p and cfg.kdci.without_p:
        raise ConfigError("kdci.uniform_p (P = 1/K) and kdci.without_p (P = 1, Table 4's "
                          "'w/o P(z)') contradict each other: set one of them")
    if cfg.kdci.k < 0:
        raise ConfigError(
            f"config key 'kdci.k' must be >= 0 (0 = method default), got {cfg.kdci.k}"
        )
    if cfg.kdci.enabled:
        method = METHODS[cfg.method]
        k = resolved_k(cfg)
        n = method.substitution_size(cfg.method_config, cfg.run.workers)
        if k > n:
            raise ConfigError(
                f"KDCI dictionary size K={k} is larger than the {n} substitution images each "
                f"refresh of '{cfg.method}' clusters; lower kdci.k or raise "
                f"{cfg.method}.batch_size"
            )
        observed = cfg.train.kd_steps * cfg.train.batch_size * cfg.run.workers
        if (not method.substitution.fixed and cfg.kdci.features == "observed"
                and cfg.kdci.source != "model" and k > observed):
            raise ConfigError(
                f"KDCI dictionary size K={k} is larger than the {observed} teacher outputs of one "
                f"round's KD steps (train.kd_steps x train.batch_size x run.workers) that "
                f"kdci.features=observed clusters; lower kdci.k, raise train.kd_steps or "
                f"train.batch_size, or set kdci.features=source"
            )
    for key, allowed in CHOICES.items():
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(
                f"config key '{key}' must be one of {', '.join(allowed)}, got {value!r}"
            )
    if cfg.kdci.source == "model" and not cfg.kdci.source_arch:
        raise ConfigError(
            "config key 'kdci.source' is 'model' but 'kdci.source_arch' is empty: name the other "
            "pre-trained model's architecture (and its weights in kdci.source_checkpoint, or "
            "leave that empty for the embedded data to train and cache one)"
        )
    if cfg.kdci.backend == "cuml" and cfg.kdci.algorithm == "minibatch":
        raise ConfigError(
            "kdci.backend=cuml runs full k-means only; use kdci.algorithm=auto or full with "
            "cuml, or kdci.backend=sklearn for the mini-batch path"
        )


def _check_post_hoc(cfg: ExperimentConfig) -> None:
    """Post-hoc adjustments: ``log_prior`` may be either; ``teacher_ref`` must be post hoc and
    needs held-out substitution inputs (``Method.heldout_batch``)."""
    kc = cfg.kdci
    reference = kc.fusion in ("teacher_ref", "teacher_ref_scalar")
    if not kc.train_through and kc.fusion in ("softmax", "expectation", "scaled"):
        raise ConfigError(
            f"kdci.train_through=false (a post-hoc adjustment) needs a fixed fusion (log_prior, "
            f"teacher_ref, teacher_ref_scalar): the {kc.fusion} fusion's attention learns only "
            f"through the KD loss")
    if kc.enabled and reference and kc.train_through:
        raise ConfigError(f"kdci.fusion={kc.fusion} is fitted after training (post hoc): set "
                          f"kdci.train_through: false")
    if kc.enabled and reference and (cfg.shift.heldout < 1 or
                                     not _has_heldout(METHODS[cfg.method])):
        raise ConfigError(
            f"kdci.fusion={kc.fusion} fits on held-out substitution inputs: '{cfg.method}' "
            f"{'draws none' if cfg.shift.heldout >= 1 else 'gets none with shift.heldout: 0'}; "
            f"use dfnd or fast with shift.heldout > 0, or another fusion")
    selection = METHODS[cfg.method].open_world_selection(cfg.method_config)
    if kc.enabled and reference and selection and not 0 < selection[1] < cfg.pool.size:
        raise ConfigError(
            f"kdci.fusion={kc.fusion} fits on the pool images the selection leaves out, and "
            f"{cfg.method}.select_n={selection[1]} keeps all {cfg.pool.size}: lower the "
            f"selection size below pool.size")


def _has_heldout(method_cls: type[Method]) -> bool:
    return method_cls.heldout_batch is not Method.heldout_batch


def _check_shift(cfg: ExperimentConfig) -> None:
    r = cfg.shift.imbalance
    if not (r == 0 or 1 <= r < float("inf")):
        raise ConfigError(f"config key 'shift.imbalance' must be 0 (off) or a ratio >= 1, got {r}")
    if r and not (METHODS[cfg.method].needs_open_world or METHODS[cfg.method].conditional):
        raise ConfigError(
            f"shift.imbalance needs substitution data with classes to skew: '{cfg.method}' has "
            f"no conditional targets and no pool; use a sampling-based method (dfnd, mosaickd) "
            f"or one with targets (fast, cmi, deepinv), or set shift.imbalance: 0")
    if cfg.shift.heldout < 0:
        raise ConfigError(f"config key 'shift.heldout' must be >= 0 (0: no teacher_ref "
                          f"readings), got {cfg.shift.heldout}")
    if not (math.isfinite(cfg.shift.ridge) and cfg.shift.ridge > 0):
        raise ConfigError(f"config key 'shift.ridge' must be a finite number > 0 (the fitted "
                          f"biases need it: a class never predicted would get -inf), got "
                          f"{cfg.shift.ridge}")
    if cfg.pool.seed < -1:
        raise ConfigError(f"config key 'pool.seed' must be >= 0, or -1 for the trial's seed, got "
                          f"{cfg.pool.seed}")


def _check_archs(cfg: ExperimentConfig) -> None:
    """Every model name is a registered architecture (the closest one named)."""
    from kdci_ray.models import MODELS

    for key, name in (("teacher.arch", cfg.teacher.arch), ("student.arch", cfg.student.arch),
                      ("kdci.source_arch", cfg.kdci.source_arch)):
        if name and name not in MODELS:
            close = difflib.get_close_matches(str(name).lower(), list(MODELS), n=1, cutoff=0.4)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"config key '{key}': unknown model '{name}'{hint} "
                              f"(known: {', '.join(sorted(MODELS))})")


def _check_run(cfg: ExperimentConfig) -> None:
    """Resources per worker, the checkpoint interval and the failure budget."""
    run, train = cfg.run, cfg.train
    if run.cpus_per_worker < 0 or (run.cpus_per_worker == 0 and not run.use_gpu):
        raise ConfigError(
            f"config key 'run.cpus_per_worker' must be > 0 (>= 0 with run.use_gpu), "
            f"got {run.cpus_per_worker}"
        )
    if run.use_gpu and run.gpus_per_worker <= 0:
        raise ConfigError(
            f"config key 'run.gpus_per_worker' must be > 0 with run.use_gpu, "
            f"got {run.gpus_per_worker}"
        )
    if run.use_gpu and run.gpus_per_worker > 1 and run.gpus_per_worker != int(run.gpus_per_worker):
        raise ConfigError(
            f"config key 'run.gpus_per_worker' above 1 must be a whole number, "
            f"got {run.gpus_per_worker}"
        )
    if run.use_gpu and run.workers > 1 and run.gpus_per_worker < 1:
        raise ConfigError(
            f"config keys 'run.workers' ({run.workers}) and 'run.gpus_per_worker' "
            f"({run.gpus_per_worker}) would put several DDP ranks of one trial on one GPU, which "
            f"NCCL refuses: give each worker a whole GPU (run.gpus_per_worker: 1), or keep "
            f"run.workers: 1 and let fractional GPUs pack several trials onto a GPU"
        )
    if run.max_failures < -1:
        raise ConfigError(
            f"config key 'run.max_failures' must be >= 0, or -1 for no cap, got {run.max_failures}"
        )
    if run.start_timeout_s <= 0:
        raise ConfigError(
            f"config key 'run.start_timeout_s' must be > 0 (seconds a worker group may wait for "
            f"the cluster's nodes), got {run.start_timeout_s}"
        )
    parse_resources(run.worker_resources)  # raises a ConfigError naming the bad entry
    if run.trainer == "tune_trial" and run.workers != 1:
        raise ConfigError(
            f"config key 'run.trainer' tune_trial runs the loop in the Tune trial's own process, "
            f"one worker, but run.workers is {run.workers}: set run.workers: 1, or run.trainer: "
            f"ray_train (or auto) for a worker group"
        )
    every = run.checkpoint_every
    if every < 0 or (every and every % train.eval_every):
        raise ConfigError(
            f"config key 'run.checkpoint_every' ({every}) must be 0 (checkpoint at every "
            f"evaluation) or a multiple of train.eval_every ({train.eval_every}): a checkpoint is "
            f"taken with an evaluation report"
        )
    if run.inject_failure_round < 0 or run.inject_failure_round > train.rounds:
        raise ConfigError(
            f"config key 'run.inject_failure_round' must be between 0 (never) and train.rounds "
            f"({train.rounds}), got {run.inject_failure_round}"
        )


def clusters_with_cuml(cfg: ExperimentConfig) -> bool:
    """KDCI is on and its k-means runs on cuML (``kdci.backend: cuml``), which needs a GPU."""
    return cfg.kdci.enabled and cfg.kdci.backend == "cuml"


def resolved_k(cfg: ExperimentConfig) -> int:
    """``kdci.k`` with 0 decided: the method's default dictionary size
    (``substitution.default_clusters``: 8 for generators, 32 for model inversion, 128 for the
    sampling-based methods). Decided with KDCI off too, so that a grid's KDCI-off and KDCI-on
    points differ in ``kdci.enabled`` only, and a dictionary built ahead for either is the same."""
    return cfg.kdci.k or METHODS[cfg.method].substitution.default_clusters


def resolved_trainer(run) -> str:
    """``run.trainer`` with ``auto`` decided: ``tune_trial`` for one CPU worker that asks for no
    custom resources (a TorchTrainer adds only processes there), else ``ray_train``."""
    if run.trainer != "auto":
        return run.trainer
    plain = run.workers == 1 and not run.use_gpu and not run.worker_resources.strip()
    return "tune_trial" if plain else "ray_train"
