"""Public-reference player: v'(S) = v(S + r) - v(r), known answers on constructed round games."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedattr.defenses import register_scoring_rules
from fedattr.defenses.reference_player import public_subset, reference_game, train_reference
from fedattr.evaluators import ModelUtility, RoundGame, TabularGame, make_evaluator
from fedattr.evaluators.layout import StateLayout

register_scoring_rules()


def _coverage_utility(params: torch.Tensor) -> np.ndarray:
    """How many coordinates of the aggregated parameters are positive (a coverage game)."""
    return (torch.as_tensor(params) > 1e-9).sum(1).double().numpy()


def _coverage_game(reference=None):
    # a covers coordinate 0, b coordinate 1, c coordinate 2; FedAvg of non-negative updates keeps
    # a coordinate positive iff a member covers it, so v(S) = |coordinates S covers|.
    game = RoundGame(_coverage_utility, torch.zeros(3), torch.eye(3), weights=[10, 10, 10], players=[5, 6, 7])
    if reference is not None:
        game.reference_update = torch.as_tensor(reference, dtype=torch.float32)
    return game


def test_reference_covering_a_clients_coordinate_removes_exactly_its_value():
    plain = make_evaluator("shapley").fit(_coverage_game()).values_
    np.testing.assert_allclose(plain, [1.0, 1.0, 1.0])
    ev = make_evaluator("reference_player").fit(_coverage_game([0.0, 1.0, 0.0]), seed=0)
    # v'(S) = |cov(S) + {1}| - 1: client 6 adds nothing beyond the reference, the others 1 each.
    np.testing.assert_allclose(ev.values_, [1.0, 0.0, 1.0])
    assert ev.applied_ and ev.reference_value_ == 1.0 and ev.reference_weight_ == 10.0
    # Efficiency in the reference game: sum = v(N + r) - v(r) = 3 - 1.
    assert ev.values_.sum() == pytest.approx(2.0)


def test_reference_covering_nothing_new_leaves_the_values():
    ev = make_evaluator("reference_player").fit(_coverage_game([0.0, 0.0, 0.0]), seed=0)
    np.testing.assert_allclose(ev.values_, [1.0, 1.0, 1.0])
    assert ev.reference_value_ == 0.0


def test_reference_weight_changes_the_aggregate_not_the_coverage_answer():
    ev = make_evaluator("reference_player", weight=3.5).fit(_coverage_game([1.0, 1.0, 0.0]), seed=0)
    np.testing.assert_allclose(ev.values_, [0.0, 0.0, 1.0])
    assert ev.reference_weight_ == 3.5 and ev.reference_value_ == 2.0


def test_reference_game_reuses_the_rounds_cache_and_counts_only_new_coalitions():
    game = _coverage_game([0.0, 1.0, 0.0])
    make_evaluator("shapley").fit(game)  # all 8 coalitions without the reference
    ev = make_evaluator("reference_player").fit(game, seed=0)
    # the 8 coalitions with the reference are new; the empty one came from the round's cache
    assert ev.n_new_evaluations_ == 8
    ext = reference_game(game, torch.tensor([0.0, 1.0, 0.0]), 10.0)
    assert ext.n == 4 and ext.players[-1] == "reference" and ext.cache.n_evaluations == 0
    assert ext.value(0b0011) == game.value(0b0011) and ext.cache.n_evaluations == 0


def test_without_public_data_it_is_the_base_evaluator():
    table = TabularGame([0.0, 1.0, 2.0, 4.0])
    ev = make_evaluator("reference_player").fit(table, seed=0)
    assert not ev.applied_
    np.testing.assert_allclose(ev.values_, make_evaluator("shapley").fit(TabularGame([0.0, 1.0, 2.0, 4.0])).values_)


@pytest.mark.parametrize("params, msg", [({"per_class": 0}, "per_class"), ({"weight": "mode"}, "weight"),
                                         ({"weight": -1.0}, "weight"), ({"lr": 0.0}, "lr")])
def test_bad_parameters_are_one_message(params, msg):
    with pytest.raises(ValueError, match=f"reference_player.*{msg}"):
        make_evaluator("reference_player", **params).fit(_coverage_game([0.0, 1.0, 0.0]), seed=0)


def test_public_subset_takes_at_most_per_class_of_each_class_seeded():
    y = torch.tensor([0] * 5 + [1] * 2 + [2] * 4)
    x = torch.arange(11.0)[:, None]
    xs, ys = public_subset(x, y, 3, seed=1)
    assert torch.bincount(ys).tolist() == [3, 2, 3]
    assert torch.equal(y[xs[:, 0].long()], ys)  # the rows are input rows with their own labels
    assert torch.equal(public_subset(x, y, 3, seed=1)[0], xs)
    assert not torch.equal(public_subset(x, y, 3, seed=2)[0], xs)


def _linear_round():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    gen = torch.Generator().manual_seed(0)
    x_val, y_val = torch.randn(60, 4, generator=gen), torch.arange(60) % 3
    util = ModelUtility(model, x_val, y_val)
    base = StateLayout.from_module(model).flatten(model.state_dict())
    updates = 0.1 * torch.randn(3, base.numel(), generator=gen)
    public = (torch.randn(30, 4, generator=gen), torch.arange(30) % 3)
    return util, base, updates, public


def test_trained_reference_is_the_public_training_step_and_is_deterministic():
    util, base, updates, public = _linear_round()
    ref = train_reference(util, base, *public, epochs=1, batch_size=8, lr=0.1, seed=3)
    assert ref.shape == base.shape and float(ref.norm()) > 0
    assert torch.equal(ref, train_reference(util, base, *public, epochs=1, batch_size=8, lr=0.1, seed=3))
    # the utility's own model is untouched (it evaluates every coalition)
    assert torch.equal(StateLayout.from_module(util._model).flatten(util._model.state_dict()), base)

    game = RoundGame(util, base, updates, weights=[20, 30, 40])
    game.public_data = public
    ev = make_evaluator("reference_player", per_class=10, batch_size=8, lr=0.1).fit(game, seed=4)
    # the same values as the reference game built by hand with the reference it trained
    rng = np.random.default_rng(4)
    rng.integers(2**31 - 1)  # the base evaluator's seed is drawn first, the reference's training seed next
    seed = int(rng.integers(2**31 - 1))
    ref = train_reference(util, base, *public_subset(*public, 10, 0), batch_size=8, lr=0.1, seed=seed)
    ext = reference_game(RoundGame(util, base, updates, weights=[20, 30, 40]), ref, 30.0)
    v = ext.values(range(16))
    table = TabularGame([v[m | 8] - v[8] for m in range(8)])
    np.testing.assert_allclose(ev.values_, make_evaluator("shapley").fit(table).values_, atol=1e-12)
