"""The distillation experiment's config: one dataclass per section, defaults in code.

Each method's own section (its paper defaults) is the ``Config`` dataclass in its method file;
``ExperimentConfig.methods`` holds one of each. ``CHOICES`` lists the keys whose value must be
one of a few names (``validate`` checks them); ``SMOKE`` is smoke mode's schedule. The keys are
``keys.DFKD_SCHEMA`` (the generic ``kdci_ray.config.schema`` over this root), resolved by
``resolve.resolve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdci_ray.kdci.settings import KDCIConfig
from kdci_ray.methods import METHODS


@dataclass
class DataConfig:
    """Which labelled data the teacher was trained on and the students are scored on."""

    name: str = "digits"  # digits (embedded) | cifar10 | cifar100
    root: str = ""  # directory of the CIFAR python pickles; unused for digits
    image_size: int = 16  # digits only: the 8x8 originals are upsampled to this size
    test_fraction: float = 0.3  # digits only: held-out share (fixed, seeded, stratified)
    split_seed: int = 0


@dataclass
class TeacherConfig:
    """The trained teacher; ``checkpoint`` empty means the cached embedded teacher."""

    arch: str = "digits_cnn"
    checkpoint: str = ""
    epochs: int = 30  # used only when `kdci-ray teacher` trains one
    lr: float = 0.05
    batch_size: int = 64
    min_acc: float = 0.97  # training fails loudly below this test accuracy
    seed: int = 0


@dataclass
class StudentConfig:
    arch: str = "digits_cnn_small"


@dataclass
class TrainConfig:
    """The one distillation loop: ``rounds`` x (synthesize, ``kd_steps`` student steps)."""

    rounds: int = 200
    kd_steps: int = 50
    batch_size: int = 256  # per worker
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"  # cosine | constant
    eval_every: int = 10  # rounds between evaluations on the test split
    eval_batch_size: int = 512
    # class-balanced KD (importance weighting for label shift); 0 = off, plain KD. With beta > 0
    # each KD sample x is weighted by (sum_y p_T(y|x) / pi(y))^beta, normalised to mean 1 over the
    # batch, where pi is the teacher's arg-max histogram over every KD batch so far (this one
    # included; the loop's class counts, half-count smoothed): up-weights what the substitution
    # data lacks. 0.5 or 1 typically; at most 4
    balance_beta: float = 0.0


@dataclass
class ShiftConfig:
    """A controlled distribution shift of the substitution data (the kdci_shift benchmark)."""

    # class imbalance ratio r of the substitution data; 0 = off (the method's own data). With
    # r >= 1 the i-th most common class has share proportional to r^(-i/(C-1)) (the rarest is r
    # times rarer than the most common): generation-based methods draw their conditional targets
    # so (class 0 most common); sampling-based methods select per-class quotas of the pool by the
    # teacher's arg-max (classes ranked by how many pool images the teacher gives them)
    imbalance: float = 0.0
    # post-hoc label-shift readings of the student at the final evaluation (kdci_ray/train/
    # readings.py): the control (s - log pi, pi the teacher's arg-max histogram over every KD
    # batch), em (the EM prior of Saerens et al. 2002 on the last KD batches' teacher posteriors),
    # teacher_ref / teacher_ref_scalar (a class bias, or a scale along log pi, fitted label-free
    # so the student matches the teacher on held-out substitution inputs) and the oracle (a bias
    # fitted on the test labels: a ceiling, reported only); the student trains exactly as without
    # them
    readings: bool = False
    heldout: int = 1024  # held-out substitution inputs for teacher_ref (never used for KD)
    ridge: float = 1e-3  # ridge on the fitted class bias (teacher_ref and the oracle)


@dataclass
class PoolConfig:
    """Unlabeled open-world images for the sampling-based methods (MosaicKD, DFND)."""

    source: str = "embedded"  # embedded (crops of packaged photos) | folder | npz
    path: str = ""  # folder / npz directory for the real sources
    size: int = 600_000  # images in the pool (embedded: crops generated; others: at most this)
    seed: int = 0  # the pool's draw (and a build-once dictionary's clustering seed); -1 = the
    #   trial's seed, so every seed of a sweep draws its own pool, selection and dictionary
    min_scale: float = 0.1  # embedded crops: smallest crop side as a share of the photo's side
    transform: str = "none"  # none | edges (Sobel edge maps: strokes on black, see data/edges.py)


@dataclass
class RunConfig:
    """How a run is executed: Ray Train workers and where results go."""

    workers: int = 1  # Ray Train workers (DDP ranks) per trial
    trainer: str = "auto"  # what runs a trial's loop: ray_train (a TorchTrainer worker group) |
    #   tune_trial (the Tune trial's own process: one worker, no extra processes) | auto (resolved:
    #   tune_trial for one CPU worker without worker_resources, else ray_train)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # with use_gpu; a fraction packs several workers on one GPU
    max_concurrent_trials: int = 0  # 0 = as many as the cluster's CPUs (and GPUs) allow
    output: str = ""  # sweep directory; empty = results/<config stem>/ under the launch directory
    checkpoint_every: int = 0  # rounds between resumable checkpoints; 0 = at every evaluation
    max_failures: int = 3  # worker-group restarts per trial (from its last checkpoint); -1 = no cap
    inject_failure_round: int = 0  # testing: fail once after this round's checkpoint; 0 = never
    worker_resources: str = ""  # extra custom resources per worker, "name=amount,..." (e.g. a
    #   node type's own resource, to pin workers to it); asked for by Train workers and scorers
    start_timeout_s: float = 1800.0  # how long a worker group (or the pool scorers) may wait for
    #   the cluster to place it, e.g. while the autoscaler boots GPU nodes; then the trial fails
    # GPU speed and exactness, opt-in (see kdci_ray.train.numerics): bf16 autocast of the KD
    # step's forwards (amp: none | bf16), TF32 matmuls and convolutions, NHWC memory format;
    # deterministic: deterministic algorithms and cuDNN settings (bit-for-bit on a GPU too)
    amp: str = "none"
    tf32: bool = False
    channels_last: bool = False
    deterministic: bool = False


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "train": TrainConfig,
    "kdci": KDCIConfig,
    "pool": PoolConfig,
    "shift": ShiftConfig,
    "run": RunConfig,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "train.lr_schedule": ("cosine", "constant"),
    "kdci.backend": ("sklearn", "cuml", "auto"),
    "kdci.algorithm": ("auto", "full", "minibatch"),
    "kdci.source": ("teacher", "model", "random"),
    "kdci.features": ("observed", "source"),
    "kdci.fusion": ("softmax", "expectation", "scaled", "log_prior", "teacher_ref",
                    "teacher_ref_scalar"),
    "kdci.space": ("logits", "log_probs"),
    "pool.source": ("embedded", "folder", "npz"),
    "pool.transform": ("none", "edges"),
    "run.trainer": ("auto", "ray_train", "tune_trial"),
    "run.amp": ("none", "bf16"),
}

SMOKE: dict[str, Any] = {
    "train.rounds": 2,
    "train.kd_steps": 2,
    "train.batch_size": 16,
    "train.eval_every": 1,
    "teacher.epochs": 1,
    "teacher.min_acc": 0.0,
    "kdci.k": 4,
    "pool.size": 256,
}


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    method: str = "dafl"
    preset: str = "paper"  # paper | embedded (method-specific schedule for the embedded data) |
    #   a method's own (deepinv: cmi_harness, the CMI harness's settings for Table 1)
    seed: int = 0
    smoke: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kdci: KDCIConfig = field(default_factory=KDCIConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    run: RunConfig = field(default_factory=RunConfig)
    methods: dict[str, Any] = field(
        default_factory=lambda: {name: cls.Config() for name, cls in METHODS.items()}
    )

    @property
    def method_config(self) -> Any:
        return self.methods[self.method]

    def to_flat(self) -> dict[str, Any]:
        """This config as dotted keys, its method's section only: what a trial's
        ``config.yaml`` holds (``DFKD_SCHEMA.to_flat``). The loop's layers call it on the config
        they are given, without importing this experiment kind."""
        from kdci_ray.experiments.dfkd.keys import DFKD_SCHEMA

        return DFKD_SCHEMA.to_flat(self)


TOP_LEVEL = ("name", "method", "preset", "seed", "smoke")
