"""Experiment configuration: dataclasses with defaults in code, flat YAML, dotted overrides.

Resolution order for one run (later wins):
1. dataclass defaults (each method's paper defaults live in its own ``Config`` dataclass),
2. the chosen method's preset (``preset: embedded``), a dict of dotted keys in the method file,
3. the experiment YAML (flat ``section.key: value`` lines; one level of nesting is also accepted),
4. values a sweep's ``search`` section sampled for this trial,
5. ``key=value`` overrides from the command line,
6. smoke mode (``smoke: true`` / ``--smoke``): tiny schedules that exercise every code path.

YAML is parsed with ``yaml.safe_load`` only; it never runs code. Unknown keys are an error that
names the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdci_ray.methods import METHODS


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message says what and how."""


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


@dataclass
class KDCIConfig:
    """KDCI (Wang et al., CVPR 2024): confounder dictionary + backdoor-adjusted student logits."""

    enabled: bool = False
    k: int = 0  # dictionary size; 0 = the method's default (DAFL 8, DeepInversion 32)
    pca_dim: int = 0  # PCA components used for clustering; 0 = keep min(C, 64)
    hidden: int = 256  # additive attention width
    backend: str = "sklearn"  # k-means backend: sklearn | auto
    n_init: int = 1  # k-means++ restarts per refresh
    lr_scale: float = 1.0  # attention learning rate = lr_scale * train.lr


@dataclass
class PoolConfig:
    """Unlabeled open-world images for the sampling-based methods (MosaicKD, DFND)."""

    source: str = "embedded"  # embedded (crops of packaged photos) | folder | npz
    path: str = ""  # folder / npz directory for the real sources
    size: int = 600_000  # images in the pool (embedded: crops generated; others: at most this)
    seed: int = 0
    min_scale: float = 0.1  # embedded crops: smallest crop side as a share of the photo's side


@dataclass
class RunConfig:
    """How a run is executed: Ray Train workers and where results go."""

    workers: int = 1  # Ray Train workers (DDP ranks) per trial
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_concurrent_trials: int = 0  # 0 = as many as the cluster's CPUs allow
    output: str = ""  # sweep directory; empty = results/<config stem>/ under the launch directory


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "train": TrainConfig,
    "kdci": KDCIConfig,
    "pool": PoolConfig,
    "run": RunConfig,
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
    preset: str = "paper"  # paper | embedded (method-specific schedule for the embedded data)
    seed: int = 0
    smoke: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kdci: KDCIConfig = field(default_factory=KDCIConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    run: RunConfig = field(default_factory=RunConfig)
    methods: dict[str, Any] = field(
        default_factory=lambda: {name: cls.Config() for name, cls in METHODS.items()}
    )

    @property
    def method_config(self) -> Any:
        return self.methods[self.method]


TOP_LEVEL = ("name", "method", "preset", "seed", "smoke")


# ----------------------------------------------------------------------------- key handling


def valid_keys() -> list[str]:
    """Every dotted key a YAML file or override may set (besides ``search``)."""
    keys = list(TOP_LEVEL)
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    for name, method in METHODS.items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(method.Config)]
    return keys


def unknown_key_error(key: str, where: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; run `kdci-ray keys` to list them"
    src = f" in {where}" if where else ""
    return ConfigError(f"unknown config key '{key}'{src}{hint}")


def flatten(mapping: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Accept ``a.b: v`` and one level of nesting ``a: {b: v}``; return dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            src = f" in {where}" if where else ""
            raise ConfigError(f"config keys must be strings, got {key!r}{src}")
        nested = key in SECTIONS or key in METHODS
        if nested and isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the dataclass field type; CLI strings are parsed as YAML scalars."""
    if isinstance(value, str) and typ is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config key '{key}': cannot parse {value!r}: {exc}") from None
        if isinstance(value, str) and typ in (int, float):
            try:  # YAML 1.1 reads "5e-4" (no dot) as a string
                value = float(value)
            except ValueError:
                pass
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(typ, types.UnionType) or typing.get_origin(typ) is not None:
        return value
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(
        f"config key '{key}' expects {name}, got {value!r} ({type(value).__name__})"
    )


def _target(cfg: ExperimentConfig, key: str) -> tuple[Any, str]:
    if key in TOP_LEVEL:
        return cfg, key
    head, _, tail = key.partition(".")
    if head in SECTIONS and tail in {f.name for f in dataclasses.fields(SECTIONS[head])}:
        return getattr(cfg, head), tail
    if head in METHODS and tail in {f.name for f in dataclasses.fields(METHODS[head].Config)}:
        return cfg.methods[head], tail
    raise unknown_key_error(key)


def check_keys(flat: dict[str, Any], where: str = "") -> None:
    probe = ExperimentConfig()
    for key in flat:
        try:
            _target(probe, key)
        except ConfigError:
            raise unknown_key_error(key, where) from None


def apply(cfg: ExperimentConfig, flat: dict[str, Any], where: str = "") -> ExperimentConfig:
    """Set dotted keys on ``cfg`` in place (type-checked) and return it."""
    for key, value in flat.items():
        try:
            obj, attr = _target(cfg, key)
        except ConfigError:
            raise unknown_key_error(key, where) from None
        setattr(obj, attr, _coerce(key, value, _field_type(type(obj), attr)))
    return cfg


def to_flat(cfg: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as dotted keys (only the chosen method's section)."""
    flat: dict[str, Any] = {k: getattr(cfg, k) for k in TOP_LEVEL}
    for section in SECTIONS:
        for k, v in dataclasses.asdict(getattr(cfg, section)).items():
            flat[f"{section}.{k}"] = v
    for k, v in dataclasses.asdict(cfg.method_config).items():
        flat[f"{cfg.method}.{k}"] = v
    return flat


# ----------------------------------------------------------------------------- files


@dataclass
class Experiment:
    """A parsed YAML file: fixed settings plus an optional search space (see tune/space.py)."""

    path: Path | None
    settings: dict[str, Any]
    search: dict[str, Any]

    @property
    def stem(self) -> str:
        return self.path.stem if self.path else str(self.settings.get("name", "experiment"))


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (expected a flat YAML experiment file)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(raw).__name__}")
    search = raw.pop("search", None) or {}
    if not isinstance(search, dict):
        raise ConfigError(f"{path}: 'search' must be a mapping of key: {{grid: [...]}}")
    settings = flatten(raw, str(path))
    settings.setdefault("name", path.stem)
    check_keys(settings, str(path))
    check_keys(search, f"{path} (search section)")
    return Experiment(path, settings, dict(search))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=0.1", "kdci.enabled=true"]`` -> dotted dict (values parsed later, per type)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        out[key.strip()] = value.strip()
    check_keys(out, "command-line overrides")
    return out


def resolve(*layers: dict[str, Any], smoke: bool | None = None) -> ExperimentConfig:
    """Build the config of one run from dotted-key layers (YAML, sampled values, overrides).

    ``method``, ``preset`` and ``smoke`` are read from the layers first because they choose
    which preset and smoke overrides apply.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    if smoke is not None:
        merged["smoke"] = smoke
    cfg = ExperimentConfig()
    apply(cfg, {k: merged[k] for k in ("method", "preset", "smoke") if k in merged})
    if cfg.method not in METHODS:
        close = difflib.get_close_matches(cfg.method, list(METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{cfg.method}' (known: {', '.join(METHODS)}){hint}")
    method = METHODS[cfg.method]
    if cfg.preset != "paper":
        if cfg.preset not in method.PRESETS:
            raise ConfigError(
                f"method '{cfg.method}' has no preset '{cfg.preset}' "
                f"(known: paper, {', '.join(method.PRESETS)})"
            )
        apply(cfg, method.PRESETS[cfg.preset], f"{cfg.method} preset '{cfg.preset}'")
    apply(cfg, merged)
    if cfg.smoke:
        apply(cfg, SMOKE, "smoke mode")
        apply(cfg, {f"{cfg.method}.{k}": v for k, v in method.SMOKE.items()}, "smoke mode")
    validate(cfg)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """Value checks that need more than a type."""
    positive = {
        "train.rounds": cfg.train.rounds,
        "train.kd_steps": cfg.train.kd_steps,
        "train.batch_size": cfg.train.batch_size,
        "train.eval_every": cfg.train.eval_every,
        "run.workers": cfg.run.workers,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
    if cfg.kdci.k < 0:
        raise ConfigError(
            f"config key 'kdci.k' must be >= 0 (0 = method default), got {cfg.kdci.k}"
        )
    if cfg.kdci.enabled:
        method = METHODS[cfg.method]
        k = cfg.kdci.k or method.kdci_k
        n = method.kdci_source_size(cfg.method_config, cfg.run.workers)
        if k > n:
            raise ConfigError(
                f"KDCI dictionary size K={k} is larger than the {n} substitution images each "
                f"refresh of '{cfg.method}' clusters; lower kdci.k or raise "
                f"{cfg.method}.batch_size"
            )
    if cfg.train.lr_schedule not in ("cosine", "constant"):
        raise ConfigError(
            "config key 'train.lr_schedule' must be cosine or constant, "
            f"got {cfg.train.lr_schedule!r}"
        )
    if cfg.kdci.backend not in ("sklearn", "cuml", "auto"):
        raise ConfigError(
            f"config key 'kdci.backend' must be sklearn, cuml or auto, got {cfg.kdci.backend!r}"
        )


def save_resolved(cfg: ExperimentConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_flat(cfg), sort_keys=False))
    return path
