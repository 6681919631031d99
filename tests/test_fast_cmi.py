"""Fast (meta generator) and CMI (contrastive inversion): what one synthesis round must change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdci_ray.experiments.dfkd import resolve
from kdci_ray.methods import METHODS
from kdci_ray.methods import cmi as cmi_module
from kdci_ray.methods.base import MethodContext
from kdci_ray.methods.bn_statistics import (
    BNMomentum,
    bn_inputs,
    bn_statistics,
    bn_statistics_momentum,
    count_forward_hooks,
    feature_dim,
    instance_means,
    stage_inputs,
)
from kdci_ray.methods.cmi import (
    CMI,
    CMIConfig,
    FeatureBank,
    decision_adversarial,
    resized_crop,
    shift_flip,
)
from kdci_ray.methods.fast import Fast, FastConfig
from kdci_ray.models import create_model
from kdci_ray.train.datasets import load_data
from kdci_ray.train.loop import Collect, distill
from kdci_ray.train.teacher import load_teacher

CPU = torch.device("cpu")
FAST = {"latent_dim": 8, "width": 4, "batch_size": 16, "g_steps": 2, "warmup": 0,
        "reset_l0_round": 100, "view_pad": 1, "augment_pad": 1, "kd_temperature": 4.0}
CMI_TINY = {"latent_dim": 8, "width": 4, "batch_size": 16, "g_steps": 2, "head_dim": 8,
            "bank_size": 40, "n_neg": 24, "view_pad": 1, "augment_pad": 1}


def _params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _context(settings: dict, seed: int = 0) -> MethodContext:
    cfg = resolve(settings, {"method": "dafl"})
    data = load_data(cfg)
    torch.manual_seed(seed)
    teacher = load_teacher(cfg, data, CPU)
    return MethodContext(teacher=teacher, student=create_model("tiny_cnn", 10, 1),
                         num_classes=10, channels=1, image_size=16, device=CPU, seed=seed,
                         rounds=4, mean=data.mean, std=data.std)


def _fast(settings: dict, seed: int = 0, **over) -> Fast:
    ctx = _context(settings, seed)
    return Fast(FastConfig(**{**FAST, **over}), ctx)


def _cmi(settings: dict, seed: int = 0, **over) -> CMI:
    ctx = _context(settings, seed)
    return CMI(CMIConfig(**{**CMI_TINY, **over}), ctx)


# ----------------------------------------------------------------------------- Fast


@pytest.mark.parametrize("meta", ["fomaml", "reptile"])
def test_fast_round_meta_updates_the_generator_and_fills_the_pool(tiny_settings, meta) -> None:
    method = _fast(tiny_settings, meta=meta)
    teacher = _params(method.ctx.teacher)
    hooks = count_forward_hooks(method.ctx.teacher)
    before = _params(method.generator)
    logs = method.synthesize(0)
    assert not torch.allclose(_params(method.generator), before)  # the meta step moved it
    assert set(logs) >= {"bn", "oh", "adv", "loss", "pool_size"} and logs["bn"] > 0
    assert len(method.pool) == 16 and method.pool.images().dtype == torch.uint8
    assert method.last_batch.shape == (16, 1, 16, 16)
    assert method.bn_memory.stats is not None  # the momentum memory was committed
    assert count_forward_hooks(method.ctx.teacher) == hooks
    method.synthesize(1)
    assert len(method.pool) == 32 and count_forward_hooks(method.ctx.teacher) == hooks
    assert torch.equal(_params(method.ctx.teacher), teacher)
    x = method.sample(8)
    assert x.shape == (8, 1, 16, 16) and x.dtype == torch.float32


def test_fast_resets_the_first_layers_once_after_warmup(tiny_settings, monkeypatch) -> None:
    method = _fast(tiny_settings, warmup=1, reset_l0_round=2)
    calls: list[int] = []
    original = Fast.reset_first_layers

    def spy(self) -> None:
        calls.append(len(self.pool) // 16)  # the round it happens in
        original(self)

    monkeypatch.setattr(Fast, "reset_first_layers", spy)
    for rnd in range(5):
        method.synthesize(rnd)
    assert calls == [2]  # round index 2 = 1-based round warmup + reset_l0_round


def test_fast_reset_reinitialises_only_l1_and_the_first_bn(tiny_settings) -> None:
    method = _fast(tiny_settings)
    gen = method.generator
    with torch.no_grad():
        for p in gen.parameters():
            p.fill_(3.0)
    method.reset_first_layers()
    linear, bn = gen.l1[0], gen.conv_blocks[0]
    for m in (linear, bn):
        assert torch.all(m.bias == 0) and m.weight.abs().max() < 0.2
    assert torch.all(gen.conv_blocks[2].weight == 3.0)  # later layers untouched


def test_fast_warmup_trains_no_student(tiny_settings, monkeypatch) -> None:
    monkeypatch.setitem(METHODS, "fast", Fast)
    over = {"method": "fast", "train.rounds": 3, **{f"fast.{k}": v for k, v in FAST.items()},
            "fast.warmup": 3}
    cfg = resolve(tiny_settings, over)
    method = Fast(cfg.method_config, _context(tiny_settings))
    assert [method.kd_active(r) for r in range(5)] == [False, False, False, True, True]
    initial: dict[str, torch.Tensor] = {}
    original = Fast.__init__

    def spy(self, cfg, ctx) -> None:  # the student as the loop built it
        initial.update({k: v.clone() for k, v in ctx.student.state_dict().items()})
        original(self, cfg, ctx)

    monkeypatch.setattr(Fast, "__init__", spy)
    rep = Collect()
    final = distill(cfg, rep)
    assert final["step"] == 0 and "train/loss" not in final
    assert final["synth/pool_size"] == 3 * FAST["batch_size"]
    trained = rep.state["state_dict"]
    assert all(torch.equal(trained[k], initial[k]) for k in initial)


def _fast_rank(rank: int, settings: dict, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        METHODS.setdefault("fast", Fast)
        built: list[Fast] = []
        original = Fast.__init__

        def spy(self, cfg, ctx) -> None:
            original(self, cfg, ctx)
            built.append(self)

        Fast.__init__ = spy
        over = {"method": "fast", "train.rounds": 3, **{f"fast.{k}": v for k, v in FAST.items()},
                "fast.warmup": 1, "fast.reset_l0_round": 1}  # the reset happens in round 2
        distill(resolve(settings, over), Collect())
        torch.save({"generator": _params(built[0].generator), "last": built[0].last_batch},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fast_meta_generators_stay_equal_across_ranks(tiny_settings, tmp_path) -> None:
    mp.spawn(_fast_rank, args=(tiny_settings, str(tmp_path / "store"), str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert not torch.equal(r0["last"], r1["last"])  # each rank its own data
    assert torch.equal(r0["generator"], r1["generator"])  # one meta generator


def test_momentum_bn_memory_blends_and_never_stacks(tiny_settings) -> None:
    ctx = _context(tiny_settings)
    x = torch.randn(8, 1, 16, 16)
    memory = BNMomentum(0.9)
    with bn_statistics_momentum(ctx.teacher, memory) as stats:
        ctx.teacher(x)
        first = stats.pop()
        stats.commit()
        last = [(m.clone(), v.clone()) for m, v in stats.last]
        with pytest.raises(RuntimeError, match="never stack"), bn_statistics(ctx.teacher):
            pass
    with bn_statistics(ctx.teacher) as plain:
        ctx.teacher(x)
        assert torch.allclose(plain.pop(), first)  # empty memory = plain matching
    assert all(torch.equal(a[0], b[0]) for a, b in zip(memory.stats, last, strict=True))
    memory.update([(m + 1, v + 1) for m, v in last])
    assert torch.allclose(memory.stats[0][0], last[0][0] + 0.1)
    with bn_statistics_momentum(ctx.teacher, memory) as stats:
        ctx.teacher(x)
        assert not torch.allclose(stats.pop(), first)
    assert count_forward_hooks(ctx.teacher) == 0


# ----------------------------------------------------------------------------- CMI


def test_cmi_round_reinitialises_the_generator_and_grows_a_bounded_bank(
        tiny_settings, monkeypatch) -> None:
    method = _cmi(tiny_settings)
    starts: list[torch.Tensor] = []
    original = cmi_module.dcgan_reset_

    def spy(model, rng) -> None:
        original(model, rng)
        starts.append(_params(model))

    monkeypatch.setattr(cmi_module, "dcgan_reset_", spy)
    teacher = _params(method.ctx.teacher)
    hooks = count_forward_hooks(method.ctx.teacher)
    head = _params(method.head)
    logs = method.synthesize(0)
    assert set(logs) >= {"bn", "oh", "adv", "cr", "loss"} and logs["bn"] > 0
    assert len(method.pool) == 16 and len(method.bank) == 16
    assert method.bank.data.device == method.ctx.device
    # [local | global] instance means of tiny_cnn's stage inputs: the convs after its two max
    # pools (8 + 16 channels), not every BN input (8 + 16 + 16)
    convs = [m for m in method.ctx.teacher.features if isinstance(m, torch.nn.Conv2d)]
    assert method.feature_modules == convs[1:]
    assert method.bank.data.shape[1] == 2 * (8 + 16)
    assert not torch.allclose(_params(method.head), head)  # the head trains
    assert count_forward_hooks(method.ctx.teacher) == hooks
    method.synthesize(1)
    method.synthesize(2)
    assert len(starts) == 3 and not torch.allclose(starts[0], starts[1])
    assert len(method.bank) == 40 and len(method.pool) == 48  # bank bounded at bank_size
    assert count_forward_hooks(method.ctx.teacher) == hooks
    assert torch.equal(_params(method.ctx.teacher), teacher)
    assert method.sample(8).shape == (8, 1, 16, 16)


def test_cmi_reads_resnet34_layer_inputs_512d() -> None:
    """CMI's contrastive feature for a ResNet-34 teacher: the spatial means of the *inputs* of
    layer1..layer4 (64 + 64 + 128 + 256 = 512), not every BN input (8512) nor the outputs."""
    torch.manual_seed(0)
    teacher = create_model("resnet34", 10).eval()
    ctx = MethodContext(teacher=teacher, student=create_model("tiny_cnn", 10), num_classes=10,
                        channels=3, image_size=32, device=torch.device("cpu"), seed=0, rounds=1,
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    cfg = CMIConfig(latent_dim=8, width=4, batch_size=2, g_steps=1, head_dim=8, bank_size=8,
                    n_neg=4)
    method = CMI(cfg, ctx)
    layers = [teacher.layer1, teacher.layer2, teacher.layer3, teacher.layer4]
    assert method.feature_modules == layers
    assert method.head.head[0].in_features == 512
    assert count_forward_hooks(teacher) == 0  # the dimension probe left no hook behind

    seen: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].mean((2, 3))))
               for m in layers]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), instance_means(teacher, method.feature_modules) as feats:
        teacher(x)
        got = feats.features()
    for h in handles:
        h.remove()
    assert got.shape == (3, 512) and [t.shape[1] for t in seen] == [64, 64, 128, 256]
    assert torch.allclose(got, torch.cat(seen, dim=1))

    method.synthesize(0)  # one round: the bank stores [local | global] 512-d features
    assert method.bank.data.shape == (2, 1024)
    assert count_forward_hooks(teacher) == 0

# the stage inputs of each teacher family: hooked modules (by name) and the feature width
STAGES = {
    "resnet34": (["layer1", "layer2", "layer3", "layer4"], 64 + 64 + 128 + 256),
    "wrn_40_2": (["block1", "block2", "block3"], 16 + 32 + 64),
    "vgg11_bn": (["block1", "block2", "block3", "block4"], 64 + 128 + 256 + 512),
    "digits_cnn": (["features.7", "features.14"], 32 + 64),  # the convs after the 2 pools
}


@pytest.mark.parametrize("arch", sorted(STAGES))
def test_stage_inputs_per_teacher_family(arch: str) -> None:
    channels, size = (1, 16) if arch == "digits_cnn" else (3, 32)
    model = create_model(arch, 10, channels).eval()
    names = {m: n for n, m in model.named_modules()}
    modules = stage_inputs(model)
    expected, dim = STAGES[arch]
    assert [names[m] for m in modules] == expected
    assert feature_dim(model, modules, channels, size) == dim
    every_bn = sum(m.num_features for m in bn_inputs(model))
    assert feature_dim(model, bn_inputs(model), channels, size) == every_bn > dim
    assert count_forward_hooks(model) == 0


def test_cmi_features_option_and_unknown_models(tiny_settings) -> None:
    method = _cmi(tiny_settings, features="bn")  # the reference's choice for non-ResNet-34
    assert method.feature_modules == bn_inputs(method.ctx.teacher)
    assert method.head.head[0].in_features == 8 + 16 + 16
    with pytest.raises(ValueError, match="cmi.features must be stages or bn"):
        _cmi(tiny_settings, features="all")
    flat = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="set cmi.features=bn"):
        stage_inputs(flat)


def test_feature_bank_is_a_bounded_ring() -> None:
    bank = FeatureBank(5, CPU)
    rng = torch.Generator().manual_seed(0)
    assert bank.sample(3, rng) is None
    bank.add(torch.arange(3.0).view(3, 1))
    bank.add(torch.arange(3.0, 7.0).view(4, 1))  # 5, 6 overwrite the two oldest rows
    assert bank.data.flatten().tolist() == [5.0, 6.0, 2.0, 3.0, 4.0] and bank.ptr == 2
    bank.add(torch.arange(10.0, 17.0).view(7, 1))  # more than capacity: the newest 5
    assert sorted(bank.data.flatten().tolist()) == [12.0, 13.0, 14.0, 15.0, 16.0]
    drawn = bank.sample(4, rng)
    assert drawn.shape == (4, 1) and len(set(drawn.flatten().tolist())) == 4


def test_views_and_adversarial_term() -> None:
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(shift_flip(x, rng, pad=0, flip=False), x, atol=1e-6)
    shifted = shift_flip(x, rng, pad=2, flip=True)
    assert shifted.shape == x.shape
    for img, out in zip(x, shifted, strict=True):  # each view is a shifted / flipped copy
        cands = [torch.roll(c, (dy, dx), (1, 2)) for c in (img, img.flip(2))
                 for dy in range(-2, 3) for dx in range(-2, 3)]
        assert any(torch.allclose(out[:, 2:-2, 2:-2], c[:, 2:-2, 2:-2], atol=1e-5)
                   for c in cands)
    local = resized_crop(x.requires_grad_(True), rng, min_scale=0.25)
    local.sum().backward()
    assert local.shape == x.shape and x.grad is not None
    t = torch.randn(6, 10)
    assert decision_adversarial(t, t).abs() < 1e-6
    s = t.clone()
    s[:, :] = -t  # every decision differs: the mask removes every sample
    assert decision_adversarial(s, t) == 0


# ----------------------------------------------------------------------------- both


@pytest.mark.parametrize("build", [_fast, _cmi], ids=["fast", "cmi"])
def test_same_seed_same_synthesis_losses(tiny_settings, build) -> None:
    def losses(seed: int) -> list[dict[str, float]]:
        method = build(tiny_settings, seed)
        return [method.synthesize(r) for r in range(2)]

    first = losses(0)
    assert first == losses(0)
    assert first != losses(1)
