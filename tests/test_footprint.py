"""The generator-footprint test and footprint_discounted: known answers on a tiny linear model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedattr.defenses import DETECTORS, RoundUpdates, make_detector, register_scoring_rules, validate_detector
from fedattr.defenses import footprint
from fedattr.defenses.footprint import FootprintData, class_gradients, footprint_statistics
from fedattr.evaluators import ModelUtility, RoundGame, TabularGame, make_evaluator
from fedattr.evaluators.layout import StateLayout

register_scoring_rules()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def _images(pattern: list[int], label: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` 1x4x4 images lit on the pixels of ``pattern`` (plus a little noise), labelled ``label``."""
    g = torch.Generator().manual_seed(seed)
    x = 0.05 * torch.rand(count, 1, 4, 4, generator=g)
    x.view(count, -1)[:, pattern] += 1.0
    return x, torch.full((count,), label, dtype=torch.long)


# Real images of class 0 light the top row, the "generator's" class-0 images the left column; the
# other classes are real only.
REAL = [_images([0, 1, 2, 3], 0, 12, 1), _images([5, 6, 9, 10], 1, 12, 2), _images([12, 13, 14, 15], 2, 12, 3)]
GEN = [_images([0, 4, 8, 12], 0, 12, 4), _images([5, 6, 9, 10], 1, 12, 5), _images([12, 13, 14, 15], 2, 12, 6)]
X_REAL, Y_REAL = torch.cat([r[0] for r in REAL]), torch.cat([r[1] for r in REAL])
X_GEN, Y_GEN = torch.cat([r[0] for r in GEN]), torch.cat([r[1] for r in GEN])


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 0.1) -> torch.Tensor:
    """The flat update of one SGD step of ``model`` on ``(x, y)``."""
    m = copy.deepcopy(model)
    layout = StateLayout.from_module(m)
    before = layout.flatten(m.state_dict())
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    with torch.no_grad():
        for p in m.parameters():
            p -= lr * p.grad
    return layout.flatten(m.state_dict()) - before


def _detector(**params):
    model = _model()
    det = make_detector("footprint", **params).bind_samples(model, (X_GEN, Y_GEN), (X_REAL, Y_REAL))
    return det, model


def _updates(model):
    gen0 = _step(model, *GEN[0])        # exactly a step on the generator's class-0 samples
    real0 = _step(model, *REAL[0])      # a step on real images of the same class
    real12 = _step(model, torch.cat([REAL[1][0], REAL[2][0]]), torch.cat([REAL[1][1], REAL[2][1]]))
    return torch.stack([gen0, real0, real12])


def test_statistics_of_single_steps_are_the_closed_form():
    g = torch.Generator().manual_seed(0)
    gg, gr = torch.randn(2, 50, generator=g, dtype=torch.float64)
    rho = float(gg @ gr / (gg.norm() * gr.norm()))
    st = footprint_statistics(torch.stack([-0.3 * gg, -2.0 * gr]), gg[None], gr[None])
    s = 1 - rho
    np.testing.assert_allclose(st["score"][:, 0], [s, -s], rtol=1e-10)
    np.testing.assert_allclose(st["a_gen"][:, 0], [1.0, rho], rtol=1e-10)
    np.testing.assert_allclose(st["a_real"][:, 0], [rho, 1.0], rtol=1e-10)


def test_class_gradients_are_the_per_class_loss_gradients_in_the_layout():
    model = _model()
    layout = StateLayout.from_module(model)
    base = layout.flatten(model.state_dict())
    grads = class_gradients(model, layout, base, X_REAL, Y_REAL, [0, 2, 7])
    m = copy.deepcopy(model)
    F.cross_entropy(m(REAL[2][0]), REAL[2][1]).backward()
    np.testing.assert_allclose(grads[1].numpy(), torch.cat([m[1].weight.grad.flatten(), m[1].bias.grad]).numpy(), rtol=1e-6)
    assert grads.shape == (3, layout.size) and not grads[2].any()  # class 7 has no example


def test_a_step_on_generator_samples_is_flagged_and_a_step_on_real_images_is_not():
    det, model = _detector()
    layout = StateLayout.from_module(model)
    res = det.observe(RoundUpdates(2, [4, 5, 6], _updates(model), np.ones(3), layout.flatten(model.state_dict())))
    assert res.flags.tolist() == [True, False, False]
    assert det.class_flags_[0].tolist() == [True, False, False]  # flagged on class 0 only
    assert res.info["flagged_classes"] == {"4": [0], "5": [], "6": []}
    st = det.statistics_
    assert st["score"][0, 0] > 0.1 and st["score"][1, 0] < -0.1  # the closed form: +-(1 - rho)
    assert res.suspicious_high and res.ranks()[0] == 1


def test_min_alignment_and_threshold_decide_who_is_judged():
    det, model = _detector(threshold=0.99)
    layout = StateLayout.from_module(model)
    res = det.observe(RoundUpdates(1, [0, 1, 2], _updates(model), np.ones(3), layout.flatten(model.state_dict())))
    assert not res.flags.any()
    det, model = _detector(min_alignment=1.0)  # a cosine above 1 is impossible: nobody is judged on any class
    res = det.observe(RoundUpdates(1, [0, 1, 2], _updates(model), np.ones(3), layout.flatten(model.state_dict())))
    assert not res.flags.any() and np.isnan(res.scores).all()


@pytest.mark.parametrize("params, msg", [({"threshold": 1.5}, "threshold"), ({"per_class": 0}, "per_class"),
                                         ({"min_alignment": "x"}, "min_alignment"), ({"steps": -1}, "steps"),
                                         ({"max_real_per_class": 0}, "max_real_per_class")])
def test_bad_parameters_are_one_message(params, msg):
    with pytest.raises(ValueError, match=f"footprint.*{msg}"):
        validate_detector("footprint", params, 6)


def test_unbound_detector_and_bad_shapes_are_clear_errors():
    det = make_detector("footprint")
    with pytest.raises(ValueError, match="needs the server's data"):
        det.observe(RoundUpdates(1, [0], torch.zeros(1, 51), np.ones(1), torch.zeros(51)))
    with pytest.raises(ValueError, match=r"real images must be \[N, C, H, W\]"):
        det.bind_samples(_model(), (X_GEN, Y_GEN), (X_REAL.flatten(1), Y_REAL))
    with pytest.raises(ValueError, match="generator labels"):
        det.bind_samples(_model(), (X_GEN, Y_GEN[:3]), (X_REAL, Y_REAL))
    det, model = _detector()
    with pytest.raises(ValueError, match="updates have 7 entries, the model 51"):
        det.observe(RoundUpdates(1, [0], torch.zeros(1, 7), np.ones(1), torch.zeros(7)))
    with pytest.raises(ValueError, match="class gradients"):
        footprint_statistics(torch.zeros(2, 5), torch.zeros(1, 5), torch.zeros(1, 4))
    assert "footprint" in DETECTORS
    with pytest.raises(ValueError, match="needs the public auxiliary split"):
        make_detector("footprint").bind(FootprintData(_model(), X_REAL, Y_REAL, X_REAL[:0], Y_REAL[:0]))


# -- the scoring rule ---------------------------------------------------------------------------------


def _round_game(model):
    layout = StateLayout.from_module(model)
    utility = ModelUtility(model, X_REAL, Y_REAL, metric="accuracy", engine="naive")
    game = RoundGame(utility, layout.flatten(model.state_dict()), _updates(model), weights=[12, 12, 24], players=[4, 5, 6])
    game.public_data = (X_GEN, Y_GEN)
    return game


@pytest.fixture
def fixed_samples(monkeypatch):
    # The server's generator samples are the constructed ones (no VAE is trained in the test).
    monkeypatch.setattr(footprint, "generator_samples", lambda model, x, y, **kw: (X_GEN, Y_GEN))


def test_scoring_rule_removes_the_flagged_clients_value_and_keeps_the_others(fixed_samples):
    model = _model()
    plain = make_evaluator("shapley").fit(_round_game(model)).values_
    ev = make_evaluator("footprint_discounted").fit(_round_game(model), seed=0)
    assert ev.applied_ and ev.flags_.tolist() == [True, False, False]
    np.testing.assert_allclose(ev.raw_values_, plain)
    np.testing.assert_allclose(ev.values_, [0.0, plain[1], plain[2]])
    half = make_evaluator("footprint_discounted", discount=0.5).fit(_round_game(model), seed=0)
    np.testing.assert_allclose(half.values_, [0.5 * plain[0], plain[1], plain[2]])


def test_class_scope_removes_exactly_the_flagged_classes_share(fixed_samples):
    model = _model()
    plain = make_evaluator("shapley").fit(_round_game(model)).values_
    ev = make_evaluator("footprint_discounted", scope="class").fit(game := _round_game(model), seed=0)
    per_class = ev.class_values(game, game.utility, [0, 1, 2], seed=0)
    # accuracy = sum_c (n_c / N) recall_c and Shapley is linear: the class values sum to the plain ones
    np.testing.assert_allclose(per_class.sum(1), plain, atol=1e-12)
    np.testing.assert_allclose(ev.values_, [plain[0] - per_class[0, 0], plain[1], plain[2]], atol=1e-12)


def test_class_values_read_the_round_games_class_counts(fixed_samples):
    model = _model()
    game = _round_game(model)
    assert game.has_class_counts
    make_evaluator("shapley").fit(game)
    ev = make_evaluator("footprint_discounted", scope="class")
    evaluated = game.cache.n_evaluations
    shared = ev.class_values(game, game.utility, [0, 1, 2], seed=0)
    # every coalition was evaluated by Shapley: the per-class games cost no model evaluation
    assert ev.n_class_evaluations_ == 0 and game.cache.n_evaluations == evaluated
    # the same values as per-class games evaluated on their own (a neg_ce game keeps no counts,
    # so build the reference from a game whose counts are switched off)
    fresh = _round_game(model)
    fresh._class_memo = None
    reference = ev.class_values(fresh, fresh.utility, [0, 1, 2], seed=0)
    assert ev.n_class_evaluations_ == 8
    np.testing.assert_allclose(shared, reference, atol=1e-12)


def test_scoring_rule_without_server_data_is_the_base_evaluator():
    ev = make_evaluator("footprint_discounted").fit(TabularGame([0.0, 1.0, 2.0, 4.0]), seed=0)
    assert not ev.applied_
    np.testing.assert_allclose(ev.values_, make_evaluator("shapley").fit(TabularGame([0.0, 1.0, 2.0, 4.0])).values_)


@pytest.mark.parametrize("params, msg", [({"scope": "pixel"}, "scope"), ({"discount": 1.5}, "discount"),
                                         ({"detector_params": {"threshold": 3}}, "threshold"),
                                         ({"detector_params": {"colour": 1}}, "detector_params")])
def test_scoring_rule_bad_parameters_are_one_message(params, msg):
    with pytest.raises(ValueError, match=msg):
        make_evaluator("footprint_discounted", **params).fit(TabularGame([0.0, 1.0, 2.0, 4.0]), seed=0)


def test_bind_trains_the_public_generator_once_per_process(monkeypatch):
    calls = []
    real = footprint.generator_samples

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(footprint, "generator_samples", counting)
    monkeypatch.setattr(footprint, "_SAMPLES", {})
    data = FootprintData(_model(), X_REAL, Y_REAL, X_REAL.clamp(0.0, 1.0), Y_REAL)  # VAE images lie in [0, 1]
    params = dict(per_class=2, generator_epochs=1, teacher_epochs=1, steps=1, candidates=2)
    det = make_detector("footprint", **params).bind(data)
    x, y = det._gen
    assert x.shape == (6, 1, 4, 4) and y.tolist() == [0, 0, 1, 1, 2, 2] and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    again = make_detector("footprint", **params).bind(data)
    assert torch.equal(again._gen[0], x) and len(footprint._SAMPLES) == 1 and len(calls) == 2


def test_footprint_class_is_the_class_scope(fixed_samples):
    model = _model()
    a = make_evaluator("footprint_class").fit(_round_game(model), seed=0)
    b = make_evaluator("footprint_discounted", scope="class").fit(_round_game(model), seed=0)
    assert a.scope == "class"
    np.testing.assert_array_equal(a.values_, b.values_)
