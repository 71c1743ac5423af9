"""large_coalition: a semivalue over the largest coalitions, checked against exact answers."""

import itertools
import math

import numpy as np
import pytest

from fedattr.defenses import register_scoring_rules
from fedattr.defenses.large_coalition import large_coalition_weights
from fedattr.evaluators import TabularGame, make_evaluator

register_scoring_rules()


def _table(n, fn):
    return TabularGame([fn(m) for m in range(1 << n)])


def test_weights_are_uniform_over_sizes_then_coalitions():
    np.testing.assert_allclose(large_coalition_weights(4, 1), [0, 0, 1 / (2 * 3), 1 / 2])
    np.testing.assert_allclose(large_coalition_weights(3, 9), [1 / 3, 1 / 6, 1 / 3])  # Shapley's
    for n, d in itertools.product(range(1, 7), range(6)):
        w = large_coalition_weights(n, d)
        assert sum(w[s] * math.comb(n - 1, s) for s in range(n)) == pytest.approx(1.0)


def test_depth_zero_is_loo_and_full_depth_is_shapley():
    rng = np.random.default_rng(0)
    table = np.concatenate([[0.0], rng.random(31)])
    for depth, ref in [(0, "loo"), (4, "shapley"), (7, "shapley")]:
        got = make_evaluator("large_coalition", depth=depth).fit(TabularGame(table)).values_
        np.testing.assert_allclose(got, make_evaluator(ref).fit(TabularGame(table)).values_, atol=1e-12)


def test_glove_game_known_answer():
    # v(S) = 1 if S holds player 0 (the only left glove) and any right glove (1, 2, 3).
    game = _table(4, lambda m: float(bool(m & 1) and bool(m & 0b1110)))
    # depth 1: others' coalitions of size 3 and 2. Player 0: every such coalition of the others
    # holds a right glove -> marginal 1. Player 1: only {0} ∪ ... coalitions without another right
    # glove matter: of size 3 none ({0,2,3} has right gloves), of size 2 none -> 0.
    ev = make_evaluator("large_coalition", depth=1).fit(game)
    np.testing.assert_allclose(ev.values_, [1.0, 0.0, 0.0, 0.0])
    # Shapley gives the right gloves 1/12 each: large coalitions remove that share.
    np.testing.assert_allclose(make_evaluator("shapley").fit(_table(4, lambda m: float(bool(m & 1) and bool(m & 0b1110)))).values_,
                               [0.75, 1 / 12, 1 / 12, 1 / 12])


def test_reads_only_large_coalitions():
    game = _table(6, lambda m: float(bin(m).count("1") ** 2))
    ev = make_evaluator("large_coalition", depth=1).fit(game)
    # sizes 4, 5 and 6 of 6 players: C(6,4) + C(6,5) + 1 coalitions
    assert ev.n_evaluations_ == 15 + 6 + 1
    # symmetric game: equal values, and each is the mean marginal of sizes 4 and 5: ((25-16)+(36-25))/2
    np.testing.assert_allclose(ev.values_, np.full(6, 10.0))


def test_bad_depth_is_one_message():
    with pytest.raises(ValueError, match="large_coalition.*depth"):
        make_evaluator("large_coalition", depth=-1).fit(_table(2, float))
