"""Tests for kdci_ray.models: registry, shapes, reference key names, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from kdci_ray.models import (
    MODELS,
    CheckpointMismatchError,
    Outputs,
    create_model,
    load_checkpoint,
)
from kdci_ray.models.checkpoint import save_checkpoint

DIGITS = ["tiny_cnn", "digits_cnn_small", "digits_cnn"]
CIFAR = ["resnet18", "resnet34", "vgg11_bn", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]

# Key names taken from the zju-vipa `datafree` zoo (datafree/models/classifiers/resnet.py,
# wresnet.py, vgg.py as used by CMI / Fast-Datafree / MosaicKD): present / absent keys.
REFERENCE_KEYS: dict[str, tuple[list[str], list[str]]] = {
    "resnet18": (
        [
            "conv1.weight",
            "bn1.running_mean",
            "layer1.0.conv1.weight",
            "layer1.0.bn1.num_batches_tracked",
            "layer1.1.conv2.weight",
            "layer2.0.shortcut.0.weight",
            "layer2.0.shortcut.1.running_var",
            "layer4.1.bn2.bias",
            "linear.weight",
            "linear.bias",
        ],
        ["layer1.0.shortcut.0.weight", "layer2.2.conv1.weight", "fc.weight"],
    ),
    "resnet34": (
        ["layer3.5.conv2.weight", "layer4.2.bn2.bias", "layer4.0.shortcut.0.weight"],
        ["layer3.6.conv1.weight", "layer4.1.shortcut.0.weight"],
    ),
    "wrn_16_1": (
        [
            "conv1.weight",
            "block1.layer.0.bn1.weight",
            "block1.layer.0.conv1.weight",
            "block1.layer.0.bn2.running_mean",
            "block1.layer.1.conv2.weight",
            "block2.layer.0.convShortcut.weight",
            "block3.layer.0.convShortcut.weight",
            "bn1.running_var",
            "fc.weight",
            "fc.bias",
        ],
        ["block1.layer.0.convShortcut.weight", "block1.layer.2.conv1.weight", "linear.weight"],
    ),
    "wrn_16_2": (["block1.layer.0.convShortcut.weight", "block3.layer.1.conv2.weight"], []),
    "wrn_40_1": (["block2.layer.5.bn2.weight"], ["block2.layer.6.bn2.weight"]),
    "wrn_40_2": (["block1.layer.0.convShortcut.weight", "block3.layer.5.conv2.weight"], []),
    "vgg11_bn": (
        [
            "block0.0.weight",
            "block0.0.bias",
            "block0.1.running_mean",
            "block1.0.weight",
            "block2.3.weight",
            "block2.4.running_var",
            "block3.4.weight",
            "block4.3.bias",
            "block4.4.num_batches_tracked",
            "classifier.weight",
            "classifier.bias",
        ],
        ["block0.2.weight", "block0.3.weight", "features.0.weight", "classifier.0.weight"],
    ),
}

# len(state_dict()) derived by hand from the reference definitions: conv = 1 key, BN = 5,
# linear = 2. resnet18: 6 + 8 blocks * 12 + 3 shortcuts * 6 + 2; wrn_16_k: 1 + 6 * 12
# + shortcuts (2 for k=1, 3 for k=2) + 5 + 2; vgg11_bn: 8 * (2 + 5) + 2.
REFERENCE_KEY_COUNTS = {
    "resnet18": 122,
    "resnet34": 218,
    "vgg11_bn": 58,
    "wrn_16_1": 82,
    "wrn_16_2": 83,
    "wrn_40_1": 226,
    "wrn_40_2": 227,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def input_side(name: str) -> int:
    return 16 if name in DIGITS else 32


def test_registry_holds_all_models() -> None:
    assert set(MODELS) == set(DIGITS) | set(CIFAR)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", DIGITS + CIFAR)
def test_forward_returns_outputs(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes).eval()
    side = input_side(name)
    with torch.no_grad():
        out = model(torch.randn(2, 3, side, side))
    assert isinstance(out, Outputs)
    fc = last_linear(model)
    assert fc.out_features == num_classes
    assert out.logits.shape == (2, num_classes)
    assert out.features.shape == (2, fc.in_features)
    # features really are what feeds the final linear layer
    torch.testing.assert_close(fc(out.features), out.logits)
    assert torch.isfinite(out.logits).all()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", DIGITS)
@pytest.mark.parametrize("side", [8, 16, 28, 32])
def test_digits_models_any_size_and_channels(name: str, side: int) -> None:
    model = create_model(name, 10, in_channels=1).train()
    out = model(torch.randn(3, 1, side, side))
    assert out.logits.shape == (3, 10)
    out.logits.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters())


def test_in_channels_only_changes_first_conv() -> None:
    gray = create_model("wrn_16_1", 10, in_channels=1)
    rgb = create_model("wrn_16_1", 10)
    assert gray.conv1.weight.shape == (16, 1, 3, 3)
    assert gray.state_dict().keys() == rgb.state_dict().keys()
    assert n_params(rgb) - n_params(gray) == 2 * 16 * 9
    assert create_model("vgg11_bn", 10, in_channels=1).block0[0].weight.shape[1] == 1
    gray_resnet = create_model("resnet18", 10, in_channels=1).eval()
    assert gray_resnet(torch.randn(1, 1, 32, 32)).logits.shape == (1, 10)


def test_param_counts_are_ordered() -> None:
    p = {name: n_params(create_model(name, 10)) for name in MODELS}
    assert p["tiny_cnn"] < 10_000
    assert 100_000 <= p["digits_cnn"] <= 300_000
    assert p["tiny_cnn"] < p["digits_cnn_small"] < p["digits_cnn"]
    assert 4 * p["digits_cnn_small"] <= p["digits_cnn"]
    assert p["resnet18"] < p["resnet34"]
    assert p["wrn_16_1"] < p["wrn_16_2"] < p["wrn_40_2"]
    assert p["wrn_16_1"] < p["wrn_40_1"] < p["wrn_40_2"]
    # Well-known sizes of the CIFAR-10 ResNets of this zoo (kuangliu / DAFL / CMI).
    assert p["resnet18"] == 11_173_962
    assert p["resnet34"] == 21_282_122


@pytest.mark.parametrize("name", CIFAR)
def test_state_dict_keys_follow_reference(name: str) -> None:
    sd = create_model(name, 100).state_dict()
    present, absent = REFERENCE_KEYS[name]
    assert [k for k in present if k not in sd] == []
    assert [k for k in absent if k in sd] == []
    assert len(sd) == REFERENCE_KEY_COUNTS[name]


def test_reference_shapes() -> None:
    sd = create_model("wrn_40_2", 100).state_dict()
    assert sd["fc.weight"].shape == (100, 128)
    assert sd["block2.layer.0.convShortcut.weight"].shape == (64, 32, 1, 1)
    sd = create_model("vgg11_bn", 10).state_dict()
    assert sd["classifier.weight"].shape == (10, 512)
    assert sd["block2.3.weight"].shape == (256, 256, 3, 3)
    sd = create_model("resnet18", 10).state_dict()
    assert sd["layer3.0.shortcut.0.weight"].shape == (256, 128, 1, 1)


def test_unknown_model_suggests_closest() -> None:
    with pytest.raises(ValueError, match="resnet19") as err:
        create_model("resnet19", 10)
    msg = str(err.value)
    assert "Did you mean 'resnet18'" in msg
    assert all(name in msg for name in MODELS)
    with pytest.raises(ValueError, match="Did you mean 'wrn_40_2'"):
        create_model("wrn40_2", 10)


def test_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("tiny_cnn", 0)


# ---------------------------------------------------------------- checkpoints


def _trained_model(name: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A model whose BN running stats differ from the defaults."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes).train()
    with torch.no_grad():
        model(torch.randn(4, 3, input_side(name), input_side(name)) * 2 + 1)
    return model.eval()


def _assert_same_outputs(a: nn.Module, b: nn.Module, side: int) -> None:
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        oa, ob = a.eval()(x), b.eval()(x)
    torch.testing.assert_close(oa.logits, ob.logits, rtol=0, atol=0)
    torch.testing.assert_close(oa.features, ob.features, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["tiny_cnn", "wrn_16_1"])
def test_checkpoint_round_trip(tmp_path: Path, name: str) -> None:
    src = _trained_model(name)
    path = save_checkpoint(src, tmp_path / "sub" / "ckpt.pt", epoch=3, best_acc1=0.5)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temp files left
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "epoch", "best_acc1"}
    dst = _trained_model(name, seed=1)
    with pytest.raises(AssertionError):
        _assert_same_outputs(src, dst, input_side(name))
    meta = load_checkpoint(dst, path)
    assert meta == {"epoch": 3, "best_acc1": 0.5}
    _assert_same_outputs(src, dst, input_side(name))


def test_checkpoint_layouts_and_module_prefix(tmp_path: Path) -> None:
    src = _trained_model("tiny_cnn")
    sd = src.state_dict()
    ddp = {f"module.{k}": v for k, v in sd.items()}
    layouts = {
        "wrapped.pt": {"state_dict": sd, "arch": "tiny_cnn"},
        "wrapped_ddp.pt": {"state_dict": ddp, "arch": "tiny_cnn"},
        "model.pt": {"model": ddp, "arch": "tiny_cnn"},
        "raw.pt": sd,
        "raw_ddp.pt": ddp,
    }
    for fname, obj in layouts.items():
        torch.save(obj, tmp_path / fname)
        dst = _trained_model("tiny_cnn", seed=1)
        meta = load_checkpoint(dst, str(tmp_path / fname))
        assert meta == ({} if fname.startswith("raw") else {"arch": "tiny_cnn"}), fname
        _assert_same_outputs(src, dst, 16)


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path) -> None:
    src = _trained_model("tiny_cnn")
    old = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": old}, tmp_path / "old.pt")
    dst = _trained_model("tiny_cnn", seed=1)
    load_checkpoint(dst, tmp_path / "old.pt")
    _assert_same_outputs(src, dst, 16)


def test_architecture_mismatch_lists_keys(tmp_path: Path) -> None:
    path = save_checkpoint(create_model("wrn_16_1", 10), tmp_path / "wrn_16_1.pt")
    target = create_model("wrn_16_2", 10)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(target, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "wrn_16_2" in msg and "WideResNet" in msg
    assert "block1.layer.0.convShortcut.weight" in msg  # missing key
    assert "block1.layer.0.conv1.weight: checkpoint (16, 16, 3, 3) vs model (32, 16, 3, 3)" in msg
    assert "... and" in msg  # long lists are truncated
    assert msg.count("\n    ") <= 3 * 10 + 3
    assert err.value.missing == ["block1.layer.0.convShortcut.weight"]
    assert err.value.unexpected == []
    assert len(err.value.shape_mismatches) > 10
    assert isinstance(err.value, ValueError)
    # the model is left untouched
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_num_classes_mismatch_lists_keys(tmp_path: Path) -> None:
    path = save_checkpoint(create_model("wrn_16_1", 10), tmp_path / "c10.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(create_model("wrn_16_1", 100), path)
    msg = str(err.value)
    assert "fc.weight: checkpoint (10, 64) vs model (100, 64)" in msg
    assert "fc.bias: checkpoint (10,) vs model (100,)" in msg
    assert err.value.missing == [] and err.value.unexpected == []
    assert len(err.value.shape_mismatches) == 2


def test_unexpected_and_missing_keys(tmp_path: Path) -> None:
    sd = create_model("tiny_cnn", 10).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["fc.bias"]
    torch.save({"state_dict": sd}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(create_model("tiny_cnn", 10), tmp_path / "odd.pt")
    assert err.value.unexpected == ["extra.weight"]
    assert err.value.missing == ["fc.bias"]
    assert "extra.weight" in str(err.value) and "fc.bias" in str(err.value)


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "teacher.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_checkpoint(create_model("tiny_cnn", 10), path)
    assert str(path) in str(err.value)
    assert "state_dict" in str(err.value)


def test_unrecognised_layout(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="unrecognised layout"):
        load_checkpoint(create_model("tiny_cnn", 10), tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_checkpoint(create_model("tiny_cnn", 10), tmp_path / "junk.pt")


def test_save_checkpoint_rejects_reserved_key(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_checkpoint(create_model("tiny_cnn", 10), tmp_path / "x.pt", state_dict={})
    assert list(tmp_path.iterdir()) == []
