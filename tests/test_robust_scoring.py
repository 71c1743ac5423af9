"""Attribution-robust scoring: honest federations keep their values, a planted inflation shrinks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedattr.defenses import register_scoring_rules
from fedattr.defenses.robust_scoring import ShardedUtility, robust_upper_bounds, validation_groups
from fedattr.evaluators import EVALUATORS, ModelUtility, RoundGame, TabularGame, make_evaluator, masks_to_matrix
from fedattr.evaluators.layout import StateLayout
from fedattr.learning.training import train_local

# These small models run faster on one thread than on two contended ones (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

register_scoring_rules()

C, D = 4, 10
MEANS = torch.randn(C, D, generator=torch.Generator().manual_seed(0)) * 1.5


def _draw(counts, seed):
    ys = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)]).long()
    return MEANS[ys] + torch.randn(len(ys), D, generator=torch.Generator().manual_seed(seed)), ys


def _federation(covered_by_base):
    """A linear model after one epoch on ``covered_by_base`` and its balanced validation utility."""
    torch.manual_seed(0)
    model = nn.Linear(D, C)
    train_local(model, *_draw(covered_by_base, 1), epochs=1, lr=0.05, seed=0)
    layout = StateLayout.from_module(model)
    base = layout.flatten(model.state_dict())
    util = ModelUtility(model, *_draw([100] * C, 2))

    def update(counts, seed):
        m = nn.Linear(D, C)
        m.load_state_dict(model.state_dict())
        train_local(m, *_draw(counts, seed), epochs=2, lr=0.05, seed=seed)
        return layout.flatten(m.state_dict()) - base

    return util, base, update


@pytest.fixture(scope="module")
def honest_game():
    """Six clients with IID data over all four classes."""
    util, base, update = _federation([30] * C)
    return RoundGame(util, base, torch.stack([update([15] * C, 10 + i) for i in range(6)]))


@pytest.fixture(scope="module")
def planted_games():
    """Five benign clients that never see class 3; the last client sends an update trained on
    class 3 (attack) or the benign mix (honest): the same round with and without the gain only
    it can deliver."""
    util, base, update = _federation([30, 30, 30, 0])
    benign = [update([20, 20, 20, 0], 10 + i) for i in range(5)]
    attack = RoundGame(util, base, torch.stack(benign + [update([10, 10, 10, 30], 99)]))
    honest = RoundGame(util, base, torch.stack(benign + [update([20, 20, 20, 0], 99)]))
    return attack, honest


def _inflation(name, params, games):
    attack, honest = games
    return (make_evaluator(name, **params).fit(attack, seed=0).values_[-1]
            - make_evaluator(name, **params).fit(honest, seed=0).values_[-1])


MITIGATIONS = [
    ("clipped", {}, 0.10),
    ("mom", {"shards": 4}, 0.50),
    ("coverage_weighted", {}, 0.15),
    # robust z-scores of six near-identical norms flag at 3.5 (see test_defenses); 10 flags nobody here
    ("filtered", {"detector": "norm", "detector_params": {"threshold": 10.0}}, 0.0),
]


@pytest.mark.parametrize("name,params,tol", MITIGATIONS)
def test_honest_federation_keeps_its_values(honest_game, name, params, tol):
    plain = make_evaluator("shapley").fit(honest_game).values_
    ev = make_evaluator(name, **params).fit(honest_game, seed=0)
    assert ev.applied_
    # Within tol of the typical value, client by client (filtered: identical, nobody is flagged).
    assert np.abs(ev.values_ - plain).max() <= tol * np.abs(plain).mean() + 1e-12


@pytest.mark.parametrize("name,params", [
    ("clipped", {}), ("mom", {"shards": 4}), ("coverage_weighted", {}), ("filtered", {"detector": "cosine_median"}),
])
def test_planted_inflation_shrinks_by_half(planted_games, name, params):
    plain = _inflation("shapley", {}, planted_games)
    assert plain > 0.01  # the plant works: the sole supplier of class 3 gains value
    assert _inflation(name, params, planted_games) <= 0.5 * plain


def test_coverage_weights_zero_a_class_one_client_supplies(planted_games):
    attack, honest = planted_games
    ev = make_evaluator("coverage_weighted").fit(attack)
    assert ev.class_weights_[3] == pytest.approx(0.0, abs=0.05)
    assert np.all(ev.class_weights_[:3] > 0.5)


def test_filtered_zeroes_the_flagged_and_scores_the_rest_on_their_subgame(planted_games):
    attack, _ = planted_games
    ev = make_evaluator("filtered", detector="cosine_median").fit(attack, seed=0)
    assert ev.flags_.tolist() == [False] * 5 + [True] and ev.values_[-1] == 0.0
    assert ev.n_evaluations_ == 2 ** 5
    sub = RoundGame(attack.utility, attack.base, attack.updates[:5])
    np.testing.assert_allclose(ev.values_[:5], make_evaluator("shapley").fit(sub).values_, atol=1e-12)


def test_clipped_on_a_constructed_game():
    n = 6
    member = masks_to_matrix(list(range(1 << n)), n)
    honest = np.array([0.10, 0.12, 0.09, 0.11, 0.10, 0.105])
    ev = make_evaluator("clipped").fit(TabularGame(member @ honest))
    np.testing.assert_allclose(ev.values_, honest)  # additive game: Shapley = weights, none clipped
    planted = honest.copy()
    planted[-1] = 0.5
    ev = make_evaluator("clipped").fit(TabularGame(member @ planted))
    assert ev.clipped_.tolist() == [False] * 5 + [True]
    assert ev.values_[-1] == pytest.approx(robust_upper_bounds(planted, 3.0)[-1])
    assert ev.values_[-1] - honest[-1] <= 0.2 * (planted[-1] - honest[-1])


def test_robust_upper_bounds_known_answer():
    b = robust_upper_bounds([1.0, 2.0, 3.0, 4.0, 100.0], k=2.0)
    # others of the last: 1,2,3,4 -> median 2.5, MAD 1 -> 2.5 + 2 * 1.4826
    assert b[-1] == pytest.approx(2.5 + 2 * 1.4826)
    # others of the first: 2,3,4,100 -> median 3.5, |dev| 1.5,0.5,0.5,96.5 -> MAD 1.0
    assert b[0] == pytest.approx(3.5 + 2 * 1.4826)
    assert np.all(np.isinf(robust_upper_bounds([1.0, 2.0], 3.0)))


def test_validation_groups_partition_the_examples():
    y = torch.tensor([0, 1, 2, 3, 4] * 4)
    for by, shards in [("class", 3), ("class", 9), ("random", 3)]:
        groups = validation_groups(y, shards, by, seed=1)
        idx = torch.cat(groups).sort().values
        assert torch.equal(idx, torch.arange(20)), by
    by_class = validation_groups(y, 3, "class", seed=1)
    assert len(by_class) == 3 and all(len(set(y[g].tolist()) & set(y[h].tolist())) == 0
                                      for i, g in enumerate(by_class) for h in by_class[i + 1:])
    assert len(validation_groups(y, 9, "class", seed=1)) == 5
    with pytest.raises(ValueError, match="by must be"):
        validation_groups(y, 3, "label", seed=0)


def test_games_without_validation_data_get_the_base_values():
    n = 4
    member = masks_to_matrix(list(range(1 << n)), n)
    game = TabularGame(member @ np.linspace(0.1, 0.4, n))
    plain = make_evaluator("shapley").fit(game).values_
    for name in ("mom", "coverage_weighted", "filtered"):
        ev = make_evaluator(name).fit(game, seed=0)
        assert not ev.applied_ and np.allclose(ev.values_, plain), name


def test_registered_and_bad_parameters():
    assert {"clipped", "mom", "coverage_weighted", "filtered"} <= set(EVALUATORS)
    game = TabularGame(np.arange(8, dtype=float))
    with pytest.raises(ValueError, match="base must be a plain evaluator"):
        make_evaluator("clipped", base="mom").fit(game)
    with pytest.raises(ValueError, match="base: unknown evaluator 'shaply'; did you mean 'shapley'"):
        make_evaluator("mom", base="shaply").fit(game)
    with pytest.raises(ValueError, match="k must be > 0"):
        make_evaluator("clipped", k=0).fit(game)
    with pytest.raises(ValueError, match="shards must be"):
        make_evaluator("mom", shards=0).fit(game)
    with pytest.raises(ValueError, match="unknown detector"):
        make_evaluator("filtered", detector="nrom").fit(game)
    # Any base evaluator: Monte-Carlo Shapley under the clip.
    ev = make_evaluator("clipped", base="tmc", base_params={"stop": None}).fit(game, seed=0) if "tmc" in EVALUATORS else None
    assert ev is None or ev.values_.shape == (3,)


# -- per-class counts shared with the round game ----------------------------------------------------


def _digits_game(digits_round, metric="accuracy"):
    model, x, y, base, updates = digits_round
    return RoundGame(ModelUtility(model, x, y, metric=metric), base, updates, weights=[3, 1, 2, 5, 4])


def _sharded_mom(game, shards, seed):
    """Median-of-means Shapley through a ShardedUtility round game, written out."""
    groups = validation_groups(game.utility.validation_[1], shards, "class", seed)
    util = ShardedUtility(game.utility, groups, lambda t: np.median(t, axis=1))
    return make_evaluator("shapley").fit(RoundGame(util, game.base, game.updates, weights=game.weights)).values_


def _sharded_coverage(game):
    """Coverage-weighted Shapley through per-class ModelUtility shards, written out."""
    y = game.utility.validation_[1].cpu()
    util = ShardedUtility(game.utility, [torch.nonzero(y == c).reshape(-1) for c in torch.unique(y)],
                          lambda t: t.mean(1), metric="accuracy")
    full = game.full_mask
    t = util.table(game.aggregate_many([0, full] + [full ^ (1 << i) for i in range(game.n)]))
    r0, gain, drop = t[0], t[1] - t[0], (t[1][None] - t[2:]).max(0)
    a = np.where(gain > 0, np.clip(1.0 - drop / np.where(gain > 0, gain, 1.0), 0.0, 1.0), 1.0)
    util.reduce = lambda v: (r0 + a * (v - r0)).mean(1)
    rebuilt = RoundGame(util, game.base, game.updates, weights=game.weights)
    return make_evaluator("shapley").fit(rebuilt).values_, a


@pytest.mark.parametrize("shards,seed", [(5, 0), (3, 7)])
def test_mom_from_class_counts_equals_the_sharded_utility(digits_round, shards, seed):
    game = _digits_game(digits_round)
    ev = make_evaluator("mom", shards=shards, seed=seed).fit(game, seed=0)
    assert ev.applied_ and ev._game_ is None  # the counts path ran
    expected = _sharded_mom(game, shards, seed)
    assert np.abs(expected).max() > 1e-3  # a non-trivial game
    np.testing.assert_allclose(ev.values_, expected, rtol=0, atol=1e-12)
    assert ev.n_shards_ == min(shards, 10)


def test_coverage_from_class_counts_equals_the_per_class_utilities(digits_round):
    game = _digits_game(digits_round)
    ev = make_evaluator("coverage_weighted").fit(game, seed=0)
    assert ev.applied_ and ev._game_ is None
    expected, weights = _sharded_coverage(game)
    np.testing.assert_allclose(ev.class_weights_, weights, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ev.values_, expected, rtol=0, atol=1e-12)


def test_after_exact_shapley_mom_and_coverage_cost_no_evaluation(digits_round):
    game = _digits_game(digits_round)
    make_evaluator("shapley").fit(game)
    n = game.cache.n_evaluations
    forwards = game.utility.n_models_
    for name, params in [("mom", {"shards": 5}), ("coverage_weighted", {})]:
        ev = make_evaluator(name, **params).fit(game, seed=0)
        assert ev.n_new_evaluations_ == 0, name
        assert ev.n_evaluations_ == 1 << game.n, name  # what it reads: every coalition
    assert game.cache.n_evaluations == n and game.utility.n_models_ == forwards


def test_alone_mom_and_coverage_count_what_they_evaluate(digits_round):
    game = _digits_game(digits_round)
    ev = make_evaluator("coverage_weighted").fit(game, seed=0)
    assert ev.n_new_evaluations_ == ev.n_evaluations_ == 1 << game.n
    assert game.cache.n_evaluations == 1 << game.n  # the values joined the round's cache
    plain = make_evaluator("shapley").fit(game)
    assert plain.n_new_evaluations_ == 0


def test_neg_ce_and_random_groups_take_the_sharded_utility(digits_round):
    game = _digits_game(digits_round, "neg_ce")
    assert not game.has_class_counts
    for name, params in [("mom", {"shards": 3}), ("coverage_weighted", {})]:
        ev = make_evaluator(name, **params).fit(game, seed=0)
        assert ev.applied_ and ev._game_ is not None, name
        assert np.all(np.isfinite(ev.values_))
        assert ev.n_new_evaluations_ == ev._game_.cache.n_evaluations == 1 << game.n
    assert game.cache.n_evaluations == 0  # the rebuilt games evaluated everything
    _, weights = _sharded_coverage(game)
    np.testing.assert_allclose(ev.class_weights_, weights, rtol=0, atol=1e-12)
    acc = _digits_game(digits_round)
    ev = make_evaluator("mom", shards=3, by="random").fit(acc, seed=0)
    assert ev._game_ is not None and acc.cache.n_evaluations == 0
