"""Tests of fedattr.attacks: generator cache, coverage, latent/pixel optimisation, every registry attack."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from fedattr.attacks import (
    ATTACKS, AttackContext, InferredCoverage, LatentOptimiser, OracleCoverage, PixelOptimiser, TeacherTrainer,
    attack_params, load_generator, make_attack, run_attacker_round, train_generator,
)
from fedattr.attacks._util import flat_update
from fedattr.learning.data import load_splits
from fedattr.core.errors import UserError
from fedattr.learning.models import build_model
from fedattr.learning.training import train_local

UNSEEN = [7, 8, 9]  # classes the "benign federation" of these tests never trains on
TRAIN = {"epochs": 1, "batch_size": 32, "lr": 0.05}
# Small but real settings for the synthetic attacks, so the whole file stays fast on 2 CPU cores.
FAST_LATENT = {"generator_epochs": 20, "teacher_epochs": 4, "steps": 8, "candidates": 4}  # VAE = the fixture's
FAST_PIXEL = {"teacher_epochs": 4, "steps": 10}


class TinyBN(nn.Module):
    """A two-conv BatchNorm net for 28x28 grey images (stands in for VGG/WRN, at a fraction of the cost)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.25)


@pytest.fixture(scope="module")
def splits():
    return load_splits("mnist5k", None, 1000, 1000, 500)


@pytest.fixture(scope="module")
def local(splits):
    """The attacker's partition: 120 pool images of classes 0-6 (it lacks the unseen classes too)."""
    keep = (splits.y_pool < 7).nonzero().flatten()[:120]
    return splits.x_pool[keep], splits.y_pool[keep]


@pytest.fixture(scope="module")
def global_model(splits):
    """A SmallCNN trained one epoch on 800 pool images of classes 0-6 only."""
    torch.manual_seed(0)
    model = build_model("cnn", 10, 1, 28)
    keep = (splits.y_pool < 7).nonzero().flatten()[200:1000]
    train_local(model, splits.x_pool[keep], splits.y_pool[keep], epochs=1, lr=0.05, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def bn_model(splits):
    torch.manual_seed(0)
    model = TinyBN()
    keep = (splits.y_pool < 7).nonzero().flatten()[200:600]
    train_local(model, splits.x_pool[keep], splits.y_pool[keep], epochs=1, lr=0.05, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("attack_cache")


@pytest.fixture(scope="module")
def vae(splits, cache_dir):
    model, info = train_generator(splits.x_aux, channels=1, side=28, epochs=20, seed=0, cache_dir=cache_dir)
    return model, info


@pytest.fixture(scope="module")
def teacher(splits, local, global_model, cache_dir):
    x = torch.cat([local[0], splits.x_aux])
    y = torch.cat([local[1], splits.y_aux])
    model, _ = TeacherTrainer(epochs=10).train(global_model, x, y, seed=0, cache_dir=cache_dir)
    return model


def benign_histograms() -> dict[int, list[int]]:
    return {0: [30, 20, 10, 0, 5, 5, 40, 0, 0, 0], 1: [0, 10, 30, 25, 20, 15, 3, 0, 0, 0]}


def make_ctx(model, local, splits, *, state=None, server_round=3, seed=11, cache_dir=None, **kw) -> AttackContext:
    return AttackContext(
        global_model=model, x_local=local[0], y_local=local[1], x_aux=splits.x_aux, y_aux=splits.y_aux,
        num_classes=10, channels=1, side=28, server_round=server_round, seed=seed, train=dict(TRAIN),
        benign_histograms=benign_histograms(), cache_dir=cache_dir, state={} if state is None else state,
        run_seed=0, **kw,
    )


def is_aux_row(x: torch.Tensor, aux: torch.Tensor) -> bool:
    return bool((aux.flatten(1) == x.flatten()).all(1).any())


# --- generator ---------------------------------------------------------------------------------

def test_vae_trains_and_round_trips_through_the_cache(splits, vae, cache_dir):
    model, info = vae
    assert not info["cached"] and info["recon_losses"][-1] < 0.8 * info["recon_losses"][0]
    again, info2 = train_generator(splits.x_aux, channels=1, side=28, epochs=20, seed=0, cache_dir=cache_dir)
    assert info2["cached"] and info2["key"] == info["key"] and info2["path"] == info["path"]
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    with torch.no_grad():
        out = again.decode(torch.randn(3, model.latent_dim))
    assert out.shape == (3, 1, 28, 28) and 0 <= float(out.min()) and float(out.max()) <= 1
    # Other data -> another key -> a miss; a stored key that mismatches the request -> UserError.
    other = train_generator(splits.x_aux[:64], channels=1, side=28, epochs=1, seed=0, cache_dir=cache_dir)[1]
    assert not other["cached"] and other["key"] != info["key"]
    with pytest.raises(UserError, match="not the requested"):
        load_generator(info["path"], other["key"])
    bad = cache_dir / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable"):
        load_generator(bad)
    with pytest.raises(UserError):
        train_generator(splits.x_aux, channels=3, side=32)
    colour, cinfo = train_generator(torch.rand(16, 3, 32, 32), channels=3, side=32, epochs=1)
    assert colour.latent_dim == 64 and cinfo["path"] is None
    with torch.no_grad():
        assert colour.decode(torch.randn(2, 64)).shape == (2, 3, 32, 32)


# --- coverage ----------------------------------------------------------------------------------

def test_oracle_coverage_picks_the_classes_absent_from_benign_histograms(local):
    cov = OracleCoverage(k=3).estimate(benign_histograms(), 10, local[1])
    assert cov.targets == UNSEEN and cov.upper_bound and cov.method == "oracle"
    assert cov.info["absent"] == UNSEEN and "upper bound" in cov.info["note"]
    assert "UPPER BOUND" in OracleCoverage.__doc__.upper()
    with pytest.raises(UserError):
        OracleCoverage().estimate(None, 10)


def test_inferred_coverage_ranks_unseen_classes_as_under_covered(splits, local, global_model):
    before = copy.deepcopy(global_model.state_dict())
    cov = InferredCoverage(k=3).estimate(global_model, splits.x_aux, splits.y_aux, local[1], 10)
    assert sorted(cov.targets) == UNSEEN and not cov.upper_bound and cov.method == "inferred"
    seen = [cov.info["confidence"][c] for c in range(7)]
    assert max(cov.info["confidence"][c] for c in UNSEEN) < min(seen)
    for k, v in global_model.state_dict().items():
        assert torch.equal(v, before[k])


# --- latent and pixel optimisation --------------------------------------------------------------

def test_latent_optimisation_raises_the_teacher_target_probability(splits, vae, teacher, global_model):
    labels = torch.tensor(UNSEEN * 6)
    opt = LatentOptimiser(steps=25, candidates=1)
    run = lambda: opt.optimise(vae[0].decode, vae[0].latent_dim, teacher, global_model, labels,
                               splits.x_aux[:200], splits.y_aux[:200], seed=5)
    batch = run()
    d = batch.diagnostics
    assert batch.x.shape == (18, 1, 28, 28) and torch.equal(batch.y, labels)
    assert d["teacher_prob_after"] > d["teacher_prob_before"] + 0.1
    assert -1 <= d["alignment_after"] <= 1
    assert torch.equal(run().x, batch.x)  # same seed, same images


def test_pixel_optimisation_raises_probability_and_uses_bn_stats(splits, teacher, global_model, bn_model):
    labels = torch.tensor(UNSEEN * 4)
    d = PixelOptimiser(steps=30).optimise(teacher, global_model, labels, splits.x_aux[:200], splits.y_aux[:200],
                                          channels=1, side=28, seed=3).diagnostics
    assert d["teacher_prob_after"] > d["teacher_prob_before"] + 0.3
    assert d["bn_layers"] == 0 and d["bn_loss_after"] != d["bn_loss_after"]  # NaN: no BatchNorm to match
    out = PixelOptimiser(steps=30).optimise(bn_model, bn_model, labels, splits.x_aux[:200], splits.y_aux[:200],
                                            channels=1, side=28, seed=3)
    d = out.diagnostics
    assert d["bn_layers"] == 2 and d["bn_loss_after"] < d["bn_loss_before"]
    assert d["teacher_prob_after"] > d["teacher_prob_before"]
    assert 0 <= float(out.x.min()) and float(out.x.max()) <= 1


# --- registry ----------------------------------------------------------------------------------

def test_registry_names_and_errors():
    assert set(ATTACKS) == {"honest", "noise_floor", "latent", "pixel", "random_real", "targeted_real", "scaling",
                            "duplication", "free_rider", "label_flip", "overreport", "latent_mixed"}
    assert attack_params("scaling") == {"factor": 3.0}
    assert attack_params("latent")["synthetic_fraction"] == 0.25
    with pytest.raises(UserError, match="choose one of"):
        make_attack("nope")
    with pytest.raises(UserError, match="allowed"):
        make_attack("scaling", factr=2)
    with pytest.raises(UserError):
        make_attack("free_rider", mode="loud")
    with pytest.raises(UserError):
        make_attack("latent", match_norm="yes")
    with pytest.raises(UserError):
        make_attack("duplication", copies=True)


def test_package_does_not_import_flwr():
    code = "import sys, fedattr.attacks; sys.exit(1 if any(m.startswith('flwr') for m in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- baselines through the driver ----------------------------------------------------------------

def delta(w_t, w):
    return {k: w[k] - w_t[k] for k in w_t if w_t[k].is_floating_point()}


def test_honest_equals_counterfactual_and_noise_floor_differs(splits, local, global_model):
    before = copy.deepcopy(global_model.state_dict())
    r = run_attacker_round(make_attack("honest"), make_ctx(global_model, local, splits))
    assert r.active and r.num_examples == 120
    for k in r.state_dict:
        assert torch.equal(r.state_dict[k], r.honest_state_dict[k])
    n = run_attacker_round(make_attack("noise_floor"), make_ctx(global_model, local, splits))
    assert [(k, v.shape, v.dtype) for k, v in n.state_dict.items()] == [
        (k, v.shape, v.dtype) for k, v in r.state_dict.items()]
    assert not torch.equal(flat_update(before, n.state_dict), flat_update(before, r.state_dict))
    for k in n.honest_state_dict:  # its counterfactual is still the benign-seed run
        assert torch.equal(n.honest_state_dict[k], r.honest_state_dict[k])
    for k, v in global_model.state_dict().items():  # the global model is never mutated
        assert torch.equal(v, before[k])


def test_before_start_round_the_attacker_is_honest(splits, local, global_model):
    r = run_attacker_round(make_attack("scaling"), make_ctx(global_model, local, splits, server_round=2), start_round=3)
    assert not r.active
    for k in r.state_dict:
        assert torch.equal(r.state_dict[k], r.honest_state_dict[k])
    assert run_attacker_round(make_attack("honest"), make_ctx(global_model, local, splits),
                              counterfactual=False).honest_state_dict is None


def test_update_and_count_baselines(splits, local, global_model):
    w_t = global_model.state_dict()
    r = run_attacker_round(make_attack("scaling", factor=3.0), make_ctx(global_model, local, splits))
    honest, sent = delta(w_t, r.honest_state_dict), delta(w_t, r.state_dict)
    for k in honest:
        assert torch.allclose(sent[k], 3.0 * honest[k], atol=1e-6, rtol=1e-5)
    assert r.metrics["update_norm"] == pytest.approx(3 * r.metrics["honest_update_norm"], rel=1e-5)

    r = run_attacker_round(make_attack("free_rider"), make_ctx(global_model, local, splits))
    for k in w_t:
        assert torch.equal(r.state_dict[k], w_t[k])
    noisy = [run_attacker_round(make_attack("free_rider", mode="noise", noise_std=0.01),
                                make_ctx(global_model, local, splits)).state_dict for _ in range(2)]
    assert r.metrics["update_norm"] == 0
    assert all(torch.equal(noisy[0][k], noisy[1][k]) for k in w_t)  # seeded
    assert not torch.equal(noisy[0]["classifier.3.bias"], w_t["classifier.3.bias"])

    assert run_attacker_round(make_attack("overreport", factor=5), make_ctx(global_model, local, splits)).num_examples == 600

    r = run_attacker_round(make_attack("duplication", copies=2), make_ctx(global_model, local, splits))
    assert r.num_examples == 240 and r.metrics["train_count"] == 240


def test_label_flip_changes_labels(splits, local):
    ctx = make_ctx(None, local, splits)
    x, y = make_attack("label_flip").training_data(ctx, *local)
    assert x is local[0] and torch.equal(y, (local[1] + 1) % 10) and ctx.metrics["flipped_fraction"] == 1.0
    _, y = make_attack("label_flip", mapping={"3": 5}).training_data(ctx, *local)
    assert torch.equal(y[local[1] == 3], torch.full_like(y[local[1] == 3], 5))
    assert torch.equal(y[local[1] != 3], local[1][local[1] != 3])
    with pytest.raises(UserError):
        make_attack("label_flip", mapping={"3": 12}).training_data(ctx, *local)


@pytest.mark.parametrize("name", ["random_real", "targeted_real"])
def test_real_injection_adds_the_stated_count_of_aux_images(name, splits, local, global_model):
    params = {"coverage": "oracle"} if name == "targeted_real" else {}
    attack = make_attack(name, synthetic_fraction=0.25, **params)
    ctx = make_ctx(global_model, local, splits)
    x, y = attack.training_data(ctx, *local)
    assert x is local[0] and y is local[1]  # the real data is untouched: the extras ride along
    extra_x, extra_y = attack.extra_data(ctx)
    assert len(extra_y) == 30 and ctx.metrics["synthetic_count"] == 30
    targets = ctx.info["target_classes"]
    assert len(targets) == 3 and set(extra_y.tolist()) == set(targets)
    assert torch.bincount(extra_y, minlength=10)[targets].tolist() == [10, 10, 10]
    assert all(is_aux_row(extra_x[i], splits.x_aux) for i in range(0, 30, 7))
    if name == "targeted_real":
        assert targets == UNSEEN
    r = run_attacker_round(attack, make_ctx(global_model, local, splits))
    assert r.num_examples == 120 and r.metrics["train_count"] == 150
    # Same real minibatches, same number of steps as the honest counterfactual.
    assert r.metrics["train_steps"] == r.metrics["honest_train_steps"] == 4


# --- the synthetic attacks -------------------------------------------------------------------------

def test_latent_attack_round_is_deterministic_and_targets_unseen_classes(splits, local, global_model, cache_dir):
    runs = [run_attacker_round(make_attack("latent", **FAST_LATENT), make_ctx(global_model, local, splits,
                                                                              cache_dir=cache_dir))
            for _ in range(2)]
    a, b = runs
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k])
    assert b.metrics["generator_cached"] == 1.0 and b.metrics["teacher_cached"] == 1.0
    assert sorted(a.info["target_classes"]) == UNSEEN and a.info["coverage_method"] == "inferred"
    assert a.metrics["synthetic_count"] == 30 and a.num_examples == 120
    assert a.metrics["teacher_prob_after"] >= a.metrics["teacher_prob_before"]
    assert not torch.equal(flat_update(global_model.state_dict(), a.state_dict),
                           flat_update(global_model.state_dict(), a.honest_state_dict))


def test_generator_seed_shares_one_public_generator_across_run_seeds(splits, local, global_model, tmp_path):
    def generator_state(run_seed, generator_seed):
        attack = make_attack("latent", **{**FAST_LATENT, "generator_epochs": 2, "generator_seed": generator_seed})
        ctx = make_ctx(global_model, local, splits, cache_dir=tmp_path / f"g{generator_seed}")
        ctx.run_seed = run_seed
        vae = attack.generator(ctx)
        return {k: v.clone() for k, v in vae.state_dict().items()}, ctx.metrics["generator_cached"]

    first, cached = generator_state(1, 0)
    second, cached_again = generator_state(2, 0)
    assert cached == 0.0 and cached_again == 1.0  # the second run seed loads the first one's file
    assert all(torch.equal(first[k], second[k]) for k in first)
    per_seed = [generator_state(s, -1)[0] for s in (1, 2)]
    assert any(not torch.equal(per_seed[0][k], per_seed[1][k]) for k in per_seed[0])
    with pytest.raises(UserError, match="generator_seed"):
        make_attack("latent", generator_seed=-2).validate()


def test_zero_fraction_injects_nothing_and_equals_honest(splits, local, global_model):
    r = run_attacker_round(make_attack("latent", synthetic_fraction=0.0), make_ctx(global_model, local, splits))
    assert r.metrics["synthetic_count"] == 0 and "generator_cached" not in r.metrics
    for k in r.state_dict:
        assert torch.equal(r.state_dict[k], r.honest_state_dict[k])


def test_refresh_every_reuses_the_batch(splits, local, global_model, cache_dir):
    attack = make_attack("latent", refresh_every=2, coverage="oracle", count_synthetic=True, **FAST_LATENT)
    state: dict = {}
    r1 = run_attacker_round(attack, make_ctx(global_model, local, splits, state=state, server_round=3, cache_dir=cache_dir))
    r2 = run_attacker_round(attack, make_ctx(global_model, local, splits, state=state, server_round=4, cache_dir=cache_dir))
    r3 = run_attacker_round(attack, make_ctx(global_model, local, splits, state=state, server_round=5, cache_dir=cache_dir))
    assert [r.metrics["synthetic_refreshed"] for r in (r1, r2, r3)] == [1.0, 0.0, 1.0]
    assert r1.num_examples == 150 and r1.metrics["coverage_is_oracle"] == 1.0


def test_every_attack_keeps_the_benign_reply_shape_and_match_norm_matches(splits, local, bn_model, cache_dir):
    """On a BatchNorm model, so integer buffers (num_batches_tracked) are part of the reply."""
    w_t = bn_model.state_dict()
    assert any(not v.is_floating_point() for v in w_t.values())
    shape = [(k, v.shape, v.dtype) for k, v in w_t.items()]
    fast = {"latent": {**FAST_LATENT, "match_norm": True}, "pixel": {**FAST_PIXEL, "match_norm": True},
            "free_rider": {"mode": "noise"}, "targeted_real": {"match_norm": True}}
    for name in ATTACKS:
        r = run_attacker_round(make_attack(name, **fast.get(name, {})),
                               make_ctx(bn_model, local, splits, cache_dir=cache_dir))
        assert [(k, v.shape, v.dtype) for k, v in r.state_dict.items()] == shape, name
        assert all(bool(torch.isfinite(v).all()) for v in r.state_dict.values() if v.is_floating_point()), name
        assert all(float(v.min()) > 0 for k, v in r.state_dict.items() if k.endswith("running_var")), name
        if name in ("latent", "pixel", "targeted_real"):
            assert r.metrics["update_norm"] == pytest.approx(r.metrics["honest_update_norm"], rel=1e-6), name
            for k, v in r.state_dict.items():
                if not v.is_floating_point():
                    assert torch.equal(v, r.honest_state_dict[k]), name
        if name == "pixel":
            assert r.metrics["bn_layers"] == 2


# --- coverage truth and the target policy ------------------------------------------------------------

def test_target_truth_scores_targets_against_the_lacking_classes():
    from fedattr.attacks.truth import class_bits, target_truth

    t = target_truth([9, 7, 8], benign_histograms(), 10, scores=[0.9] * 7 + [0.1, 0.2, 0.0])
    assert t["benign_lacking_bits"] == class_bits(UNSEEN) == 2 ** 7 + 2 ** 8 + 2 ** 9
    assert t["benign_lacking_count"] == 3
    assert t["target_precision"] == t["target_recall"] == t["target_oracle_overlap"] == t["coverage_auc"] == 1.0
    assert t["target_bits"] == class_bits(UNSEEN)
    # Benign totals: 30 30 40 25 25 20 43 0 0 0; the two fewest are 7 and 8.
    t = target_truth([3, 8], benign_histograms(), 10, scores=[0.0] + [0.5] * 9)
    assert t["target_precision"] == 0.5 and t["target_recall"] == pytest.approx(1 / 3)
    assert t["target_oracle_overlap"] == 0.5
    # Lacking 7-9 score 0.5: below none of the 7 covered classes, tied with 6 of them: (18 * 0.5) / 21.
    assert t["coverage_auc"] == pytest.approx(3 / 7)
    assert target_truth([1], None, 10) == {}


def test_warmup_policy_sends_the_honest_update_then_injects(splits, local, global_model):
    attack = make_attack("targeted_real", target_policy="warmup", warmup_rounds=2)
    first = run_attacker_round(attack, make_ctx(global_model, local, splits, server_round=2))
    assert first.metrics["warming_up"] == 1.0 and first.metrics["synthetic_count"] == 0
    for k in first.state_dict:
        assert torch.equal(first.state_dict[k], first.honest_state_dict[k])
    later = run_attacker_round(attack, make_ctx(global_model, local, splits, server_round=3))
    assert later.metrics["warming_up"] == 0.0 and later.metrics["synthetic_count"] == 30
    assert later.metrics["target_precision"] == 1.0  # the model-inferred targets are the unseen classes


def test_local_data_policy_targets_what_the_attacker_lacks(splits, local):
    # An untrained model: its confidence says nothing, the attacker's own counts do.
    torch.manual_seed(3)
    fresh = build_model("cnn", 10, 1, 28).eval()
    attack = make_attack("targeted_real", target_policy="local_data", warmup_rounds=1)
    ctx = make_ctx(fresh, local, splits, server_round=1)
    attack.extra_data(ctx)
    assert ctx.info["target_classes"] == UNSEEN and ctx.info["coverage_method"] == "local_data"
    assert ctx.metrics["warming_up"] == 1.0 and ctx.metrics["target_recall"] == 1.0
    with pytest.raises(UserError):
        make_attack("targeted_real", target_policy="later")
