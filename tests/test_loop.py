"""The one distillation loop, in-process (no Ray): every method x KDCI off/on."""

from __future__ import annotations

import pytest
import torch

from kdci_ray.experiments.dfkd import resolve
from kdci_ray.kdci import KDCI
from kdci_ray.methods import METHODS
from kdci_ray.methods.bn_statistics import count_forward_hooks
from kdci_ray.methods.deepinv import BestBatch
from kdci_ray.models import create_model
from kdci_ray.train import kdci_setup
from kdci_ray.train.datasets import load_data
from kdci_ray.train.loop import Collect, distill
from kdci_ray.train.teacher import load_teacher


def _params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("kdci", [False, True])
def test_one_run_trains_the_student_and_reports(tiny_settings, method, kdci) -> None:
    cfg = resolve(tiny_settings, {"method": method, "kdci.enabled": kdci})
    data = load_data(cfg)
    teacher_before = _params(load_teacher(cfg, data, torch.device("cpu")))
    torch.manual_seed(cfg.seed)
    initial = _params(create_model(cfg.student.arch, 10, 1))
    rep = Collect()
    final = distill(cfg, rep)

    assert len(rep.history) == cfg.train.rounds  # eval_every = 1
    steps = [s for s, _ in rep.history]
    assert steps == [cfg.train.kd_steps * (i + 1) for i in range(cfg.train.rounds)]
    assert 0.0 <= final["eval/acc"] <= 1.0
    assert final["eval/teacher_acc"] >= 0.5
    assert final["train/loss"] > 0 and final["train/kd"] > 0
    terms = [v for k, v in final.items() if k.startswith("train/") and k != "train/loss"]
    assert sum(terms) == pytest.approx(final["train/loss"], rel=1e-5)  # named terms add up
    assert final["finished"] == 1.0 and rep.history[0][1]["finished"] == 0.0
    assert ("eval/acc_kdci" in final) is kdci
    assert any(k.startswith("kdci/") for k in final) is kdci
    assert any(k.startswith("synth/") for k in final)
    # the student moved, the teacher did not
    trained = torch.cat([v.flatten() for k, v in rep.state["state_dict"].items()
                         if "running" not in k and "num_batches" not in k])
    assert trained.shape == initial.shape and not torch.allclose(trained, initial)
    assert torch.equal(teacher_before, _params(load_teacher(cfg, data, torch.device("cpu"))))
    assert ("kdci" in rep.state) is kdci


@pytest.mark.parametrize("method", sorted(METHODS))
def test_same_seed_same_losses_other_seed_different(tiny_settings, method) -> None:
    def losses(seed: int) -> list[float]:
        rep = Collect()
        distill(resolve(tiny_settings, {"method": method, "seed": seed, "kdci.enabled": True}),
                rep)
        return [m["train/loss"] for _, m in rep.history]

    first = losses(0)
    assert first == losses(0)
    assert first != losses(1)


def test_kdci_changes_the_kd_loss(tiny_settings, monkeypatch) -> None:
    """Same seed, KDCI on vs off: the first KD loss differs because s~ != s."""
    seen: dict[bool, list[float]] = {False: [], True: []}

    def run(enabled: bool) -> None:
        rep = Collect()
        distill(resolve(tiny_settings, {"method": "deepinv", "kdci.enabled": enabled,
                                        "train.rounds": 1, "train.kd_steps": 1}), rep)
        seen[enabled] = [rep.history[0][1]["train/kd"]]

    run(False)
    run(True)
    assert seen[True][0] != pytest.approx(seen[False][0], rel=1e-6)


def test_kdci_dictionary_refreshes_every_round_for_generators(tiny_settings, monkeypatch) -> None:
    calls = []
    original = KDCI.refresh

    def spy(self, teacher, images, data_key=None):
        assert data_key is None  # fresh synthetic batches: never a stored dictionary
        out = original(self, teacher, images, data_key)
        calls.append((self.module.prototypes.clone(), float(self.module.proportions.sum())))
        return out

    monkeypatch.setattr(KDCI, "refresh", spy)
    cfg = resolve(tiny_settings, {"method": "dafl", "kdci.enabled": True, "train.rounds": 3,
                                  "kdci.k": 5})
    distill(cfg, Collect())
    assert len(calls) == 3
    for protos, total in calls:
        assert protos.shape == (5, 10) and total == pytest.approx(1.0, abs=1e-5)
    assert not torch.equal(calls[0][0], calls[-1][0])


def test_method_default_k_is_used_when_kdci_k_is_zero(tiny_settings, monkeypatch) -> None:
    sizes = []
    monkeypatch.setattr(kdci_setup, "KDCI",
                        lambda config, *a, **kw: sizes.append(config.k) or KDCI(config, *a, **kw))
    settings = {**tiny_settings, "kdci.k": 0, "kdci.enabled": True, "train.rounds": 1,
                "dafl.batch_size": 16}
    distill(resolve(settings, {"method": "dafl"}), Collect())
    assert sizes == [METHODS["dafl"].substitution.default_clusters]


def test_bn_hooks_are_removed_after_synthesis(tiny_settings) -> None:
    cfg = resolve(tiny_settings, {"method": "deepinv"})
    data = load_data(cfg)
    teacher = load_teacher(cfg, data, torch.device("cpu"))
    student = create_model("tiny_cnn", 10, 1)
    from kdci_ray.methods.base import MethodContext

    ctx = MethodContext(teacher=teacher, student=student, num_classes=10, channels=1,
                        image_size=16, device=torch.device("cpu"), seed=0, rounds=1)
    method = METHODS["deepinv"](cfg.method_config, ctx)
    before = count_forward_hooks(teacher)
    logs = method.synthesize(0)
    assert count_forward_hooks(teacher) == before
    assert logs["bn"] > 0 and len(method.pool) == cfg.method_config.batch_size
    method.synthesize(1)  # a second round neither fails nor stacks hooks
    assert count_forward_hooks(teacher) == before and len(method.pool) == 32


def test_best_batch_is_a_copy_at_the_lowest_loss() -> None:
    x = torch.zeros(2, 1, 4, 4)
    best = BestBatch()
    for loss in (3.0, 1.0, 2.0):
        best.update(loss, x, {"loss": torch.tensor(loss)})
        x.add_(1.0)  # the optimiser mutates the live tensor in place
    assert best.loss == 1.0 and best.logs == {"loss": 1.0}
    assert torch.equal(best.images, torch.full((2, 1, 4, 4), 1.0))


def test_deepinversion_stores_the_best_iterate(tiny_settings, monkeypatch) -> None:
    cfg = resolve(tiny_settings, {"method": "deepinv", "deepinv.iterations": 8,
                                  "deepinv.lr": 3.0})
    data = load_data(cfg)
    teacher = load_teacher(cfg, data, torch.device("cpu"))
    from kdci_ray.methods.base import MethodContext

    ctx = MethodContext(teacher=teacher, student=create_model("tiny_cnn", 10, 1),
                        num_classes=10, channels=1, image_size=16,
                        device=torch.device("cpu"), seed=0, rounds=1)
    method = METHODS["deepinv"](cfg.method_config, ctx)
    seen: list[tuple[float, torch.Tensor]] = []
    original = BestBatch.update

    def spy(self, loss, images, logs):
        seen.append((loss, images.detach().clone()))
        return original(self, loss, images, logs)

    monkeypatch.setattr(BestBatch, "update", spy)
    logs = method.synthesize(0)
    losses = [loss for loss, _ in seen]
    best = min(range(len(seen)), key=losses.__getitem__)
    assert len(seen) == 8 and logs["loss"] == pytest.approx(losses[best])
    assert torch.equal(method.last_batch, seen[best][1])
    assert best != len(seen) - 1 or losses[-1] == min(losses)


def test_image_pool_is_a_bounded_ring_buffer() -> None:
    from kdci_ray.methods.pool import ImagePool

    pool = ImagePool(capacity=5)
    for start in (0, 3, 6):
        pool.add(torch.arange(start, start + 3, dtype=torch.uint8).view(3, 1, 1, 1))
    assert len(pool) == 5
    assert pool.images().flatten().tolist() == [4, 5, 6, 7, 8]  # oldest dropped first
    drawn = pool.sample(200, torch.Generator().manual_seed(0)).flatten().tolist()
    assert set(drawn) == {4, 5, 6, 7, 8}
    clone = ImagePool(capacity=5)
    clone.load_state_dict(pool.state_dict())
    assert torch.equal(clone.images(), pool.images())
