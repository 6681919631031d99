"""Renamed config keys (``kdci_ray/config/renamed.py``): an old key is one clear error naming the
new key, wherever it is given (dict layers, command line, YAML settings, nested YAML, search)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kdci_ray.engine.files import load_experiment
from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import parse_overrides, resolve, valid_keys
from kdci_ray.experiments.dfkd.renamed import RENAMED
from kdci_ray.methods import METHODS


def test_rename_table_maps_dead_keys_to_live_keys_of_the_same_method() -> None:
    keys = set(valid_keys())
    for old, new in RENAMED.items():
        assert old not in keys, f"{old} is still a config key"
        assert new in keys, f"{new} is not a config key"
        assert old.partition(".")[0] == new.partition(".")[0]
        method = METHODS[new.partition(".")[0]]
        field = {f.name: f for f in dataclasses.fields(method.Config)}[new.partition(".")[2]]
        assert field.type in (float, "float"), f"{new} is not a loss weight"
    assert len(set(RENAMED.values())) == len(RENAMED)  # no two old keys share a new one


@pytest.mark.parametrize("old,new", sorted(RENAMED.items()))
def test_old_key_names_the_new_one(old: str, new: str) -> None:
    method = old.partition(".")[0]
    with pytest.raises(ConfigError) as err:
        resolve({"method": method, old: 1.0})
    assert str(err.value) == f"config key '{old}' was renamed to '{new}'"


def test_dafl_ie_message() -> None:
    with pytest.raises(ConfigError, match=r"^config key 'dafl\.ie' was renamed to "
                                          r"'dafl\.entropy_weight'$"):
        resolve({"method": "dafl", "dafl.ie": 5})


def test_old_key_on_the_command_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_overrides(["dafl.ie=5"])
    assert "config key 'dafl.ie' was renamed to 'dafl.entropy_weight'" in str(err.value)
    assert "command-line overrides" in str(err.value)


@pytest.mark.parametrize("text", [
    "method: dafl\ndafl.ie: 5\n",
    "method: dafl\ndafl:\n  ie: 5\n",
    "method: dafl\nsearch:\n  dafl.ie: [1, 5]\n",
])
def test_old_key_in_a_yaml_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert "config key 'dafl.ie' was renamed to 'dafl.entropy_weight'" in str(err.value)
    assert str(path) in str(err.value)


def test_new_key_sets_the_same_field() -> None:
    cfg = resolve({"method": "dafl", "dafl.entropy_weight": 7, "dafl.onehot_weight": 0.5})
    assert (cfg.method_config.entropy_weight, cfg.method_config.onehot_weight) == (7.0, 0.5)


def test_other_unknown_keys_keep_the_did_you_mean_hint() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'dafl\.entropy_wieght'.*"
                                          r"did you mean 'dafl\.entropy_weight'"):
        resolve({"method": "dafl", "dafl.entropy_wieght": 5})
