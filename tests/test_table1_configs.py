"""The KDCI Table 1 grids (tune_configs/cifar{10,100}_table1.yaml): grid, defaults, smoke."""

from __future__ import annotations

import collections
import dataclasses
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from kdci_ray.cli import main
from kdci_ray.engine import plan_sweep
from kdci_ray.engine.naming import trial_dirname
from kdci_ray.experiments.dfkd import SMOKE, resolve
from kdci_ray.methods import METHODS
from kdci_ray.methods.base import MethodContext
from kdci_ray.models import create_model
from kdci_ray.results.table import (
    rows_from_sweep,
    summarize,
    to_markdown,
)
from kdci_ray.search.space import build_param_space, count_trials

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"cifar10": ROOT / "tune_configs" / "cifar10_table1.yaml",
           "cifar100": ROOT / "tune_configs" / "cifar100_table1.yaml"}
PAIRS = {("resnet34", "resnet18"), ("vgg11_bn", "resnet18"), ("wrn_40_2", "wrn_16_1"),
         ("wrn_40_2", "wrn_40_1"), ("wrn_40_2", "wrn_16_2")}
SIX = {"dafl", "fast", "cmi", "deepinv", "mosaickd", "dfnd"}
TEACHER_ACC = {"cifar10": {"resnet34": 0.9570, "vgg11_bn": 0.9225, "wrn_40_2": 0.9487},
               "cifar100": {"resnet34": 0.7805, "vgg11_bn": 0.7132, "wrn_40_2": 0.7583}}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the Table 1 YAMLs


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def table1(request) -> tuple[str, object]:
    """(dataset, plan) of one Table 1 YAML, planned without any of its files on disk."""
    return request.param, plan_sweep(CONFIGS[request.param], launch_dir=Path("/tmp"))


def test_table1_expands_to_the_full_grid(table1) -> None:
    dataset, plan = table1
    cfgs = plan.configs
    assert len(cfgs) == 60 == count_trials(plan.search)
    cells = collections.Counter((c.teacher.arch, c.student.arch, c.method, c.kdci.enabled)
                                for c in cfgs)
    assert set(cells.values()) == {1}
    assert {(t, s) for t, s, _, _ in cells} == PAIRS
    assert {m for _, _, m, _ in cells} == SIX
    assert len(build_param_space(plan.search)) == 3  # cases.pair, cases.schedule, kdci.enabled
    for c in cfgs:
        assert c.data.name == dataset and c.run.use_gpu
        assert c.preset == ("cmi_harness" if c.method == "deepinv" else "paper")
        assert (c.pool.source, c.pool.size) == ("npz", 600_000)
        assert Path(c.teacher.checkpoint).name == f"{c.teacher.arch}.pth"
        assert f"/{dataset}/" in c.teacher.checkpoint
        assert c.methods["dfnd"].teacher_acc == TEACHER_ACC[dataset][c.teacher.arch]
        assert not Path(c.data.root).exists()  # planning reads no data, no checkpoint


def test_table1_uses_each_methods_paper_schedule(table1) -> None:
    dataset, plan = table1
    by_method = {c.method: c for c in plan.configs if c.teacher.arch == "resnet34"}
    rounds = {m: (c.train.rounds, c.train.kd_steps, c.train.batch_size, c.train.lr)
              for m, c in by_method.items()}
    assert rounds == {"dafl": (240_000, 1, 1024, 0.1), "deepinv": (200, 400, 256, 0.1),
                      "fast": (220, 400, 256, 0.2), "cmi": (200, 400, 256, 0.1),
                      "mosaickd": (39_200, 5, 512, 0.1), "dfnd": (200, 2344, 256, 0.1)}
    for method in ("cmi", "mosaickd", "fast", "dfnd", "dafl"):  # paper preset: Config defaults
        assert by_method[method].preset == "paper"
    for method in ("cmi", "mosaickd"):  # no per-case method keys either
        assert by_method[method].method_config == METHODS[method].Config()
    harness = resolve({"method": "deepinv", "preset": "cmi_harness"}).method_config
    assert by_method["deepinv"].preset == "cmi_harness"
    assert by_method["deepinv"].method_config == harness != METHODS["deepinv"].Config()
    assert by_method["dafl"].methods["dafl"].onehot_weight == \
        (0.5 if dataset == "cifar100" else 0.05)
    vgg_fast = next(c for c in plan.configs if c.method == "fast" and c.teacher.arch == "vgg11_bn")
    assert vgg_fast.methods["fast"].adversarial_weight == 1.0


def _by_method(plan, method: str) -> list:
    return [c for c in plan.configs if c.method == method]


def test_table1_dfnd_is_t4_without_class_weights(table1) -> None:
    """DFND at KD temperature 4 without class weights (the reference's current loss)."""
    _, plan = table1
    for c in _by_method(plan, "dfnd"):
        assert (c.method_config.kd_temperature, c.method_config.class_weights) == (4.0, False)


def test_table1_fast_is_fast10(table1) -> None:
    """Fast-10 of Fast-Datafree scripts/fast_cifar.sh (--g_steps 10 --lr_z 0.01 --lr_g 2e-3)
    with the script's shared settings and per-teacher adv / oh."""
    _, plan = table1
    adv_oh = {"resnet34": (1.33, 0.5), "vgg11_bn": (1.0, 0.5), "wrn_40_2": (1.1, 0.4)}
    for c in _by_method(plan, "fast"):
        f = c.method_config
        assert (f.g_steps, f.lr_g, f.lr_z) == (10, 2e-3, 0.01)
        assert (f.adversarial_weight, f.onehot_weight) == adv_oh[c.teacher.arch]
        assert (f.bn_weight, f.bn_mmt, f.warmup, f.reset_l0, f.meta) == \
            (10.0, 0.9, 20, True, "fomaml")
        assert (f.batch_size, f.kd_temperature) == (256, 20.0)
        assert (c.train.rounds, c.train.kd_steps, c.train.lr) == (220, 400, 0.2)


def test_table1_deepinv_runs_the_cmi_harness(table1) -> None:
    """zju-vipa/CMI scripts/deepinv_cifar10.sh: adv 1, BN 10, one-hot 1 (fixed), TV 1e-3 and
    l2 0 (datafree_kd.py), synthesis lr 0.1, 1000 iterations, batch 256, T 20."""
    _, plan = table1
    for c in _by_method(plan, "deepinv"):
        d = c.method_config
        assert c.preset == "cmi_harness"
        assert (d.competition_weight, d.bn_weight, d.tv_weight, d.l2_weight, d.lr) == \
            (1.0, 10.0, 1e-3, 0.0, 0.1)
        assert (d.iterations, d.batch_size, d.kd_temperature) == (1000, 256, 20.0)
        assert (d.comp_temperature, d.jitter, d.flip, d.clip) == (3.0, 4, True, True)
        assert (d.beta1, d.beta2, d.augment_pad) == (0.5, 0.99, 4)
        assert (c.train.rounds, c.train.kd_steps, c.train.lr) == (200, 400, 0.1)


def test_cmi_harness_clips_the_pixels(tiny_settings) -> None:
    """The harness clamps the optimised pixels to the valid image range after every step."""
    from kdci_ray.methods.deepinv import DeepInversion
    from kdci_ray.train.datasets import load_data
    from kdci_ray.train.teacher import load_teacher

    cfg = resolve(tiny_settings, {"method": "deepinv", "preset": "cmi_harness",
                                  "deepinv.iterations": 4})
    data = load_data(cfg)
    ctx = MethodContext(teacher=load_teacher(cfg, data, torch.device("cpu")),
                        student=create_model("tiny_cnn", 10, 1), num_classes=10, channels=1,
                        image_size=16, device=torch.device("cpu"), seed=0, rounds=1,
                        mean=data.mean, std=data.std)

    def batch(clip: bool) -> torch.Tensor:
        method = DeepInversion(dataclasses.replace(cfg.method_config, clip=clip), ctx)
        method.synthesize(0)
        return method.last_batch - method.lo, method.hi - method.last_batch

    below, above = batch(True)
    assert below.min() >= -1e-6 and above.min() >= -1e-6
    below, above = batch(False)
    assert min(below.min(), above.min()) < -0.1  # the same seed leaves the range unclipped


def test_table1_cmi_stage_features_and_k32(table1) -> None:
    _, plan = table1
    cmis = _by_method(plan, "cmi")
    assert {c.kdci.enabled for c in cmis} == {False, True}
    for c in cmis:
        assert c.method_config.features == "stages"
        # the K that KDCI builds with
        assert (c.kdci.k or METHODS[c.method].substitution.default_clusters) == 32
        assert c.method_config.batch_size >= 32  # K = 32 fits one round's batch


def test_table1_dafl_loss_weights(table1) -> None:
    """Information entropy 5 on CIFAR-10, activation 0.1 (and one-hot 0.5) on CIFAR-100."""
    dataset, plan = table1
    for c in _by_method(plan, "dafl"):
        d = c.method_config
        assert d.entropy_weight == 5.0
        assert (d.onehot_weight, d.activation_weight) == \
            ((0.5, 0.1) if dataset == "cifar100" else (0.05, 0.01))


def test_table1_smoke_resolves_tiny_schedules() -> None:
    plan = plan_sweep(CONFIGS["cifar10"], ["run.use_gpu=false"], smoke=True)
    assert len(plan.configs) == 60
    for c in plan.configs:
        assert c.smoke and not c.run.use_gpu
        assert (c.train.rounds, c.train.kd_steps, c.train.batch_size) == (
            SMOKE["train.rounds"], SMOKE["train.kd_steps"], SMOKE["train.batch_size"])
        assert c.pool.size == SMOKE["pool.size"]
        for key, value in METHODS[c.method].SMOKE.items():
            assert getattr(c.method_config, key) == value


def test_table1_trial_names_are_short() -> None:
    trial = SimpleNamespace(trial_id="a1b2_00007", evaluated_params={
        "cases.pair": "wrn_40_2-wrn_16_1", "cases.schedule": "dfnd", "kdci.enabled": True})
    assert trial_dirname(trial) == "wrn_40_2-wrn_16_1_dfnd_kdci_00007"


# ----------------------------------------------------------------------------- tables


def test_table_has_a_column_per_case_group(tmp_path: Path) -> None:
    search = {"cases": {"pair": [{"name": "p1", "student.arch": "resnet18"},
                                 {"name": "p2", "student.arch": "wrn_16_1"}],
                        "schedule": [{"name": "dafl", "method": "dafl"}]},
              "kdci.enabled": [False, True]}
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"name": "t", "search": search}))
    accs = {("p1", False): 0.5, ("p1", True): 0.6, ("p2", False): 0.7, ("p2", True): 0.65}
    for i, ((pair, kdci), acc) in enumerate(accs.items()):
        trial = sweep / f"{pair}_dafl_{i:05d}"
        trial.mkdir()
        params = {"cases.pair": pair, "cases.schedule": "dafl", "kdci.enabled": kdci}
        (trial / "params.json").write_text(json.dumps(params))  # no config.yaml: looked up
        report = {"round": 1, "eval/acc": acc, "eval/teacher_acc": 0.9, "finished": 1.0}
        (trial / "result.json").write_text(json.dumps(report) + "\n")
    rows = rows_from_sweep(sweep)
    assert list(rows.columns[:4]) == ["trial", "pair", "schedule", "method"]
    assert list(zip(rows["pair"], rows["kdci"], strict=True)) == list(accs)
    assert (rows["method"] == "dafl").all()
    summary = summarize(rows)
    assert list(summary["pair"]) == ["p1", "p1", "p2", "p2"]
    assert summary["delta_acc"].tolist() == pytest.approx([0.1, 0.1, -0.05, -0.05])
    lines = to_markdown(summary, "t").splitlines()
    assert "| pair | method | KDCI | n | acc (%) | acc_kdci (%) | teacher acc (%) |" in lines
    assert "| p2 | dafl | on | 1 | 65.00 ± 0.00 | – | 90.00 |" in lines
    assert "| p2 | dafl | -5.00 pp |" in lines  # schedule (= method) is not repeated


# ----------------------------------------------------------------------------- smoke run


def _fake_cifar10(root: Path, per_file: int = 20) -> Path:
    """The python-pickle layout of cifar-10-batches-py, ``per_file`` random images per file."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(),
                 b"labels": rng.integers(0, 10, per_file).tolist(),
                 b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_file)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


def _fake_imagenet32(root: Path, files: int = 2, per_file: int = 160) -> Path:
    """Downsampled-ImageNet npz batches (``data``: uint8 rows of 3*32*32, ``labels``)."""
    rng = np.random.default_rng(1)
    folder = root / "imagenet32"
    folder.mkdir(parents=True)
    for i in range(1, files + 1):
        np.savez(folder / f"train_data_batch_{i}.npz",
                 data=rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 labels=rng.integers(1, 1001, per_file))
    return folder


def test_table1_smoke_subset_through_the_cli(ray_session, tmp_path: Path, capsys) -> None:
    """One pair x {DAFL, DFND} x KDCI on: both method families, the npz pool and the KDCI
    plug-in through the real CLI and Ray, in one wave of two trials (KDCI off is the path of
    test_sweep_e2e)."""
    from kdci_ray.models import create_model, save_checkpoint

    data = _fake_cifar10(tmp_path / "data")
    pool = _fake_imagenet32(tmp_path / "data")
    ckpt = save_checkpoint(create_model("wrn_40_2", 10), tmp_path / "ckpt" / "wrn_40_2.pth",
                           arch="wrn_40_2")
    assert ckpt == tmp_path / "ckpt" / "wrn_40_2.pth"
    # the pairs set their checkpoints (an override of a key a case sets is refused): the pair's
    # path edited, as the file says, to one read beside the copy
    config = tmp_path / CONFIGS["cifar10"].name
    config.write_text(CONFIGS["cifar10"].read_text().replace("/ckpt/cifar10/wrn_40_2.pth",
                                                             "ckpt/wrn_40_2.pth"))
    out = tmp_path / "sweep"
    only = ["cases.pair=wrn_40_2-wrn_16_1", "method=dafl", "method=dfnd", "kdci.enabled=true"]
    code = main(["sweep", str(config), "--smoke",
                 *[arg for item in only for arg in ("--only", item)],
                 f"data.root={data}", f"pool.path={pool}", "run.use_gpu=false",
                 "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert "2 of 60 grid points" in printed

    rows = pd.read_csv(out / "summary.csv")
    assert list(rows.columns[:4]) == ["trial", "pair", "schedule", "method"]
    assert list(zip(rows["method"], rows["kdci"], strict=True)) == [("dafl", True),
                                                                    ("dfnd", True)]
    assert (rows["pair"] == "wrn_40_2-wrn_16_1").all() and rows["finished"].all()
    assert rows["acc"].between(0, 1).all() and rows["acc_kdci"].between(0, 1).all()
    assert rows["rounds_done"].eq(SMOKE["train.rounds"]).all()
    for _, row in rows.iterrows():
        trial = out / row["trial"]
        assert row["trial"].startswith(f"wrn_40_2-wrn_16_1_{row['method']}_kdci_")
        cfg = yaml.safe_load((trial / "config.yaml").read_text())
        assert (cfg["teacher.arch"], cfg["student.arch"], cfg["data.name"]) == (
            "wrn_40_2", "wrn_16_1", "cifar10")
        assert cfg["smoke"] and not cfg["run.use_gpu"] and cfg["pool.source"] == "npz"
        assert (trial / "student.pt").is_file()
    table = (out / "summary.md").read_text()
    for method in ("dafl", "dfnd"):
        assert f"| wrn_40_2-wrn_16_1 | {method} | on | 1 |" in table
    assert yaml.safe_load((out / "sweep.yaml").read_text())["only"] == only
