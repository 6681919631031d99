"""KDCI at scale: the Table 4 ablation switches, the Table 5 dictionary sources, and dictionaries as
shared artifacts (round trip, reuse across runs, invalidation)."""

from __future__ import annotations

import json

import pytest
import torch

from kdci_ray.errors import ConfigError
from kdci_ray.experiments.dfkd import resolve
from kdci_ray.kdci import (
    KDCI,
    ConfounderDictionary,
    DictionarySpec,
    DictionaryStore,
    KDCIAttention,
    KDCIConfig,
    apply_ablations,
    build_dictionary,
    random_dictionary,
)
from kdci_ray.models import create_model
from kdci_ray.train.loop import Collect, distill


def blob_features(n_per: int = 40, k: int = 4, dim: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 8.0
    return torch.cat([c + 0.1 * torch.randn(n_per, dim, generator=g) for c in centres])


def clustered(k: int = 4) -> tuple[torch.Tensor, ConfounderDictionary]:
    feats = blob_features(k=k)
    return feats, build_dictionary(feats, k=k, seed=0)


# ----------------------------------------------------------------------------- Table 4 switches


def test_random_z_replaces_only_the_prototypes() -> None:
    feats, d = clustered()
    out = apply_ablations(d, feats, random_z=True, uniform_p=False,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.proportions, d.proportions)
    assert out.prototypes.shape == d.prototypes.shape
    assert not torch.allclose(out.prototypes, d.prototypes, atol=1e-3)
    # drawn at the features' scale (not unit noise): per-dimension mean within the spread
    assert (out.prototypes.mean(0) - feats.mean(0)).abs().max() < 3 * feats.std(0).max()
    assert torch.equal(d.prototypes, build_dictionary(feats, k=4, seed=0).prototypes)  # input kept


def test_uniform_p_replaces_only_the_proportions() -> None:
    feats = torch.cat([blob_features(n_per=10, k=1, seed=1), blob_features(n_per=70, k=1,
                                                                           seed=2)])
    d = build_dictionary(feats, k=2, seed=0)
    assert sorted(d.proportions.tolist()) == pytest.approx([0.125, 0.875])
    out = apply_ablations(d, feats, random_z=False, uniform_p=True,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.prototypes, d.prototypes)
    assert torch.allclose(out.proportions, torch.full((2,), 0.5))


def test_no_switch_changes_nothing() -> None:
    feats, d = clustered()
    out = apply_ablations(d, feats, random_z=False, uniform_p=False,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.prototypes, d.prototypes) and torch.equal(out.proportions, d.proportions)


def test_random_lambda_ignores_the_student_and_freezes_the_attention() -> None:
    torch.manual_seed(0)
    learned = KDCIAttention(10, k=4, hidden=8)
    rand_a = KDCIAttention(10, k=4, hidden=8, random_lambda=True, seed=3)
    rand_b = KDCIAttention(10, k=4, hidden=8, random_lambda=True, seed=3)
    protos, props = torch.randn(4, 10), torch.full((4,), 0.25)
    for m in (learned, rand_a, rand_b):
        m.set_dictionary(protos, props)
    logits = torch.randn(5, 10, requires_grad=True)
    rng_before = torch.random.get_rng_state()
    lam_a = rand_a.attention(logits)
    lam_b = rand_b.attention(torch.zeros(5, 10))  # different student logits, same seed
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # own generator only
    assert torch.equal(lam_a, lam_b)
    assert torch.allclose(lam_a.sum(1), torch.ones(5))
    assert not torch.equal(rand_a.attention(logits), lam_a)  # a fresh draw per call
    assert all(not p.requires_grad for n, p in rand_a.named_parameters())
    adjusted, _ = rand_a(logits)
    adjusted.sum().backward()
    assert logits.grad is not None and rand_a.w_s.weight.grad is None
    # the learned module's attention does depend on the student's logits
    assert not torch.allclose(learned.attention(logits.detach()),
                              learned.attention(torch.zeros(5, 10)))


def test_kdci_plugin_applies_the_switches_it_is_given() -> None:
    teacher = create_model("tiny_cnn", 10, 1).eval()
    images = torch.randn(64, 1, 16, 16)

    def run(**switches) -> KDCI:
        k = KDCI(KDCIConfig(k=4, hidden=8, **switches), 10, torch.device("cpu"), seed=0)
        k.refresh(teacher, images)
        return k

    base, uni, rz = run(), run(uniform_p=True), run(random_z=True)
    assert torch.allclose(uni.module.proportions, torch.full((4,), 0.25))
    assert torch.equal(uni.module.prototypes, base.module.prototypes)
    assert torch.equal(rz.module.proportions, base.module.proportions)
    assert not torch.equal(rz.module.prototypes, base.module.prototypes)


# ----------------------------------------------------------------------------- Table 5 sources


def test_random_source_dictionary_has_nearest_prototype_shares() -> None:
    feats = blob_features()
    d = random_dictionary(feats, 6, torch.Generator().manual_seed(0))
    assert d.backend == "random" and d.k == 6
    nearest = torch.cdist(feats, d.prototypes).argmin(1)
    expected = torch.bincount(nearest, minlength=6).float() / len(feats)
    assert torch.allclose(d.proportions, expected)
    with pytest.raises(ValueError, match="K=200 is larger"):
        random_dictionary(feats, 200, torch.Generator())


def test_other_model_map_is_identity_initialised_and_trains() -> None:
    same = KDCIAttention(10, k=3, hidden=8, source_dim=10)
    protos = torch.randn(3, 10)
    same.set_dictionary(protos, torch.full((3,), 1 / 3))
    assert torch.allclose(same.mapped_prototypes(), protos)

    other = KDCIAttention(10, k=3, hidden=8, source_dim=7)  # another label space
    other.set_dictionary(torch.randn(3, 7), torch.full((3,), 1 / 3))
    before = other.map.weight.detach().clone()
    opt = torch.optim.SGD(other.parameters(), lr=0.5)
    logits = torch.randn(16, 10)
    target = torch.randint(0, 10, (16,))
    adjusted, _ = other(logits)
    assert adjusted.shape == (16, 10)
    torch.nn.functional.cross_entropy(adjusted, target).backward()
    assert other.map.weight.grad is not None and other.map.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(other.map.weight, before)


def test_source_model_needs_an_architecture() -> None:
    with pytest.raises(ConfigError, match="kdci.source_arch"):
        resolve({"kdci.enabled": True, "kdci.source": "model"})
    with pytest.raises(ConfigError, match="kdci.source"):
        resolve({"kdci.source": "imagenet"})
    with pytest.raises(ConfigError, match="cuml runs full k-means only"):
        resolve({"kdci.backend": "cuml", "kdci.algorithm": "minibatch"})


# ----------------------------------------------------------------------------- artifacts


def spec(**changes) -> DictionarySpec:
    base = dict(data_key="d1", model_key="m1", source="teacher", k=4, pca_dim=0,
                algorithm="auto", n_init=1, seed=0)
    return DictionarySpec(**{**base, **changes})


def test_store_round_trip_and_invalidation(tmp_path) -> None:
    store = DictionaryStore(tmp_path)
    _, d = clustered()
    s = spec()
    assert store.load(s) is None
    store.save(s, d)
    back = store.load(s)
    assert back is not None
    assert torch.equal(back.prototypes, d.prototypes)
    assert torch.equal(back.proportions, d.proportions)
    assert back.inertia == pytest.approx(d.inertia) and back.backend == d.backend
    meta = json.loads((tmp_path / f"{s.key}.json").read_text())
    for field in ("k", "backend", "algorithm", "pca_dim", "inertia", "num_samples", "spec"):
        assert field in meta
    assert meta["spec"]["data_key"] == "d1" and meta["spec"]["model_key"] == "m1"
    # another pool/selection, another model, another K: other keys, nothing found
    for changed in (spec(data_key="d2"), spec(model_key="m2"), spec(k=8), spec(source="model")):
        assert changed.key != s.key and store.load(changed) is None
    # a damaged artifact is not trusted
    (tmp_path / f"{s.key}.pt").write_bytes(b"not a torch file")
    assert store.load(s) is None
    assert [e["key"] for e in store.entries()] == [s.key]


def test_the_key_names_no_backend() -> None:
    """The key describes the dictionary, not the machine: a GPU-less head (auto -> sklearn) and
    a GPU trial (auto -> cuML) look up the same entry."""
    assert "backend" not in DictionarySpec.__dataclass_fields__
    teacher = create_model("tiny_cnn", 10, 1)
    keys = {KDCI(KDCIConfig(k=4, hidden=8, backend=b), 10, torch.device("cpu"))
            .spec(teacher, "subset-a").key for b in ("sklearn", "cuml", "auto")}
    assert len(keys) == 1


def test_dictionary_identity_ignores_the_backend() -> None:
    from kdci_ray.engine.dictionary_job import dictionary_identity

    base = {"method": "dfnd", "kdci.enabled": True}
    idents = {dictionary_identity(resolve({**base, "kdci.backend": b}))
              for b in ("sklearn", "cuml", "auto")}
    assert len(idents) == 1
    assert dictionary_identity(resolve({**base, "kdci.k": 7})) not in idents


def test_a_dictionary_saved_under_one_backend_setting_loads_under_another(tmp_path) -> None:
    torch.manual_seed(0)
    teacher = create_model("tiny_cnn", 10, 1).eval()
    images = torch.randn(96, 1, 16, 16)
    store = DictionaryStore(tmp_path)
    built = KDCI(KDCIConfig(k=4, hidden=8, backend="sklearn"), 10, torch.device("cpu"),
                 store=store)
    assert built.refresh(teacher, images, data_key="subset-a")["kdci/cached"] == 0.0
    for backend in ("cuml", "auto"):  # cuML is never called here: the stored one is loaded
        other = KDCI(KDCIConfig(k=4, hidden=8, backend=backend), 10, torch.device("cpu"),
                     store=store)
        assert other.refresh(teacher, images, data_key="subset-a")["kdci/cached"] == 1.0
        assert torch.equal(other.module.prototypes, built.module.prototypes)
        assert other.dictionary.backend == "sklearn"  # what ran, from the metadata
    assert len(store.entries()) == 1


def test_an_entry_whose_spec_names_a_backend_is_not_trusted(tmp_path) -> None:
    """An entry written when the spec still held the backend does not match a spec without it
    (in practice its key differs too, so it is not even opened): rebuilt, never misread."""
    store = DictionaryStore(tmp_path)
    _, d = clustered()
    s = spec()
    store.save(s, d)
    meta_path = tmp_path / f"{s.key}.json"
    meta = json.loads(meta_path.read_text())
    meta["spec"] = {**meta["spec"], "backend": "cuml"}
    meta_path.write_text(json.dumps(meta))
    assert store.load(s) is None


def test_plugin_reuses_a_stored_dictionary_until_the_model_changes(tmp_path) -> None:
    torch.manual_seed(0)
    teacher = create_model("tiny_cnn", 10, 1).eval()
    images = torch.randn(96, 1, 16, 16)
    store = DictionaryStore(tmp_path)

    def refresh(model, seed: int) -> tuple[KDCI, dict]:
        k = KDCI(KDCIConfig(k=4, hidden=8), 10, torch.device("cpu"), seed=seed, store=store)
        return k, k.refresh(model, images, data_key="subset-a")

    first, m1 = refresh(teacher, seed=0)
    second, m2 = refresh(teacher, seed=5)  # another trial seed shares the dictionary
    assert m1["kdci/cached"] == 0.0 and m2["kdci/cached"] == 1.0
    assert torch.equal(first.module.prototypes, second.module.prototypes)
    with torch.no_grad():
        next(teacher.parameters()).add_(0.5)
    _, m3 = refresh(teacher, seed=0)
    assert m3["kdci/cached"] == 0.0
    assert len(store.entries()) == 2
    # without a data key (generation-based refreshes) nothing is stored
    k = KDCI(KDCIConfig(k=4, hidden=8), 10, torch.device("cpu"), store=store)
    assert k.refresh(teacher, images)["kdci/cached"] == 0.0 and len(store.entries()) == 2


@pytest.mark.parametrize("method", ["dfnd", "mosaickd"])
def test_sampling_runs_share_one_dictionary_across_seeds(tiny_settings, method) -> None:
    # a pool no other test selects from: the session's store cannot hold its dictionary yet
    settings = {**tiny_settings, "method": method, "kdci.enabled": True, "pool.seed": 5501}
    states = []
    for seed in (0, 1):
        c = Collect()
        final = distill(resolve(settings, {"seed": seed}), c)
        states.append(c.state["kdci"])
        first_report = c.history[0][1]
        assert first_report["kdci/cached"] == float(seed == 1)
        assert final["eval/acc"] >= 0.0
    assert torch.equal(states[0]["prototypes"], states[1]["prototypes"])


def test_other_model_source_end_to_end(tiny_settings) -> None:
    settings = {**tiny_settings, "method": "dfnd", "kdci.enabled": True, "kdci.source": "model",
                "kdci.source_arch": "tiny_cnn"}
    c = Collect()
    distill(resolve(settings), c)
    state = c.state["kdci"]
    assert "map.weight" in state
    # the map started at the identity and the student's steps moved it
    assert not torch.allclose(state["map.weight"], torch.eye(10))


def test_dictionary_command_builds_once_then_reuses(tiny_settings, tmp_path, capsys) -> None:
    import re

    import yaml

    from kdci_ray.cli import main
    from kdci_ray.train.kdci_setup import dictionary_store

    def built_and_reused(out: str) -> tuple[dict[str, str], list[str]]:
        """The dictionaries this command reported (key -> built / reused) and their order."""
        rows = re.findall(r"dictionary (\w+): .*?, (built|reused) in ", out)
        return dict(rows), [key for key, _ in rows]

    config = tmp_path / "dict.yaml"
    config.write_text(yaml.safe_dump({**tiny_settings, "method": "dfnd", "kdci.enabled": True,
                                      "pool.seed": 1234,
                                      "search": {"kdci.k": [4, 6], "seed": [0, 1]}}))
    assert main(["dictionary", str(config)]) == 0
    first, keys = built_and_reused(capsys.readouterr().out)
    assert len(keys) == 2  # one per K, not per seed
    # the test owns what it reads: only the entries this command named, never whatever else the
    # shared store holds (another test's dictionaries, listed in any order)
    entries = {e["key"]: e for e in dictionary_store().entries() if e["key"] in first}
    assert set(entries) == set(keys)
    assert sorted(entries[k]["k"] for k in keys) == [4, 6]
    for key in keys:
        meta = entries[key]
        assert meta["num_samples"] == 64 and meta["backend"] == "sklearn"
        assert meta["spec"]["source"] == "teacher" and len(meta["spec"]["model_key"]) == 16
        assert meta["spec"]["data_key"]
    # a pool seed no other test uses: this command built both, the next one reuses both
    assert set(first.values()) == {"built"}
    assert main(["dictionary", str(config)]) == 0
    second, again = built_and_reused(capsys.readouterr().out)
    assert again == keys and set(second.values()) == {"reused"}
    # a sweep of generation-based methods has no build-once dictionary: one clear error
    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump({**tiny_settings, "method": "dafl"}))
    assert main(["dictionary", str(gen)]) == 2
    assert "no grid point uses a sampling-based method" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sweeps and plots


@pytest.mark.parametrize(("name", "trials", "varying"), [
    ("ablation_prior", 12, {"kdci.enabled", "kdci.random_lambda", "kdci.random_z",
                            "kdci.without_p", "kdci.uniform_p", "seed"}),
    ("dictionary_source", 6, {"kdci.source", "kdci.source_arch", "seed"}),
    ("dictionary_size", 4, {"kdci.k"}),
])
def test_ablation_sweeps_plan_and_vary_only_their_axis(repo_root, name, trials, varying) -> None:
    from kdci_ray.engine import plan_sweep
    from kdci_ray.experiments.dfkd import to_flat

    path = repo_root / "tune_configs" / f"{name}.yaml"
    assert path.read_text().startswith(f"# kdci-ray sweep tune_configs/{name}.yaml")
    plan = plan_sweep(path)
    assert len(plan.configs) == trials
    flats = [to_flat(c) for c in plan.configs]
    changed = {k for k in flats[0] if len({repr(f[k]) for f in flats}) > 1}
    assert changed == varying
    assert all(c.method == "dfnd" and c.pool.transform == "edges" for c in plan.configs)
    smoke = plan_sweep(path, smoke=True)
    assert all(c.train.rounds == 2 and c.kdci.k == 4 for c in smoke.configs)


def test_write_plots_draws_numeric_axes_with_three_or_more_values(tmp_path) -> None:
    import pandas as pd
    from PIL import Image

    from kdci_ray.results.plots import write_plots

    rows = pd.DataFrame({
        "trial": [f"t{i}" for i in range(8)], "kdci.k": [8, 8, 32, 32, 128, 128, 512, 512],
        "seed": [0, 1] * 4, "method": ["dfnd"] * 8, "kdci": [True] * 8,
        "acc": [0.90, 0.91, 0.92, 0.90, 0.93, 0.92, 0.91, 0.90], "acc_kdci": [0.9] * 8,
        "teacher_acc": [0.99] * 8, "rounds_done": [25] * 8, "finished": [True] * 8,
        "checkpoint": [""] * 8,
    })
    paths = write_plots(rows, tmp_path)
    assert [p.name for p in paths] == ["acc_vs_kdci.k.png"]  # seed has only 2 values
    with Image.open(paths[0]) as img:
        assert img.format == "PNG" and img.size[0] > 300
    assert write_plots(rows.drop(columns=["kdci.k"]), tmp_path / "none") == []


def test_observed_features_reuse_the_kd_steps_teacher_logits(tiny_settings) -> None:
    settings = {**tiny_settings, "method": "dafl", "kdci.enabled": True, "train.rounds": 3,
                "train.kd_steps": 3, "train.batch_size": 8, "dafl.batch_size": 16}
    samples = {}
    for mode in ("source", "observed"):
        c = Collect()
        distill(resolve(settings, {"kdci.features": mode}), c)
        samples[mode] = [m["kdci/samples"] for _, m in c.history]
    assert samples["source"] == [16.0, 16.0, 16.0]  # the synthetic batch, scored again
    # round 0 has no KD steps yet; later rounds cluster the 3 x 8 logits the KD steps computed
    assert samples["observed"] == [16.0, 24.0, 24.0]


def test_build_once_methods_keep_no_observed_logits(tiny_settings, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(KDCI, "observe", lambda self, logits: calls.append(len(logits)))
    settings = {**tiny_settings, "method": "dfnd", "kdci.enabled": True,
                "kdci.features": "observed"}
    distill(resolve(settings), Collect())
    assert calls == []  # the dictionary is built once: nothing would ever consume them


def test_observed_features_are_the_default_and_need_k_outputs_per_round(tiny_settings) -> None:
    settings = {**tiny_settings, "method": "dafl", "kdci.enabled": True}
    assert resolve(settings).kdci.features == "observed"
    small = {"train.kd_steps": 1, "train.batch_size": 4, "kdci.k": 8, "dafl.batch_size": 16}
    with pytest.raises(ConfigError, match=r"K=8 is larger than the 4 teacher outputs of one "
                                          r"round's KD steps.*kdci.features=source"):
        resolve(settings, small)
    # scoring the 16-image synthetic batch instead is fine, and so is a build-once method
    assert resolve(settings, small, {"kdci.features": "source"}).kdci.k == 8
    assert resolve({**settings, "method": "dfnd"}, small).kdci.k == 8
