"""The YAML ``search`` section -> Ray Tune param_space mapping and its errors."""

from __future__ import annotations

import pytest
from ray.tune.search import sample

from kdci_ray.errors import ConfigError
from kdci_ray.search.space import build_param_space, count_trials, grid_points


def test_each_spec_kind_maps_to_its_tune_domain() -> None:
    space = build_param_space(
        {
            "method": {"grid": ["dafl", "deepinversion"]},
            "seed": [0, 1, 2],
            "student.arch": {"choice": ["a", "b"]},
            "kdci.lr_scale": {"uniform": [0.5, 2.0]},
            "train.lr": {"loguniform": [0.01, 0.3]},
            "kdci.k": {"randint": [4, 33]},
        }
    )
    assert list(space) == ["method", "seed", "student.arch", "kdci.lr_scale", "train.lr", "kdci.k"]
    assert space["method"] == {"grid_search": ["dafl", "deepinversion"]}
    assert space["seed"] == {"grid_search": [0, 1, 2]}

    choice = space["student.arch"]
    assert isinstance(choice, sample.Categorical) and choice.categories == ["a", "b"]

    uniform = space["kdci.lr_scale"]
    assert isinstance(uniform, sample.Float) and (uniform.lower, uniform.upper) == (0.5, 2.0)
    assert isinstance(uniform.get_sampler(), sample.Float._Uniform)

    log = space["train.lr"]
    assert isinstance(log, sample.Float) and (log.lower, log.upper) == (0.01, 0.3)
    assert isinstance(log.get_sampler(), sample.Float._LogUniform)

    randint = space["kdci.k"]
    assert isinstance(randint, sample.Integer) and (randint.lower, randint.upper) == (4, 33)


def test_count_trials_and_grid_points() -> None:
    search = {
        "method": {"grid": ["dafl", "deepinversion"]},
        "kdci.enabled": [False, True],
        "seed": {"grid": [0, 1]},
        "train.lr": {"uniform": [0.01, 0.1]},  # sampled: does not multiply
    }
    assert count_trials(search) == 8
    assert count_trials(search, num_samples=3) == 24
    points = grid_points(search)
    assert len(points) == 8
    assert points[0] == {"method": "dafl", "kdci.enabled": False, "seed": 0}
    assert points[1] == {"method": "dafl", "kdci.enabled": False, "seed": 1}
    assert points[-1] == {"method": "deepinversion", "kdci.enabled": True, "seed": 1}
    assert len({tuple(p.values()) for p in points}) == 8


def test_no_grid_is_one_point() -> None:
    assert grid_points({}) == [{}]
    assert count_trials({"train.lr": {"choice": [0.1, 0.2]}}, num_samples=5) == 5


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"grd": [1, 2]}, "did you mean 'grid'"),
        ({"unifrom": [0.1, 1.0]}, "did you mean 'uniform'"),
        ({"uniform": [0.1]}, "exactly 2 numbers"),
        ({"uniform": [0.1, 0.2, 0.3]}, "exactly 2 numbers"),
        ({"uniform": ["a", 1.0]}, "exactly 2 numbers"),
        ({"uniform": [1.0, 0.1]}, "lo < hi"),
        ({"loguniform": [0.0, 1.0]}, "0 < lo < hi"),
        ({"loguniform": [-1.0, 1.0]}, "0 < lo < hi"),
        ({"randint": [0.5, 3]}, "integers"),
        ({"grid": []}, "zero trials"),
        ({"choice": []}, "zero trials"),
        ([], "zero trials"),
        ({"grid": 3}, "needs a list"),
        ({"grid": [1], "choice": [2]}, "exactly one kind"),
        (0.1, "expected a spec mapping or a list"),
        ("dafl", "expected a spec mapping or a list"),
    ],
)
def test_bad_specs_raise_config_error_naming_the_key(spec: object, fragment: str) -> None:
    search = {"seed": [0, 1], "train.lr": spec}
    for func in (build_param_space, count_trials, grid_points):
        with pytest.raises(ConfigError) as info:
            func(search)
        assert "'train.lr'" in str(info.value)
        assert fragment in str(info.value)


def test_search_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        build_param_space([{"grid": [1]}])  # type: ignore[arg-type]


def test_num_samples_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="num_samples"):
        count_trials({"seed": [0]}, num_samples=0)
