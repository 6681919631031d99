"""``kdci_ray.config.layers`` over a toy root dataclass: the resolution order every kind shares
(defaults < preset < file < sampled < command line < smoke), checks before and after smoke
mode, decisions after validation, the flat save; and ``check_choice``'s did-you-mean."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from kdci_ray.config.layers import capped, resolve_layers, save_flat
from kdci_ray.config.schema import Schema, check_choice
from kdci_ray.errors import ConfigError


@dataclass
class Train:
    steps: int = 100
    lr: float = 0.1
    mode: str = "auto"


@dataclass
class Root:
    flavour: str = "plain"
    seed: int = 0
    smoke: bool = False
    train: Train = field(default_factory=Train)


SCHEMA = Schema(Root, ("flavour", "seed", "smoke"), {"train": Train})
PRESETS = {"quick": {"train.steps": 10, "train.lr": 0.5}}


def _preset(cfg: Root) -> tuple[str, dict]:
    return f"preset {cfg.flavour!r}", PRESETS.get(cfg.flavour, {})


def _validate(cfg: Root) -> None:
    if cfg.train.steps < 1:
        raise ConfigError(f"config key 'train.steps' must be >= 1, got {cfg.train.steps}")
    check_choice("train.mode", cfg.train.mode, ("auto", "fast", "slow"))


def _decide(cfg: Root) -> None:
    if cfg.train.mode == "auto":
        cfg.train.mode = "fast" if cfg.train.steps < 50 else "slow"


def _resolve(*layers: dict, smoke: bool | None = None) -> Root:
    return resolve_layers(SCHEMA, layers, validate=_validate, preset=_preset,
                          choosing=("flavour", "smoke"), decide=_decide, smoke=smoke,
                          smoke_values=lambda cfg: {"seed": 7,
                                                    **capped(SCHEMA, cfg, {"train.steps": 3})})


def test_layers_resolve_in_order_later_winning() -> None:
    assert _resolve() == Root(train=Train(mode="slow"))
    # a preset chosen in a later layer still goes under every layer
    cfg = _resolve({"train.lr": 0.2}, {"flavour": "quick"})
    assert (cfg.train.steps, cfg.train.lr, cfg.train.mode) == (10, 0.2, "fast")
    cfg = _resolve({"train": {"steps": 60}}, {"train.steps": 70}, {"seed": "3"})
    assert (cfg.train.steps, cfg.seed) == (70, 3)  # nested or dotted, command-line strings typed


def test_smoke_checks_the_users_values_then_shrinks() -> None:
    cfg = _resolve({"train.steps": 40}, smoke=True)
    assert (cfg.train.steps, cfg.seed, cfg.smoke, cfg.train.mode) == (3, 7, True, "fast")
    assert _resolve({"smoke": True, "train.steps": 2}).train.steps == 2  # a cap only lowers
    with pytest.raises(ConfigError, match="'train.steps' must be >= 1, got 0"):
        _resolve({"train.steps": 0}, smoke=True)  # smoke mode hides no bad value


def test_unknown_keys_and_choices_name_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stpes' in the file; "
                                          r"did you mean 'train.steps'\?"):
        resolve_layers(SCHEMA, ({"train.stpes": 1},), where="the file")
    with pytest.raises(ConfigError, match=r"'train.mode' must be one of auto, fast, slow, got "
                                          r"'Fast'; did you mean 'fast'\?"):
        _resolve({"train.mode": "Fast"})


def test_save_writes_flat_yaml_that_resolves_to_itself(tmp_path) -> None:
    cfg = _resolve({"flavour": "quick", "seed": 2})
    path = save_flat(SCHEMA, cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load(path.read_text())
    assert saved == {"flavour": "quick", "seed": 2, "smoke": False, "train.steps": 10,
                     "train.lr": 0.5, "train.mode": "fast"}
    assert _resolve(saved) == cfg
