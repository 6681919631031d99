"""The SKDCGN controls (``kdci_ray.cgn.controls``) and the published-teacher pipeline with them.

The pipeline test reads the published double-coloured teacher from ``../shared/data/cgn_mnist``
beside the repository (tests only) and skips when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from kdci_ray.cgn import config as cgn_config
from kdci_ray.cgn.controls import (
    SWAP_CODES,
    composites,
    kernel_inception_distance,
    label_fidelity,
    mechanism_grids,
    swap_mechanism,
)
from kdci_ray.cgn.mechanisms import MECHANISMS
from kdci_ray.results.skdcgn import COLUMNS, EXTRA

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cgn_mnist"
needs_shared = pytest.mark.skipif(
    not (SHARED / "weights").is_dir(),
    reason=f"the published CGN-MNIST checkpoints are not at {SHARED} (read-only data beside the "
           f"repository); this test needs them")


def _bars(name: str, noise: torch.Tensor, labels: torch.Tensor, size: int = 8) -> torch.Tensor:
    """A toy mechanism: the mask is a vertical bar at column ``label``, the foreground bright
    (0.5 to 1 by label), the background dark (0 to 0.45 by label)."""
    n = len(labels)
    if name == "shape":
        out = torch.zeros(n, 1, size, size)
        out[torch.arange(n), 0, :, labels % size] = 1.0
        return out
    level = 0.5 + labels.float() / 20 if name == "foreground" else labels.float() / 20
    return level[:, None, None, None].expand(n, 3, size, size).clone()


def _blank(name: str, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(labels), 1 if name == "shape" else 3, 8, 8)


def test_swap_codes_route_each_mechanism_to_its_source() -> None:
    assert len(SWAP_CODES) == 8 and {"TTT", "SSS", "STT", "TTS"} <= set(SWAP_CODES)
    z, y = torch.zeros(4, 2), torch.arange(4)
    mixed = swap_mechanism(_bars, _blank, "STT")  # student shape, teacher textures
    assert float(mixed("shape", z, y).abs().sum()) == 0
    assert torch.equal(mixed("foreground", z, y), _bars("foreground", z, y))
    assert torch.equal(swap_mechanism(_bars, _blank, "TTT")("shape", z, y), _bars("shape", z, y))
    with pytest.raises(ValueError, match="3 letters S/T"):
        swap_mechanism(_bars, _blank, "STX")


def test_composites_share_their_draws_for_the_same_seed() -> None:
    a, ya = composites(_bars, 30, 2, 8, seed=3, batch_size=7)
    b, yb = composites(_bars, 30, 2, 8, seed=3, batch_size=7)
    c, _ = composites(_bars, 30, 2, 8, seed=4, batch_size=7)
    assert torch.equal(a, b) and torch.equal(ya, yb) and not torch.equal(a, c)
    assert a.shape == (30, 3, 8, 8)


class _ColumnReader(torch.nn.Module):
    """A 'classifier' reading the bar's column: right exactly when the mask is the teacher's."""

    def forward(self, x: torch.Tensor):
        from kdci_ray.models.outputs import Outputs

        column = (x.mean(dim=(1, 2)) == x.mean(dim=(1, 2)).max(dim=1, keepdim=True).values)
        logits = column.float() * 10
        return Outputs(logits, logits)


def test_label_fidelity_falls_with_the_student_mechanism_that_breaks_the_shape() -> None:
    def wrong_shape(name, noise, labels):  # the student draws every bar one column off
        return _bars(name, noise, (labels + 1) % 8) if name == "shape" else _bars(name, noise,
                                                                                  labels)

    scores = label_fidelity(_ColumnReader(), _bars, wrong_shape, 200, 2, 8, seed=0)
    assert scores["label_fidelity_teacher"] == 1.0
    assert scores["label_fidelity_foreground"] == scores["label_fidelity_background"] == 1.0
    assert scores["label_fidelity_shape"] == scores["label_fidelity"] == 0.0


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 16, generator=g), torch.randn(600, 16, generator=g)
    same, _ = kernel_inception_distance(x.double(), y.double(), subsets=5, subset_size=300)
    small, _ = kernel_inception_distance(x.double(), (y + 0.3).double(), subsets=5,
                                         subset_size=300)
    large, _ = kernel_inception_distance(x.double(), (y + 1.0).double(), subsets=5,
                                         subset_size=300)
    assert abs(same) < 0.02 < small < large
    # the unbiased estimate by hand on one subset of everything
    a, b = x[:50].double(), (y[:50] + 1).double()
    k = lambda p, q: (p @ q.T / 16 + 1) ** 3  # noqa: E731
    off = 50 * 49
    expected = ((k(a, a).sum() - k(a, a).diagonal().sum()) / off
                + (k(b, b).sum() - k(b, b).diagonal().sum()) / off - 2 * k(a, b).mean())
    got, std = kernel_inception_distance(a, b, subsets=3, subset_size=50)
    assert got == pytest.approx(float(expected)) and std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same D"):
        kernel_inception_distance(x, y[:, :3])


def test_mechanism_grids_put_teacher_and_student_side_by_side_on_the_same_noise() -> None:
    grids = mechanism_grids(_bars, _blank, 2, 8, per_class=1)
    assert list(grids) == [f"{m}: {who}" for m in MECHANISMS for who in ("teacher", "student")] \
        + ["composite: teacher", "composite: student"]
    assert all(g.shape == (8, 3, 8, 8) for g in grids.values())
    assert float(grids["shape: teacher"].sum()) > 0 and float(grids["shape: student"].sum()) == 0


@needs_shared
def test_published_teacher_pipeline_reports_every_control(tmp_path: Path, monkeypatch) -> None:
    from kdci_ray.cgn.pipeline import run

    monkeypatch.setenv("KDCI_RAY_CACHE", str(tmp_path / "cache"))
    cfg = cgn_config.resolve({
        "teacher.mode": "pretrained", "data.published": True, "smoke": True,
        "teacher.checkpoint": str(SHARED / "weights" / "cgn_double_colored_MNIST.pth"),
        "classifier.arch": "tiny_cnn", "controls.swaps": True, "controls.untrained": True,
        "controls.shape_gap": True, "classifier.counterfactuals": 64, "controls.samples": 60})
    metrics = run(cfg, tmp_path / "trial", log=lambda _: None)
    for key in [c for c in COLUMNS if c not in ("trial", "variant", "seed")] + EXTRA:
        assert key in metrics, key
    for key in ("acc_student_cf", "label_fidelity", "label_fidelity_shape", "acc_cf_STT",
                "acc_untrained_cf", "shape_acc_teacher_to_digits"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["kid"] > metrics["kid_floor"]  # 20-step students are far from the teacher
    assert metrics["teacher_params"] == 660_192 and 0 < metrics["param_ratio"] < 0.5
    assert (tmp_path / "trial" / "mechanisms.png").is_file()
    assert (tmp_path / "trial" / "samples.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "trial"))
    events.Reload()
    assert {"mechanisms/shape_teacher", "mechanisms/shape_student",
            "mechanisms/composite_student", "samples/teacher_counterfactuals"} \
        <= set(events.Tags()["images"])
    # the shape gap was cached with the teacher's key (a second trial of this teacher reads it)
    assert len(list((tmp_path / "cache" / "cgn").glob("shape-gap-*.pt"))) == 1
    assert yaml.safe_load(yaml.safe_dump(cgn_config.to_flat(cfg)))["data.published"] is True


@needs_shared
def test_a_retrained_teacher_is_fine_tuned_once_and_cached(tmp_path: Path, monkeypatch) -> None:
    from kdci_ray.cgn.cache import cached_teacher_cgn, teacher_key
    from kdci_ray.cgn.cgn_mnist import published_teacher
    from kdci_ray.cgn.pipeline import load_split

    monkeypatch.setenv("KDCI_RAY_CACHE", str(tmp_path / "cache"))
    path = SHARED / "weights" / "cgn_double_colored_MNIST.pth"
    base = {"teacher.mode": "pretrained", "data.published": True, "teacher.checkpoint": str(path),
            "data.copies": 1, "retrain.steps": 2, "retrain.d_warmup": 1}
    cfg = cgn_config.resolve(base)
    train = load_split(cfg, "train")
    first, cached = cached_teacher_cgn(cfg, train, log=lambda _: None)
    again, cached_again = cached_teacher_cgn(cfg, train, log=lambda _: None)
    assert (cached, cached_again) == (False, True)
    z, y = torch.randn(4, 32), torch.arange(4)
    with torch.no_grad():
        assert torch.equal(first.mechanism("shape", z, y), again.mechanism("shape", z, y))
        published = published_teacher(path).mechanism("shape", z, y)
        assert not torch.equal(first.mechanism("shape", z, y), published)  # fine-tuned
    # each perturbation is its own teacher; steps 0 is the published one, never cached
    rotated = cgn_config.resolve({**base, "retrain.rotation": 180.0})
    assert teacher_key(rotated) != teacher_key(cfg)
    plain = cgn_config.resolve({**base, "retrain.steps": 0})
    assert cached_teacher_cgn(plain, train, log=lambda _: None)[1] is False
