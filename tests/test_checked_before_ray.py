"""Inputs that used to be refused only after Ray started (on a cluster: after GPU nodes booted),
or never: every one is refused now by the plan or the input check, through the real command
line, with one message, exit code 2 and no output directory."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from refusal import assert_refused


def _yaml(tmp: Path, body: dict) -> Path:
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _cifar_with_label(tmp: Path, label: int) -> dict:
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [0, 1, 2, label if name == "data_batch_3" else 3]
        batch = {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch))
    return {"data.name": "cifar10", "data.root": str(tmp / "cifar"),
            "teacher.checkpoint": str(tmp / "never-read.pt")}


def _folder_pool_with_a_corrupt_image(tmp: Path) -> dict:
    folder = tmp / "pool"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    (folder / "img17.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return {"method": "dfnd", "kdci.enabled": False, "pool.source": "folder",
            "pool.path": str(folder), "pool.size": 40, "dfnd.select_n": 16}


# name: (settings builder, extra argv, what the message must say)
CASES: dict[str, tuple[Callable[[Path], dict], list[str], list[str]]] = {
    "student architecture typo": (lambda t: {"student.arch": "tiny_cn"}, [],
                                  ["'student.arch': unknown model 'tiny_cn'",
                                   "did you mean 'tiny_cnn'"]),
    "negative learning rate": (lambda t: {"train.lr": -0.1}, [],
                               ["'train.lr' must be a learning rate > 0", "-0.1"]),
    "teacher batch size 0": (lambda t: {"teacher.batch_size": 0}, [],
                             ["'teacher.batch_size' must be >= 1", "got 0"]),
    "sampled method typo": (lambda t: {"search": {"method": {"choice": ["dafl", "dafll"]}}}, [],
                            ["search key 'method' can draw 'dafll'", "did you mean 'dafl'"]),
    "uniform on an integer key": (lambda t: {"search": {"train.rounds": {"uniform": [2, 6]}}},
                                  [], ["search key 'train.rounds' can draw 3.48",
                                       "'train.rounds' expects int"]),
    "randint reaching a bad value": (lambda t: {"search": {"kdci.k": {"randint": [-2, 5]}}}, [],
                                     ["search key 'kdci.k' can draw -2", "must be >= 0"]),
    "uniform momentum reaching 1": (
        lambda t: {"search": {"train.momentum": {"uniform": [0.5, 1.5]}}}, [],
        ["search key 'train.momentum' can draw", "'train.momentum' must be in [0, 1)"]),
    "smoke mode hiding a bad value": (lambda t: {"kdci.k": -3}, ["--smoke"],
                                      ["'kdci.k' must be >= 0", "got -3"]),
    "CIFAR labels out of range": (lambda t: _cifar_with_label(t, 10), [],
                                  ["train labels", "must be 0..9", "e.g. 10"]),
    "a corrupt image in a vanilla DFND pool": (_folder_pool_with_a_corrupt_image, [],
                                               ["cannot read image file", "img17.png"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_ray_with_one_message(tiny_settings, tmp_path, capsys, case) -> None:
    build, argv, expected = CASES[case]
    out = tmp_path / "out"
    config = _yaml(tmp_path, {**tiny_settings, **build(tmp_path)})
    assert_refused(capsys, ["sweep", str(config), "--output", str(out), *argv], expected, out)


def test_a_cache_path_that_is_a_file_is_refused_first(tiny_settings, tmp_path, capsys,
                                                      monkeypatch) -> None:
    cache = tmp_path / "cache-file"
    cache.write_text("not a directory")
    monkeypatch.setenv("KDCI_RAY_CACHE", str(cache))
    out = tmp_path / "out"
    assert_refused(capsys, ["sweep", str(_yaml(tmp_path, tiny_settings)), "--output", str(out)],
                   [f"the cache directory {cache} is not a directory", "KDCI_RAY_CACHE"], out)


def test_only_filters_match_the_values_as_configured_not_smoke_ones(tiny_settings,
                                                                    tmp_path) -> None:
    from kdci_ray.engine import plan_sweep

    config = _yaml(tmp_path, {**tiny_settings, "method": "dfnd", "kdci.enabled": True,
                              "search": {"kdci.k": [8, 16]}})
    plan = plan_sweep(config, smoke=True, only=["kdci.k=8"])
    assert len(plan.configs) == 1 and plan.grid_size == 2
    assert plan.configs[0].smoke  # the kept trial still runs in smoke mode


def test_a_vanilla_sampling_trial_finds_its_selection_made_before_ray(tiny_settings,
                                                                      tmp_path) -> None:
    from kdci_ray.cache import cache_dir
    from kdci_ray.engine import check_inputs, plan_sweep

    config = _yaml(tmp_path, {**tiny_settings, "method": "dfnd", "kdci.enabled": False,
                              "pool.seed": 9091})  # a pool no other test selects from
    before = set((cache_dir() / "selections").glob("*"))
    lines: list[str] = []
    check_inputs(plan_sweep(config, output=str(tmp_path / "out")), lines.append)
    made = set((cache_dir() / "selections").glob("*")) - before
    assert made, "the vanilla DFND selection was not made before the trials"
    assert any("selecting 64 of 512 pool images by confidence" in line for line in lines)
