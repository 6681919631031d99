"""Tests for kdci_ray.config: defaults, layer order, key checking, typing, smoke, round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from kdci_ray.engine.files import load_experiment
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import (
    CHOICES,
    SECTIONS,
    SMOKE,
    DataConfig,
    ExperimentConfig,
    KDCIConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    flatten,
    parse_overrides,
    resolve,
    save_resolved,
    to_flat,
)
from kdci_ray.methods import METHODS
from kdci_ray.methods.dafl import DAFL, DAFLConfig
from kdci_ray.methods.deepinv import DeepInversion, DeepInversionConfig


def write_yaml(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- defaults


def test_defaults_come_from_dataclasses() -> None:
    cfg = resolve()
    assert cfg.data == DataConfig()
    assert cfg.teacher == TeacherConfig()
    assert cfg.student == StudentConfig()
    assert cfg.train == TrainConfig()
    assert cfg.kdci == KDCIConfig(k=8)  # 0, resolved: the method's (dafl's) default K
    assert cfg.run == RunConfig(trainer="tune_trial")  # auto, resolved: one CPU worker
    assert cfg.methods["dafl"] == DAFLConfig()
    assert cfg.methods["deepinv"] == DeepInversionConfig()
    default = ExperimentConfig()
    assert (cfg.name, cfg.method, cfg.preset, cfg.seed, cfg.smoke) == (
        default.name, default.method, default.preset, default.seed, default.smoke)


def test_to_flat_lists_every_section_field_and_only_the_chosen_method() -> None:
    flat = to_flat(resolve({"method": "deepinv"}))
    expected = {"name", "method", "preset", "seed", "smoke"}
    for section, cls in SECTIONS.items():
        expected |= {f"{section}.{f.name}" for f in dataclasses.fields(cls)}
    expected |= {f"deepinv.{f.name}" for f in dataclasses.fields(DeepInversionConfig)}
    assert set(flat) == expected
    assert flat["train.rounds"] == TrainConfig().rounds
    assert flat["deepinv.iterations"] == DeepInversionConfig().iterations


# ----------------------------------------------------------------------------- layer order


def test_later_layers_win() -> None:
    yaml_layer = {"train.lr": 0.1, "train.kd_steps": 7, "seed": 1}
    sampled = {"train.lr": 0.2, "seed": 2}
    overrides = {"train.lr": 0.3}
    assert resolve(yaml_layer).train.lr == 0.1
    assert resolve(yaml_layer, sampled).train.lr == 0.2
    cfg = resolve(yaml_layer, sampled, overrides)
    assert cfg.train.lr == 0.3
    assert cfg.seed == 2  # sampled beats YAML when the overrides do not set it
    assert cfg.train.kd_steps == 7  # YAML-only keys survive


def test_preset_applies_before_yaml() -> None:
    preset = DAFL.PRESETS["embedded"]
    assert preset["train.rounds"] != TrainConfig().rounds  # otherwise the test proves nothing
    cfg = resolve({"method": "dafl", "preset": "embedded"})
    assert cfg.train.rounds == preset["train.rounds"]
    for key, value in preset.items():
        section, attr = key.split(".")
        obj = cfg.methods["dafl"] if section == "dafl" else getattr(cfg, section)
        assert getattr(obj, attr) == pytest.approx(value), key
    cfg = resolve({"method": "dafl", "preset": "embedded", "train.rounds": 7})
    assert cfg.train.rounds == 7
    assert cfg.train.kd_steps == preset["train.kd_steps"]  # the rest of the preset still holds


def test_preset_chosen_in_a_later_layer_still_applies_under_earlier_layers() -> None:
    preset = DeepInversion.PRESETS["embedded"]
    cfg = resolve({"method": "deepinv", "train.kd_steps": 3}, {}, {"preset": "embedded"})
    assert cfg.train.rounds == preset["train.rounds"]
    assert cfg.train.kd_steps == 3
    assert cfg.methods["deepinv"].iterations == preset["deepinv.iterations"]


def test_paper_preset_keeps_dataclass_defaults() -> None:
    assert resolve({"method": "dafl", "preset": "paper"}).train == TrainConfig()


def test_unknown_preset_names_method_and_preset() -> None:
    with pytest.raises(ConfigError, match="no preset 'tiny'") as info:
        resolve({"method": "dafl", "preset": "tiny"})
    assert "dafl" in str(info.value) and "embedded" in str(info.value)


# ----------------------------------------------------------------------------- YAML files


def test_nested_sections_flatten_to_dotted_keys(tmp_path: Path) -> None:
    nested = write_yaml(tmp_path, "train:\n  rounds: 5\n  lr: 0.2\ndafl:\n  onehot_weight: 0.5\n",
                        "a.yaml")
    dotted = write_yaml(tmp_path, "train.rounds: 5\ntrain.lr: 0.2\ndafl.onehot_weight: 0.5\n",
                        "b.yaml")
    a, b = load_experiment(nested), load_experiment(dotted)
    assert {k: v for k, v in a.settings.items() if k != "name"} == {
        "train.rounds": 5, "train.lr": 0.2, "dafl.onehot_weight": 0.5}
    assert a.settings["name"] == "a" and b.settings["name"] == "b"  # default name = file stem
    same_name = {"name": "x"}
    assert to_flat(resolve(a.settings, same_name)) == to_flat(resolve(b.settings, same_name))
    assert flatten({"kdci": {"enabled": True}, "seed": 3}) == {"kdci.enabled": True, "seed": 3}


def test_yaml_search_section_is_kept_apart(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "train.rounds: 5\nsearch:\n  train.lr: [0.1, 0.2]\n")
    exp = load_experiment(path)
    assert exp.search == {"train.lr": [0.1, 0.2]}
    assert "search" not in exp.settings and exp.settings["train.rounds"] == 5


@pytest.mark.parametrize(
    "text",
    ["train.kd_step: 3\n", "train:\n  kd_step: 3\n"],
    ids=["dotted", "nested"],
)
def test_unknown_key_in_yaml_names_key_and_suggestion(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    msg = str(info.value)
    assert "'train.kd_step'" in msg
    assert "'train.kd_steps'" in msg
    assert str(path.resolve()) in msg


def test_unknown_key_in_overrides_names_key_and_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides(["train.lr=0.1", "train.kd_step=3"])
    msg = str(info.value)
    assert "'train.kd_step'" in msg and "'train.kd_steps'" in msg
    assert "command-line" in msg


def test_unknown_key_in_search_section(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "search:\n  train.kd_step: {grid: [1, 2]}\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    msg = str(info.value)
    assert "'train.kd_step'" in msg and "'train.kd_steps'" in msg
    assert "search" in msg


def test_unknown_key_passed_straight_to_resolve() -> None:
    with pytest.raises(ConfigError, match=r"'kdci\.enable'.*'kdci\.enabled'"):
        resolve({"kdci.enable": True})


@pytest.mark.parametrize(("typo", "suggestion"), [("dafll", "dafl"), ("deep_inv", "deepinv")])
def test_unknown_method_suggests_closest(typo: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({"method": typo})
    msg = str(info.value)
    assert f"'{typo}'" in msg and f"did you mean '{suggestion}'" in msg


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "exp.yaml"
    with pytest.raises(ConfigError) as info:
        load_experiment(missing)
    assert str(missing.resolve()) in str(info.value)


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_experiment(write_yaml(tmp_path, "- train.rounds\n- 3\n"))


def test_malformed_override_item() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["train.rounds"])


# ----------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("item", "key", "typename"),
    [
        ("train.rounds=abc", "train.rounds", "int"),
        ("kdci.enabled=maybe", "kdci.enabled", "bool"),
        ("train.lr=fast", "train.lr", "float"),
        ("train.rounds=2.5", "train.rounds", "int"),
        ("train.rounds=true", "train.rounds", "int"),  # bool is not an int here
        ("kdci.enabled=1", "kdci.enabled", "bool"),
    ],
)
def test_wrong_value_type_names_key_and_type(item: str, key: str, typename: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(parse_overrides([item]))
    msg = str(info.value)
    assert f"'{key}'" in msg and f"expects {typename}" in msg


def test_wrong_type_in_yaml_file(tmp_path: Path) -> None:
    exp = load_experiment(write_yaml(tmp_path, "train:\n  rounds: [1, 2]\n"))
    with pytest.raises(ConfigError, match=r"'train\.rounds' expects int"):
        resolve(exp.settings)


def test_cli_strings_are_parsed_per_field_type() -> None:
    over = parse_overrides(
        ["kdci.lr_scale=0.5", "kdci.enabled=true", "train.rounds=3", "train.lr=1",
         "run.use_gpu=false", "name=123", "dafl.latent_dim = 12"]
    )
    cfg = resolve(over)
    assert cfg.kdci.lr_scale == 0.5 and type(cfg.kdci.lr_scale) is float
    assert cfg.kdci.enabled is True
    assert cfg.run.use_gpu is False
    assert cfg.train.rounds == 3 and type(cfg.train.rounds) is int
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float  # int accepted for float
    assert cfg.name == "123" and type(cfg.name) is str  # str fields are taken verbatim
    assert cfg.methods["dafl"].latent_dim == 12  # whitespace around '=' is stripped


def test_native_values_are_coerced() -> None:
    cfg = resolve({"train.lr": 1, "train.rounds": 4.0, "kdci.k": 16})
    assert type(cfg.train.lr) is float and cfg.train.lr == 1.0
    assert type(cfg.train.rounds) is int and cfg.train.rounds == 4


def test_exponent_notation_is_a_float() -> None:
    cfg = resolve(parse_overrides(["train.weight_decay=5e-4"]), {"train.lr": "1e-3"})
    assert cfg.train.weight_decay == 5e-4
    assert cfg.train.lr == 1e-3


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("train.rounds=0", "train.rounds"),
        ("train.kd_steps=-1", "train.kd_steps"),
        ("run.workers=0", "run.workers"),
        ("kdci.k=-1", "kdci.k"),
        ("kdci.backend=gpu", "kdci.backend"),
        ("train.lr_schedule=step", "train.lr_schedule"),
        ("pool.source=imagenet", "pool.source"),
        ("pool.transform=sobel", "pool.transform"),
    ],
)
def test_invalid_values_raise(item: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(parse_overrides([item]))
    assert f"'{key}'" in str(info.value)
    if key in CHOICES:  # the message lists what is allowed
        assert ", ".join(CHOICES[key]) in str(info.value)


@pytest.mark.parametrize("backend", ["sklearn", "cuml", "auto"])
def test_valid_backends_accepted(backend: str) -> None:
    assert resolve({"kdci.backend": backend}).kdci.backend == backend


# ----------------------------------------------------------------------------- smoke


@pytest.mark.parametrize("method", sorted(METHODS))
def test_smoke_shrinks_schedule_and_method_values(method: str) -> None:
    full = resolve({"method": method})
    cfg = resolve({"method": method, "smoke": True, "train.rounds": 100})
    for key, value in SMOKE.items():
        section, attr = key.split(".")
        assert getattr(getattr(cfg, section), attr) == value, key
    smoke = METHODS[method].SMOKE
    assert smoke, f"{method} has no SMOKE values"
    for attr, value in smoke.items():
        assert getattr(cfg.method_config, attr) == value, attr
        assert getattr(full.method_config, attr) != value, attr  # smoke really changed it
    assert cfg.train.rounds < full.train.rounds


def test_smoke_only_touches_the_chosen_method() -> None:
    cfg = resolve({"method": "deepinv", "smoke": True})
    assert cfg.methods["dafl"] == DAFLConfig()


def test_smoke_keyword_and_override_layer() -> None:
    assert resolve({}, smoke=True).train.rounds == SMOKE["train.rounds"]
    assert resolve({"train.rounds": 9}, {}, {"smoke": "true"}).train.rounds == SMOKE[
        "train.rounds"]
    assert resolve({"train.rounds": 9}).train.rounds == 9


def test_smoke_beats_preset() -> None:
    cfg = resolve({"method": "dafl", "preset": "embedded", "smoke": True})
    assert cfg.train.rounds == SMOKE["train.rounds"]
    assert cfg.methods["dafl"].latent_dim == DAFL.SMOKE["latent_dim"]
    assert cfg.methods["dafl"].lr_g == DAFL.PRESETS["embedded"]["dafl.lr_g"]


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    "layer",
    [
        {"method": "deepinv", "preset": "embedded", "train.lr": 0.02, "kdci.enabled": True,
         "seed": 3, "data.root": "/some/where"},
        {"method": "dafl", "smoke": True, "kdci.k": 4, "name": "smoky"},
        {},
    ],
    ids=["deepinv-embedded", "dafl-smoke", "defaults"],
)
def test_save_resolved_round_trips(tmp_path: Path, layer: dict) -> None:
    cfg = resolve(layer)
    path = save_resolved(cfg, tmp_path / "deep" / "dir" / "resolved.yaml")
    assert path.is_file()
    raw = yaml.safe_load(path.read_text())
    assert raw == to_flat(cfg)
    again = resolve(load_experiment(path).settings)
    assert to_flat(again) == to_flat(cfg)
    assert again.method_config == cfg.method_config
