"""The round game's per-class correct counts: one forward pass, the same values, one memo."""

from __future__ import annotations

import numpy as np
import pytest

from fedattr.evaluators import ModelUtility, RoundGame, make_evaluator

N = 5


# These small models run faster on one thread than on two contended ones (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _game(digits_round, metric="accuracy", **kwargs):
    model, x, y, base, updates = digits_round
    return RoundGame(ModelUtility(model, x, y, metric=metric, **kwargs), base, updates, weights=[1, 2, 3, 4, 5])


ALL = list(range(1 << N))


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy"])
def test_one_pass_gives_the_values_bit_identical_and_counts_per_class(digits_round, metric):
    game = _game(digits_round, metric)
    params = game.aggregate_many(ALL)
    values, counts = game.utility.evaluate_with_class_counts(params)
    np.testing.assert_array_equal(values, game.utility(params))
    assert counts.shape == (len(ALL), game.utility.num_classes_) and counts.dtype == np.float64
    assert np.array_equal(counts, np.round(counts)) and np.all(counts <= game.utility.class_counts_)
    _, y = game.utility.validation_
    np.testing.assert_array_equal(game.utility.class_counts_, np.bincount(y.cpu().numpy(), minlength=10))
    # The per-class counts are what the models' argmax says, class by class.
    logits = game.utility.logits(params[:4])
    correct = (logits.argmax(-1) == y[None]).cpu().numpy()
    expected = np.stack([np.bincount(y.cpu().numpy(), weights=row, minlength=10) for row in correct])
    np.testing.assert_array_equal(counts[:4], expected)


def test_class_correct_rows_sum_to_accuracy_times_n_val(digits_round):
    game = _game(digits_round)
    assert game.has_class_counts
    counts = game.class_correct(ALL)
    n_val = game.utility.n_val_
    np.testing.assert_allclose(counts.sum(1), game.values(ALL) * n_val, rtol=0, atol=1e-9)
    assert 0 < counts.sum(1).min() < counts.sum(1).max() < n_val  # coalitions differ


def test_the_game_values_do_not_change_with_the_memo(digits_round):
    model, x, y, base, updates = digits_round

    class Plain:  # the same utility seen as a bare callable: no memo
        def __init__(self, u):
            self.u, self.layout, self.device = u, u.layout, u.device

        def __call__(self, params):
            return self.u(params)

    with_memo = _game(digits_round)
    without = RoundGame(Plain(with_memo.utility), base, updates, weights=[1, 2, 3, 4, 5])
    assert with_memo.has_class_counts and not without.has_class_counts
    np.testing.assert_array_equal(with_memo.values(ALL), without.values(ALL))


def test_class_correct_evaluates_misses_once_and_shares_them_with_the_cache(digits_round):
    game = _game(digits_round)
    game.values([0, 1, 2])
    assert game.n_class_evaluations == 0 and game.cache.n_evaluations == 3
    game.class_correct([0, 1, 2, 1])  # all memoised by the value requests
    assert game.n_class_evaluations == 0 and game.cache.n_evaluations == 3
    game.class_correct([2, 3, 4, 3])
    assert game.n_class_evaluations == 2 and game.cache.n_evaluations == 5
    calls = game.utility.n_models_
    values = game.values([3, 4])  # answered by the cache, no forward pass
    assert game.utility.n_models_ == calls and game.cache.n_evaluations == 5
    fresh = _game(digits_round)
    np.testing.assert_array_equal(values, fresh.values([3, 4]))
    np.testing.assert_array_equal(game.class_correct([3, 4]), fresh.class_correct([3, 4]))
    # Exact Shapley after the counts: only the coalitions not yet evaluated are new.
    ev = make_evaluator("shapley").fit(game)
    assert ev.n_new_evaluations_ == (1 << N) - 5 and game.cache.n_evaluations == 1 << N


def test_a_coalition_valued_elsewhere_is_evaluated_once_for_its_counts(digits_round):
    game = _game(digits_round)
    game.cache.record([(7, 0.5)])  # a value known without its counts (as from logits)
    before = game.cache.n_evaluations
    counts = game.class_correct([7])
    assert game.n_class_evaluations == 1 and game.cache.n_evaluations == before
    assert game.value(7) == 0.5  # the memoised value stays
    np.testing.assert_array_equal(counts, _game(digits_round).class_correct([7]))


def test_a_neg_ce_utility_keeps_no_class_counts(digits_round):
    game = _game(digits_round, "neg_ce")
    assert not game.has_class_counts
    game.values(ALL[:4])
    with pytest.raises(ValueError, match="per-class correct counts need"):
        game.class_correct([0])
    with pytest.raises(ValueError, match="per-class correct counts need"):
        game.utility.evaluate_with_class_counts(game.aggregate_many([0]))


def test_counts_prefilled_from_a_game_sharing_coalitions(digits_round):
    model, x, y, base, updates = digits_round
    game = _game(digits_round)
    game.values(ALL)
    alt = updates.clone()
    alt[-1] = -alt[-1]  # another last client: the coalitions without it are the same models
    cf = RoundGame(game.utility, base, alt, weights=[1, 2, 3, 4, 5])
    bit = 1 << (N - 1)
    cf.cache.prefill((m, v) for m, v in game.cache.items() if not m & bit)
    added = cf.prefill_class_correct((m, c) for m, c in game.class_correct_items() if not m & bit)
    assert added == 1 << (N - 1) and cf.cache.n_evaluations == 0
    counts = cf.class_correct(ALL)
    assert cf.n_class_evaluations == 1 << (N - 1)  # only the coalitions with the new client
    fresh = RoundGame(game.utility, base, alt, weights=[1, 2, 3, 4, 5])
    np.testing.assert_array_equal(counts, fresh.class_correct(ALL))
    assert not _game(digits_round, "neg_ce").class_correct_items()
