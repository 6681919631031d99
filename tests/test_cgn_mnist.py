"""The published CGN-MNIST teachers loaded unchanged (``kdci_ray.cgn.cgn_mnist``), the corrected
texture shuffler, and ``teacher.mode: pretrained`` served through the SKDCGN black box.

The checkpoints are read from ``../shared/data/cgn_mnist`` beside the repository (tests only; the
package takes the path from its caller); the tests that need them skip when it is absent."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kdci_ray.cgn import config as cgn_config
from kdci_ray.cgn.blackbox import BlackBoxCGN, collect_queries
from kdci_ray.cgn.cache import cached_teacher_cgn, pretrained_teacher
from kdci_ray.cgn.cgn_mnist import (
    MASK_MAX,
    MASK_MIN,
    PUBLISHED_SHA256,
    CGNMnist,
    load_cgn_mnist,
    published_teacher,
    sha256_of,
    verify_sha256,
)
from kdci_ray.cgn.composition import shuffle_texture
from kdci_ray.cgn.data_published import MEASURED_COLORED_DIGIT
from kdci_ray.cgn.mechanisms import MECHANISMS, parameter_count
from kdci_ray.errors import ConfigError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cgn_mnist"
FILES = {"colored": "cgn_colored_MNIST.pth", "double_colored": "cgn_double_colored_MNIST.pth",
         "wildlife": "cgn_wildlife_MNIST.pth"}
needs_shared = pytest.mark.skipif(
    not (SHARED / "weights").is_dir(),
    reason=f"the published CGN-MNIST checkpoints are not at {SHARED} (read-only data beside the "
           f"repository, ../shared/data/cgn_mnist); these tests need them")

# The double-coloured MNIST palette of the source's data loader (README of the shared data):
# background of class i = entry i, digit of class i = entry (i - 6) mod 10.
DOUBLE_PALETTE = torch.tensor([
    (0, 100, 0), (0, 0, 139), (176, 48, 96), (255, 69, 0), (255, 255, 0),  # darkgreen, darkblue,
    (222, 184, 135), (0, 255, 0), (0, 255, 255), (255, 0, 255), (100, 149, 237),  # ..., #6495ed
], dtype=torch.float32) / 255
# Coloured MNIST: the source's palette is not published; the 32x32 data use the digit colours
# the published teacher generates (mean over the mask > 0.9 region, 100 samples per class, seed
# 0), one constant checked here against the teacher's samples.


def _path(variant: str) -> Path:
    return SHARED / "weights" / FILES[variant]


_MODELS: dict[str, CGNMnist] = {}


def _model(variant: str) -> CGNMnist:
    if variant not in _MODELS:
        _MODELS[variant] = load_cgn_mnist(_path(variant))
    return _MODELS[variant]


# ----------------------------------------------------------------------------- architecture


def test_architecture_has_the_published_tensor_count() -> None:
    state = CGNMnist().state_dict()
    assert len(state) == 57
    assert sum(v.numel() for v in state.values()) == 660_462  # parameters and BN buffers
    assert {k.split(".")[0] for k in state} == {"label_emb", "f_shape", "f_text1", "f_text2"}
    assert not any("running" in k for k in state if k.startswith("f_shape.2."))  # IN: no keys


@needs_shared
def test_keys_and_shapes_are_the_published_listing() -> None:
    listing = json.loads((SHARED / "state_dict_shapes.json").read_text())
    ours = {k: list(v.shape) for k, v in CGNMnist().state_dict().items()}
    assert ours == listing


# ----------------------------------------------------------------------------- loading


@needs_shared
@pytest.mark.parametrize("variant", list(FILES))
def test_published_checkpoints_load_strictly_and_unchanged(variant: str) -> None:
    path = _path(variant)
    sums = dict(reversed(line.split()) for line in (SHARED / "SHA256SUMS").read_text()
                .splitlines() if line.strip())
    assert sums[f"weights/{FILES[variant]}"] == PUBLISHED_SHA256[FILES[variant]]
    verify_sha256(path, PUBLISHED_SHA256[FILES[variant]])
    model = load_cgn_mnist(path, sha256=PUBLISHED_SHA256[FILES[variant]])
    assert not model.training
    raw = torch.load(path, map_location="cpu", weights_only=True)
    loaded = model.state_dict()
    assert set(raw) == set(loaded)
    assert all(torch.equal(raw[k], loaded[k]) for k in raw)


@pytest.fixture
def good_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return CGNMnist().state_dict()


def test_a_file_with_other_keys_is_one_error_naming_file_keys_and_fix(tmp_path: Path,
                                                                      good_state) -> None:
    state = dict(good_state)
    del state["f_text1.10.bias"]
    state["f_text3.0.weight"] = torch.zeros(3)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_cgn_mnist(path)
    msg = str(err.value)
    for part in (str(path), "missing keys (1): f_text1.10.bias",
                 "unexpected keys (1): f_text3.0.weight", "Fix:", "weights_only=True",
                 "cgn_double_colored_MNIST.pth"):
        assert part in msg, part


def test_a_mis_shaped_tensor_is_named_with_both_shapes(tmp_path: Path, good_state) -> None:
    state = dict(good_state)
    state["f_shape.0.weight"] = torch.zeros(4096, 40)  # a 30-d noise, say
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"mis-shaped keys \(1\): f_shape.0.weight: file "
                                         r"\(4096, 40\) vs model \(4096, 42\)"):
        load_cgn_mnist(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", b"PK\x03\x04broken"])
def test_an_unreadable_file_is_one_value_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path} is not a readable PyTorch state dict.*"
                                         f"weights_only=True"):
        load_cgn_mnist(path)


def test_missing_file_wrapped_or_prefixed_dicts_and_a_wrong_checksum(tmp_path: Path,
                                                                    good_state) -> None:
    with pytest.raises(FileNotFoundError, match="CGN-MNIST checkpoint not found: .*nope.pth"):
        load_cgn_mnist(tmp_path / "nope.pth")
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": good_state}, wrapped)
    with pytest.raises(ValueError, match="wraps its state dict in the key 'state_dict'"):
        load_cgn_mnist(wrapped)
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"module.{k}": v for k, v in good_state.items()}, prefixed)
    with pytest.raises(ValueError, match="every key carries the prefix 'module.'"):
        load_cgn_mnist(prefixed)
    pickled = tmp_path / "pickled.pth"
    torch.save(SimpleNamespace(a=1), pickled)  # not loadable with weights_only=True
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        load_cgn_mnist(pickled)
    good = tmp_path / "good.pth"
    torch.save(good_state, good)
    load_cgn_mnist(good, sha256=sha256_of(good).upper())
    with pytest.raises(ValueError, match=f"{good}: SHA-256 .* does not match the expected 0+"):
        load_cgn_mnist(good, sha256="0" * 64)


# ----------------------------------------------------------------------------- outputs


@needs_shared
@pytest.mark.parametrize("variant", list(FILES))
def test_outputs_have_the_published_shapes_and_ranges(variant: str) -> None:
    model = _model(variant)
    labels = torch.arange(10).repeat(3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mask = model.mechanism("shape", torch.randn(30, 32, generator=g), labels)
        fg = model.mechanism("foreground", torch.randn(30, 32, generator=g), labels)
        bg = model.mechanism("background", torch.randn(30, 32, generator=g), labels)
        cf = model.sample(labels, g, counterfactual=True)
    assert mask.shape == (30, 1, 32, 32) and fg.shape == bg.shape == (30, 3, 32, 32)
    lo, hi = torch.tensor(MASK_MIN), torch.tensor(MASK_MAX)  # the bounds in float32
    assert torch.equal(mask.min(), lo) and torch.equal(mask.max(), hi)  # both reached: a clamp
    for t in (fg, bg, cf.image):
        assert -1.0 <= float(t.min()) and float(t.max()) <= 1.0
    assert cf.image.shape == (30, 3, 32, 32) and cf.mask.shape == (30, 1, 32, 32)
    with pytest.raises(ValueError, match="noise must be"):
        model.mechanism("shape", torch.randn(30, 16), labels)


@needs_shared
def test_same_noise_and_labels_give_the_same_sample_in_eval_mode() -> None:
    a, b = load_cgn_mnist(_path("wildlife")), load_cgn_mnist(_path("wildlife"))
    labels = torch.arange(10).repeat(2)
    z = torch.randn(20, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for name in MECHANISMS:
            batch = a.mechanism(name, z, labels)
            assert torch.equal(batch, b.mechanism(name, z, labels))
            # eval mode: BatchNorm uses running statistics, so a sample does not depend on its
            # batch (InstanceNorm is per sample)
            torch.testing.assert_close(a.mechanism(name, z[5:6], labels[5:6]), batch[5:6])
        s1 = a.sample(labels, torch.Generator().manual_seed(7))
        s2 = b.sample(labels, torch.Generator().manual_seed(7))
    assert torch.equal(s1.image, s2.image)


def _region_colours(model: CGNMnist, per_class: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: mean colour of the composed image (in [0, 1]) inside the mask (> 0.9) and
    outside it (< 0.1)."""
    labels = torch.arange(10).repeat_interleave(per_class)
    with torch.no_grad():
        c = model.sample(labels, torch.Generator().manual_seed(0))
    img = (c.image + 1) / 2
    out = []
    for sel in ((c.mask > 0.9).float(), (c.mask < 0.1).float()):
        col = (img * sel).sum((2, 3)) / sel.sum((2, 3)).clamp_min(1)
        out.append(col.view(10, per_class, 3).mean(1))
    return out[0], out[1]


def _mask_template_accuracy(model: CGNMnist, per_class: int = 40) -> float:
    """Masks carry the class: nearest class template (correlation) of fresh masks."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(10).repeat_interleave(per_class)
    with torch.no_grad():
        fit = model.mechanism("shape", torch.randn(len(y), 32, generator=g), y)
        test = model.mechanism("shape", torch.randn(len(y), 32, generator=g), y)

    def unit(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True)

    templates = unit(fit.view(10, per_class, -1).mean(1))
    return float(((unit(test.flatten(1)) @ templates.T).argmax(1) == y).float().mean())


@needs_shared
def test_double_colored_teacher_follows_the_source_palette() -> None:
    model = _model("double_colored")
    digit, background = _region_colours(model)
    classes = torch.arange(10)
    d_digit = torch.cdist(digit, DOUBLE_PALETTE)
    d_bg = torch.cdist(background, DOUBLE_PALETTE)
    assert torch.equal(d_digit.argmin(1), (classes - 6) % 10)  # the palette shifted by 6
    assert torch.equal(d_bg.argmin(1), classes)
    assert float(d_digit[classes, (classes - 6) % 10].max()) < 0.25
    assert float(d_bg[classes, classes].max()) < 0.15
    assert _mask_template_accuracy(model) > 0.7
    # flat colours: a texture's spatial spread is small
    with torch.no_grad():
        fg = model.mechanism("foreground", torch.randn(100, 32), torch.arange(10).repeat(10))
    assert float(((fg + 1) / 2).std((2, 3)).mean()) < 0.05


@needs_shared
def test_colored_teacher_digit_colours_on_black() -> None:
    model = _model("colored")
    digit, background = _region_colours(model)
    assert float(background.max()) < 0.02  # black background for every class
    d = torch.cdist(digit, MEASURED_COLORED_DIGIT)
    assert float(d.diagonal().max()) < 0.1  # 40 samples per class here
    assert torch.equal(d.argmin(1), torch.arange(10))
    # not the double-coloured digit palette (the README's suggested stand-in)
    shifted = DOUBLE_PALETTE[(torch.arange(10) - 6) % 10]
    assert float((digit - shifted).norm(dim=1).mean()) > 0.2
    assert float(torch.cdist(digit, DOUBLE_PALETTE).min(1).values.mean()) > 0.2
    assert _mask_template_accuracy(model) > 0.7


@needs_shared
def test_wildlife_teacher_textures_follow_the_class_textures() -> None:
    import numpy as np
    from PIL import Image

    model = _model("wildlife")
    digit, background = _region_colours(model)
    for part, generated in (("object", digit), ("background", background)):
        files = sorted((SHARED / "textures" / part).glob("*.jpg"))
        assert [int(f.name.split("_")[0]) for f in files] == list(range(10))
        means = torch.tensor(np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32)
                                       .mean((0, 1)) / 255 for f in files]))
        d = torch.cdist(generated, means)
        assert float(d.diagonal().max()) < 0.2, part  # each class near its own texture's colour
        assert int((d.argmin(1) == torch.arange(10)).sum()) >= 8, part
    with torch.no_grad():
        fg = model.mechanism("foreground", torch.randn(100, 32), torch.arange(10).repeat(10))
    assert float(((fg + 1) / 2).std((2, 3)).mean()) > 0.1  # textured, not flat
    assert _mask_template_accuracy(model) > 0.7


# ----------------------------------------------------------------------------- shuffler


def test_shuffler_is_a_cyclic_shift_of_the_full_size_texture() -> None:
    g = torch.Generator().manual_seed(0)
    for size in (16, 32):
        tex = torch.rand(12, 3, size, size, generator=g)
        out = shuffle_texture(tex, torch.Generator().manual_seed(5))
        assert out.shape == tex.shape
        shifts = set()
        for i in range(len(tex)):  # every crop of the 2x2 tiling equals a roll of the original
            match = [(dy, dx) for dy in range(size) for dx in range(size)
                     if torch.equal(torch.roll(tex[i], (-dy, -dx), (1, 2)), out[i])]
            assert len(match) == 1, i
            shifts.add(match[0])
        assert len(shifts) > 1  # an offset per image
        # the same generator seed, the same crops
        assert torch.equal(out, shuffle_texture(tex, torch.Generator().manual_seed(5)))
    assert torch.equal(shuffle_texture(tex, g, tiles=1), tex)


def test_shuffler_preserves_texture_frequency() -> None:
    size, period = 32, 8
    x = torch.arange(size, dtype=torch.float32)
    stripes = 0.5 + 0.5 * torch.cos(2 * math.pi * x / period)
    tex = stripes.expand(20, 3, size, size).contiguous()
    out = shuffle_texture(tex, torch.Generator().manual_seed(0))
    # the amplitude spectrum of a cyclic shift is the original's: no frequency doubled
    torch.testing.assert_close(torch.fft.fft2(out).abs(), torch.fft.fft2(tex).abs(),
                               atol=1e-3, rtol=1e-4)
    spectrum = torch.fft.rfft(out[:, 0, 0] - 0.5, dim=-1).abs()
    assert torch.equal(spectrum.argmax(-1), torch.full((20,), size // period))  # 4 cycles
    # a shrink-then-tile shuffler (the old one) doubled it: 8 cycles per image


# ----------------------------------------------------------------------------- pretrained mode


def test_pretrained_mode_needs_a_checkpoint_and_only_it_reads_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="teacher.mode=pretrained needs 'teacher.checkpoint'"):
        cgn_config.resolve({"teacher.mode": "pretrained"})
    with pytest.raises(ConfigError, match="read only by teacher.mode=pretrained"):
        cgn_config.resolve({"teacher.checkpoint": "x.pth"})
    with pytest.raises(ConfigError, match="one of supervised, adversarial, pretrained"):
        cgn_config.resolve({"teacher.mode": "published"})
    with pytest.raises(ConfigError, match="generate 32x32 images.*set data.published: true"):
        cgn_config.resolve({"teacher.mode": "pretrained", "teacher.checkpoint": "x.pth"})
    with pytest.raises(ConfigError, match="'retrain.steps' fine-tunes a published.*"
                                          "needs teacher.mode=pretrained"):
        cgn_config.resolve({"retrain.steps": 10})
    with pytest.raises(ConfigError, match="wildlife needs 'data.textures'"):
        cgn_config.resolve({"data.published": True, "data.variant": "wildlife"})
    with pytest.raises(ConfigError, match="'data.textures' is read only by the published "
                                          "wildlife data"):
        cgn_config.resolve({"data.textures": "/t"})
    cfg = cgn_config.resolve({"teacher.mode": "pretrained", "teacher.checkpoint": "x.pth",
                              "smoke": True, "data.published": True})
    assert cfg.teacher.mode == "pretrained" and cfg.teacher.checkpoint == "x.pth"
    assert cgn_config.resolve({}).teacher.checkpoint == ""


def _data(size: int) -> SimpleNamespace:
    return SimpleNamespace(images=torch.zeros(10, 3, size, size), labels=torch.arange(10))


@needs_shared
def test_black_box_serves_the_published_teacher_at_32x32() -> None:
    teacher = published_teacher(_path("double_colored"))
    raw = _model("double_colored")
    box = BlackBoxCGN(teacher)
    assert (box.image_size, box.latent_dim, box.num_classes) == (32, 32, 10)
    assert box.channels == {"shape": 1, "foreground": 3, "background": 3}
    z, y = torch.randn(6, 32), torch.arange(6)
    with torch.no_grad():
        torch.testing.assert_close(box.query("shape", z, y), raw.mechanism("shape", z, y))
        fg = box.query("foreground", z, y)  # textures in the pipeline's [0, 1]
        torch.testing.assert_close(fg, (raw.mechanism("foreground", z, y) + 1) / 2)
    assert fg.shape == (6, 3, 32, 32) and 0 <= float(fg.min()) and float(fg.max()) <= 1
    qs = collect_queries(box, per_class=2, seed=0)
    assert all(q.answers.shape[-2:] == (32, 32) for q in qs.values())
    # the pipeline's parameter count sees the published mechanisms (+ the shared embedding)
    assert sum(parameter_count(teacher.mechanisms[m]) for m in MECHANISMS) == \
        sum(p.numel() for p in raw.parameters()) + 2 * 100


@needs_shared
def test_pretrained_teacher_is_loaded_not_fitted_and_the_16x16_gap_is_refused() -> None:
    cfg = cgn_config.resolve({"teacher.mode": "pretrained", "smoke": True, "data.published": True,
                              "teacher.checkpoint": str(_path("colored"))})
    teacher = pretrained_teacher(cfg, _data(32), log=lambda _: None)  # fits 32x32 data
    assert BlackBoxCGN(teacher).image_size == 32
    with pytest.raises(ConfigError, match=r"answers 32x32 images of 10 classes, but "
                                          r"data.variant=double_colored gives 16x16 images.*"
                                          r"set data.published: true"):
        cached_teacher_cgn(cfg, _data(16), log=lambda _: None)


def test_pretrained_mode_with_a_missing_or_bad_file_names_it(tmp_path: Path) -> None:
    cfg = cgn_config.resolve({"teacher.mode": "pretrained", "smoke": True, "data.published": True,
                              "teacher.checkpoint": str(tmp_path / "missing.pth")})
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        cached_teacher_cgn(cfg, _data(32), log=lambda _: None)
    (tmp_path / "bad.pth").write_bytes(b"junk")
    cfg.teacher.checkpoint = str(tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth is not a readable PyTorch state dict"):
        cached_teacher_cgn(cfg, _data(32), log=lambda _: None)


def test_a_pretrained_teacher_is_keyed_by_its_file_content(tmp_path: Path, good_state) -> None:
    from kdci_ray.cgn.cache import students_key, teacher_key

    path = tmp_path / "teacher.pth"
    torch.save(good_state, path)
    cfg = cgn_config.resolve({"teacher.mode": "pretrained", "teacher.checkpoint": str(path),
                              "data.published": True})
    first = teacher_key(cfg), students_key(cfg)
    assert (teacher_key(cfg), students_key(cfg)) == first
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in good_state.items()}, path)
    assert teacher_key(cfg) != first[0] and students_key(cfg) != first[1]
