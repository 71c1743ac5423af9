"""Evaluators on games with known answers; oracles are brute force written here, not the package."""

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats

from fedattr.evaluators import (
    CGSV,
    EVALUATORS,
    BanzhafMSR,
    BetaShapley,
    CumulativeValues,
    ExactBanzhaf,
    ExactShapley,
    FunctionGame,
    GTGShapley,
    IndividualMarginal,
    LeastCore,
    LeaveOneOut,
    MaxEvaluations,
    MaxPermutations,
    MaxSamples,
    MaxTime,
    RankStability,
    RelativeChange,
    StandardError,
    TabularGame,
    TMCShapley,
    make_evaluator,
)
from fedattr.evaluators.stopping import EstimatorState

# ---------------------------------------------------------------------------------- oracles


def members(mask, n):
    return [i for i in range(n) if mask >> i & 1]


def brute_shapley(v, n):
    """Average marginal contribution over all n! orderings."""
    phi = np.zeros(n)
    perms = list(itertools.permutations(range(n)))
    for order in perms:
        mask = 0
        for i in order:
            phi[i] += v(mask | 1 << i) - v(mask)
            mask |= 1 << i
    return phi / len(perms)


def brute_semivalue(v, n, weight):
    """sum over S not containing i of weight(|S|) [v(S+i) - v(S)], by explicit subsets."""
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for r in range(n):
            for s in itertools.combinations(others, r):
                mask = sum(1 << j for j in s)
                phi[i] += weight(r) * (v(mask | 1 << i) - v(mask))
    return phi


def brute_banzhaf(v, n):
    return brute_semivalue(v, n, lambda s: 1 / 2 ** (n - 1))


def beta_weight_by_integration(n, alpha, beta):
    """Weight of one coalition of size s: E_t[t^s (1-t)^(n-1-s)] with t ~ Beta(beta, alpha)."""
    return lambda s: integrate.quad(lambda t: t**s * (1 - t) ** (n - 1 - s) * stats.beta.pdf(t, beta, alpha), 0, 1)[0]


# ------------------------------------------------------------------------------------ games


def table_of(fn, n):
    return np.array([fn(m) for m in range(1 << n)], dtype=float)


def additive(n, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    c = 0.3
    return (lambda m: c + sum(a[i] for i in members(m, n))), a


def symmetric(n, seed=0):
    f = np.random.default_rng(seed).normal(size=n + 1)
    return lambda m: f[bin(m).count("1")]


def random_game(n, seed=0):
    t = np.random.default_rng(seed).normal(size=1 << n)
    return lambda m: t[m]


def smooth_game(n, seed=0, noise=0.02):
    """Accuracy-like: saturating in the clients' total 'quality', plus per-coalition noise."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.6, size=n)
    eps = rng.normal(scale=noise, size=1 << n)
    eps[0] = 0.0
    return lambda m: 0.2 + 0.7 * (1 - math.exp(-sum(q[i] for i in members(m, n)))) + eps[m]


class Counting:
    def __init__(self, fn):
        self.fn, self.calls, self.masks = fn, 0, []

    def __call__(self, masks):
        self.calls += 1
        self.masks += list(masks)
        return [self.fn(m) for m in masks]


# ------------------------------------------------------------------------------ exact ones


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_exact_shapley_and_banzhaf_match_brute_force_on_random_games(n):
    v = random_game(n, seed=n)
    game = TabularGame(table_of(v, n))
    np.testing.assert_allclose(ExactShapley().fit(game).values_, brute_shapley(v, n), atol=1e-12)
    np.testing.assert_allclose(ExactBanzhaf().fit(game).values_, brute_banzhaf(v, n), atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_shapley_efficiency(seed):
    n = 6
    v = random_game(n, seed)
    phi = ExactShapley().fit(TabularGame(table_of(v, n))).values_
    assert phi.sum() == pytest.approx(v((1 << n) - 1) - v(0), abs=1e-12)


def test_symmetric_players_get_equal_values():
    n = 6
    v = symmetric(n)
    game = TabularGame(table_of(v, n))
    for ev in (ExactShapley(), ExactBanzhaf(), BetaShapley(16, 1), LeaveOneOut(), IndividualMarginal()):
        vals = ev.fit(game).values_
        np.testing.assert_allclose(vals, vals[0], atol=1e-12)
    assert ExactShapley().fit(game).values_[0] == pytest.approx((v((1 << n) - 1) - v(0)) / n)


def test_null_player_gets_zero():
    n, null = 6, 2
    base = random_game(n, seed=11)
    v = lambda m: base(m & ~(1 << null))  # noqa: E731
    game = TabularGame(table_of(v, n))
    for ev in (ExactShapley(), ExactBanzhaf(), BetaShapley(4, 1), LeaveOneOut(), IndividualMarginal(),
               TMCShapley(truncation=None, stop=MaxPermutations(50)),
               GTGShapley(eps_round=0, eps_within=0, max_permutations=60)):
        assert ev.fit(game, seed=0).values_[null] == pytest.approx(0.0, abs=1e-12), ev


def test_additive_game_all_marginal_notions_agree():
    n = 7
    v, a = additive(n)
    game = TabularGame(table_of(v, n))
    for ev in (ExactShapley(), ExactBanzhaf(), IndividualMarginal(), LeaveOneOut(), BetaShapley(16, 1),
               BetaShapley(1, 4)):
        np.testing.assert_allclose(ev.fit(game).values_, a, atol=1e-12, err_msg=repr(ev))
    lc = LeastCore().fit(game)
    np.testing.assert_allclose(lc.values_, a, atol=1e-7)
    assert lc.subsidy_ == pytest.approx(0.0, abs=1e-7)


def test_individual_and_loo_definitions():
    n = 5
    v = random_game(n, seed=4)
    game = TabularGame(table_of(v, n))
    full = (1 << n) - 1
    np.testing.assert_allclose(IndividualMarginal().fit(game).values_, [v(1 << i) - v(0) for i in range(n)])
    np.testing.assert_allclose(LeaveOneOut().fit(game).values_, [v(full) - v(full ^ 1 << i) for i in range(n)])


@pytest.mark.parametrize("alpha,beta", [(1, 1), (16, 1), (4, 1), (2, 5)])
def test_beta_shapley_matches_brute_force_with_integrated_weights(alpha, beta):
    n = 5
    v = random_game(n, seed=7)
    game = TabularGame(table_of(v, n))
    expected = brute_semivalue(v, n, beta_weight_by_integration(n, alpha, beta))
    np.testing.assert_allclose(BetaShapley(alpha, beta).fit(game).values_, expected, atol=1e-9)


def test_beta_one_one_is_shapley():
    n = 8
    game = TabularGame(table_of(random_game(n, seed=8), n))
    np.testing.assert_allclose(BetaShapley(1, 1).fit(game).values_, ExactShapley().fit(game).values_, atol=1e-12)


def test_least_core_allocation_is_efficient_and_feasible():
    n = 5
    v = smooth_game(n, seed=3)
    game = TabularGame(table_of(v, n))
    lc = LeastCore().fit(game)
    gain = v((1 << n) - 1) - v(0)
    assert lc.values_.sum() == pytest.approx(gain, abs=1e-8)
    for m in range(1, (1 << n) - 1):
        assert lc.values_[members(m, n)].sum() + lc.subsidy_ >= v(m) - v(0) - 1e-8


def test_exact_refuses_more_than_14_players_before_evaluating():
    counter = Counting(lambda m: 0.0)
    game = FunctionGame(counter, 15, batched=True)
    for name in ("shapley", "banzhaf", "beta_shapley", "least_core"):
        with pytest.raises(ValueError, match="n <= 14"):
            make_evaluator(name).fit(game)
    assert counter.calls == 0


def test_player_ids_and_as_dict():
    n = 3
    v, a = additive(n)
    game = TabularGame(table_of(v, n), players=[10, 7, 42])
    ev = ExactShapley().fit(game)
    assert ev.players_ == (10, 7, 42)
    assert ev.as_dict() == pytest.approx({10: a[0], 7: a[1], 42: a[2]})


# ---------------------------------------------------------------------- Monte-Carlo ones


@pytest.mark.parametrize("n,seed", [(6, 0), (8, 1)])
def test_tmc_converges_to_exact_shapley(n, seed):
    v = smooth_game(n, seed)
    game = TabularGame(table_of(v, n))
    exact = ExactShapley().fit(game).values_
    small = TMCShapley(truncation=None, stop=MaxPermutations(20)).fit(game, seed=seed)
    big = TMCShapley(truncation=None, stop=MaxPermutations(2000)).fit(game, seed=seed)
    err_small = np.abs(small.values_ - exact).max()
    err_big = np.abs(big.values_ - exact).max()
    assert err_big < 0.004  # values are ~0.02-0.2; stderr at 2000 permutations is ~1e-3
    assert err_big < err_small
    assert big.n_permutations_ == 2000
    assert np.all(big.stderr_ < 0.003)
    assert np.all(np.abs(big.values_ - exact) < 4 * big.stderr_)
    # Truncated and antithetic variants with default budgets stay close.
    for ev in (TMCShapley(), TMCShapley(antithetic=True, stop=MaxPermutations(400))):
        ev.fit(game, seed=seed)
        assert np.abs(ev.values_ - exact).sum() / np.abs(exact).sum() < 0.15, ev


@pytest.mark.parametrize("n,seed", [(6, 2), (8, 3)])
def test_gtg_converges_to_exact_shapley(n, seed):
    v = smooth_game(n, seed)
    game = TabularGame(table_of(v, n))
    exact = ExactShapley().fit(game).values_
    long = GTGShapley(eps_within=0, min_permutations=1500, max_permutations=1600).fit(game, seed=seed)
    assert np.abs(long.values_ - exact).max() < 0.005
    default = GTGShapley().fit(game, seed=seed)
    assert default.n_permutations_ > 30 and default.n_permutations_ % n == 0
    assert np.abs(default.values_ - exact).sum() / np.abs(exact).sum() < 0.15
    normed = GTGShapley(normalize=True).fit(game, seed=seed)
    assert normed.values_.sum() == pytest.approx(v((1 << n) - 1) - v(0))


def test_gtg_guided_sampling_puts_each_player_first_once_per_cycle():
    n = 5
    counter = Counting(smooth_game(n, 4))
    game = FunctionGame(counter, n, batched=True)
    GTGShapley(eps_within=0, min_permutations=0, tolerance=1e9, window=1).fit(game, seed=0)
    singletons = [m for m in counter.masks if m and m & (m - 1) == 0]
    assert sorted(singletons) == [1 << i for i in range(n)]


def test_gtg_skips_a_round_whose_gain_is_under_threshold():
    n = 6
    v = lambda m: 0.5 + 0.004 * bin(m).count("1") / n + 0.003 * (m & 1)  # noqa: E731  gain 0.007
    counter = Counting(v)
    game = FunctionGame(counter, n, batched=True)
    ev = GTGShapley().fit(game, seed=0)
    assert ev.skipped_
    np.testing.assert_array_equal(ev.values_, np.zeros(n))
    assert ev.n_evaluations_ == 2 and game.cache.n_evaluations == 2
    assert sorted(counter.masks) == [0, (1 << n) - 1]
    # Just over the threshold the round is valued.
    ev2 = GTGShapley(eps_round=0.005).fit(FunctionGame(v, n), seed=0)
    assert not ev2.skipped_ and ev2.n_evaluations_ > 2 and np.any(ev2.values_ != 0)


def test_within_round_truncation_saves_evaluations():
    n = 8
    # Saturates after any two players: later prefixes are within eps of v(N).
    v = lambda m: min(bin(m).count("1"), 2) * 0.25  # noqa: E731
    full = GTGShapley(eps_within=0, min_permutations=0, window=1, tolerance=1e9).fit(FunctionGame(v, n), seed=0)
    trunc = GTGShapley(min_permutations=0, window=1, tolerance=1e9).fit(FunctionGame(v, n), seed=0)
    assert trunc.n_evaluations_ < full.n_evaluations_
    np.testing.assert_allclose(trunc.values_, full.values_)


@pytest.mark.parametrize("n,seed", [(6, 5), (8, 6)])
def test_banzhaf_msr_converges_to_exact_banzhaf(n, seed):
    v = smooth_game(n, seed)
    game = TabularGame(table_of(v, n))
    exact = brute_banzhaf(v, n)
    ev = BanzhafMSR(stop=MaxSamples(20000)).fit(game, seed=seed)
    assert ev.n_samples_ >= 20000
    assert np.abs(ev.values_ - exact).max() < 0.01
    assert np.all(np.abs(ev.values_ - exact) < 5 * ev.stderr_)


def test_beta_shapley_montecarlo_converges():
    n = 6
    v = smooth_game(n, 9)
    game = TabularGame(table_of(v, n))
    exact = BetaShapley(4, 1).fit(game).values_
    mc = BetaShapley(4, 1, method="montecarlo", stop=MaxSamples(3000)).fit(game, seed=0)
    assert np.abs(mc.values_ - exact).max() < 0.01


@pytest.mark.parametrize("name", ["tmc", "gtg", "banzhaf_msr"])
def test_monte_carlo_is_deterministic_given_seed(name):
    n = 7
    game = lambda: TabularGame(table_of(smooth_game(n, 1), n))  # noqa: E731
    a = make_evaluator(name).fit(game(), seed=123)
    b = make_evaluator(name).fit(game(), seed=123)
    c = make_evaluator(name).fit(game(), seed=124)
    np.testing.assert_array_equal(a.values_, b.values_)
    assert a.n_evaluations_ == b.n_evaluations_
    assert not np.array_equal(a.values_, c.values_)


def test_gtg_batching_does_not_change_results():
    n = 7
    mk = lambda: TabularGame(table_of(smooth_game(n, 2), n))  # noqa: E731
    a = GTGShapley().fit(mk(), seed=5)
    b = GTGShapley(batch_permutations=n).fit(mk(), seed=5)
    np.testing.assert_array_equal(a.values_, b.values_)
    assert a.n_evaluations_ == b.n_evaluations_


# ------------------------------------------------------------------------- shared cache


def test_shared_cache_counts_the_union_and_shares_numbers():
    n = 6
    counter = Counting(smooth_game(n, 0))
    game = FunctionGame(counter, n, batched=True)
    shap = ExactShapley().fit(game)
    assert counter.calls == 1 and game.cache.n_evaluations == 1 << n
    assert shap.n_evaluations_ == shap.n_new_evaluations_ == 1 << n
    for ev in (LeaveOneOut(), IndividualMarginal(), TMCShapley(), GTGShapley(), BanzhafMSR()):
        ev.fit(game, seed=0)
        assert ev.n_new_evaluations_ == 0, ev
        assert ev.n_evaluations_ > 0
    assert counter.calls == 1 and len(counter.masks) == 1 << n
    assert game.cache.n_evaluations == 1 << n
    assert game.cache.n_hits > 0


def test_cache_union_count_of_cheap_evaluators():
    n = 5
    counter = Counting(random_game(n, 0))
    game = FunctionGame(counter, n, batched=True)
    loo = LeaveOneOut().fit(game)
    ind = IndividualMarginal().fit(game)
    assert loo.n_evaluations_ == ind.n_evaluations_ == n + 1
    assert loo.n_new_evaluations_ == n + 1
    # LOO asked N and the N minus i; individual adds empty and the singletons (disjoint for n > 2).
    assert ind.n_new_evaluations_ == n + 1
    assert game.cache.n_evaluations == 2 * n + 2 == len(set(counter.masks)) == len(counter.masks)


def test_cache_evaluates_misses_in_one_call_and_dedupes():
    counter = Counting(lambda m: float(m))
    game = FunctionGame(counter, 4, batched=True)
    np.testing.assert_array_equal(game.values([3, 3, 5, 0]), [3, 3, 5, 0])
    assert counter.calls == 1 and counter.masks == [3, 5, 0]
    game.values([5, 6])
    assert counter.masks == [3, 5, 0, 6]
    assert game.cache.n_evaluations == 4 and game.cache.n_requests == 6 and game.cache.n_hits == 2


def test_cache_prefill_is_served_without_evaluating():
    counter = Counting(lambda m: float(m))
    game = FunctionGame(counter, 3, batched=True)
    assert game.cache.prefill([(0, -1.0), (7, 70.0)]) == 2
    assert game.cache.prefill([(7, 0.0)]) == 0  # known values are never overwritten
    ev = LeaveOneOut().fit(game)
    np.testing.assert_array_equal(ev.values_, [70 - 6, 70 - 5, 70 - 3])
    assert counter.masks == [6, 5, 3]
    assert ev.n_evaluations_ == 4 and ev.n_new_evaluations_ == 3 and game.cache.n_evaluations == 3


# ----------------------------------------------------------------------- stopping rules


@pytest.mark.parametrize("name", ["tmc", "gtg", "banzhaf_msr"])
@pytest.mark.parametrize("budget", [5, 23, 60])
def test_max_evaluations_is_a_hard_budget(name, budget):
    n = 8
    game = TabularGame(table_of(smooth_game(n, 0), n))
    ev = make_evaluator(name, stop=MaxEvaluations(budget)).fit(game, seed=0)
    assert ev.n_evaluations_ <= budget
    assert game.cache.n_evaluations == ev.n_evaluations_
    # Either a sample was cut (and dropped) at the budget, or the budget was met exactly.
    assert ev.budget_exhausted_ or ev.n_evaluations_ == budget


def test_max_evaluations_budget_respected_by_beta_montecarlo():
    n = 8
    game = TabularGame(table_of(smooth_game(n, 0), n))
    ev = BetaShapley(4, 1, method="montecarlo", stop=MaxEvaluations(40)).fit(game, seed=0)
    assert ev.n_evaluations_ <= 40 and ev.budget_exhausted_


def test_sample_and_permutation_caps():
    n = 6
    game = TabularGame(table_of(smooth_game(n, 0), n))
    assert TMCShapley(stop=MaxPermutations(13)).fit(game, seed=0).n_permutations_ == 13
    anti = TMCShapley(antithetic=True, stop=MaxPermutations(10)).fit(game, seed=0)
    assert anti.n_permutations_ == 10 and anti.n_samples_ == 5
    assert BanzhafMSR(batch_size=1, stop=MaxSamples(7)).fit(game, seed=0).n_samples_ == 7
    assert BanzhafMSR(batch_size=4, stop=MaxSamples(7)).fit(game, seed=0).n_samples_ == 8
    assert GTGShapley(max_permutations=12, tolerance=0).fit(game, seed=0).n_permutations_ == 12
    assert TMCShapley(stop=MaxTime(0)).fit(game, seed=0).n_samples_ == 1


def test_combinators():
    n = 5
    game = TabularGame(table_of(smooth_game(n, 0), n))
    assert TMCShapley(stop=MaxPermutations(5) | MaxPermutations(9)).fit(game).n_permutations_ == 5
    assert TMCShapley(stop=MaxPermutations(5) & MaxPermutations(9)).fit(game).n_permutations_ == 9
    assert (MaxEvaluations(10) | MaxSamples(100)).evaluation_budget == 10
    assert (MaxEvaluations(10) | MaxEvaluations(4)).evaluation_budget == 4
    assert (MaxEvaluations(10) & MaxSamples(100)).evaluation_budget is None
    assert (MaxEvaluations(10) & MaxEvaluations(30)).evaluation_budget == 30


def test_standard_error_rule_stops_once_below_threshold():
    n = 6
    game = TabularGame(table_of(smooth_game(n, 0), n))
    ev = TMCShapley(truncation=None, stop=StandardError(0.004, min_samples=20) | MaxPermutations(5000)).fit(game, seed=0)
    assert 20 <= ev.n_samples_ < 5000
    assert ev.stderr_.max() <= 0.004
    # One sample earlier the rule was not yet satisfied (otherwise it would have stopped there).
    again = TMCShapley(truncation=None, stop=MaxPermutations(ev.n_samples_ - 1)).fit(game, seed=0)
    assert again.n_samples_ < 20 or again.stderr_.max() > 0.004


def test_rank_stability_stops_when_ranking_settles():
    n = 6
    v, a = additive(n)
    game = TabularGame(table_of(v, n))
    # On an additive game every permutation gives the exact marginals: ranking never changes.
    ev = TMCShapley(truncation=None, stop=RankStability(window=5, min_samples=3)).fit(game, seed=0)
    assert ev.n_samples_ == 5
    rule = RankStability(window=3, min_samples=0)
    state = lambda m: EstimatorState(n_samples=10, means=np.array(m))  # noqa: E731
    assert [rule.check(state(m)) for m in ([1, 2], [1, 2], [2, 1], [2, 1], [2, 1])] == [False, False, False, False, True]
    rule.reset()
    assert not rule.check(state([2, 1]))


def test_relative_change_rule():
    rule = RelativeChange(tolerance=0.05, window=3, min_samples=3)
    hist = [np.array([1.0, 1.0]), np.array([1.02, 1.0]), np.array([1.0, 1.0])]
    assert rule.check(EstimatorState(n_samples=3, history=hist))
    assert not rule.check(EstimatorState(n_samples=2, history=hist[:2]))
    hist[0] = np.array([2.0, 1.0])
    assert not rule.check(EstimatorState(n_samples=3, history=hist))


# ------------------------------------------------------------------------ registry, misc


def test_registry_names_and_errors():
    assert set(EVALUATORS) >= {"individual", "loo", "shapley", "tmc", "gtg", "banzhaf", "banzhaf_msr",
                               "beta_shapley", "cgsv", "least_core"}
    with pytest.raises(ValueError, match="unknown evaluator 'shapely'; did you mean 'shapley'.*choose one of: .*tmc"):
        make_evaluator("shapely")
    with pytest.raises(ValueError, match="unknown parameter 'eps_rnd'.*did you mean 'eps_round'.*allowed: .*eps_round="):
        make_evaluator("gtg", eps_rnd=0.1)
    with pytest.raises(ValueError, match="unknown stopping rule 'max_evals'; did you mean 'max_evaluations'"):
        make_evaluator("tmc", stop={"max_evals": 10})
    assert make_evaluator("tmc", antithetic=True).antithetic
    assert "antithetic=True" in repr(make_evaluator("tmc", antithetic=True))


def test_cgsv_geometry():
    import torch

    from fedattr.evaluators import RoundGame

    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    ups = torch.stack([e1, 3 * e1, -e1, e2, torch.zeros(3)])
    calls = []
    util = lambda p: calls.append(1) or np.zeros(p.shape[0])  # noqa: E731
    game = RoundGame(util, torch.zeros(3), ups, weights=[1, 1, 1, 1, 1])
    ev = CGSV().fit(game)
    # Normalised aggregate = (e1 + e1 - e1 + e2) / 5 -> direction (1, 1, 0)/sqrt2.
    np.testing.assert_allclose(ev.values_, [2**-0.5, 2**-0.5, -(2**-0.5), 2**-0.5, 0.0], atol=1e-12)
    assert ev.n_evaluations_ == 0 and not calls
    raw = CGSV(normalize=False, weighted=False).fit(game)  # aggregate (3, 1, 0)/5
    np.testing.assert_allclose(raw.values_[:2], [3 / 10**0.5] * 2, atol=1e-12)
    with pytest.raises(ValueError, match="updates"):
        CGSV().fit(TabularGame(np.zeros(4)))


def test_cumulative_values_handle_absent_players_and_normalise():
    cum = CumulativeValues(ema_alpha=0.5)
    cum.update([3, 7], [0.2, -0.1])
    cum.update([7, 9], [0.4, 0.4])
    cum.update([3, 7, 9], [0.0, 0.0, 0.0])
    assert cum.total_ == pytest.approx({3: 0.2, 7: 0.3, 9: 0.4})
    assert cum.normalised_ == pytest.approx({3: 0.2 / 0.3, 7: -0.1 / 0.3 + 0.5, 9: 0.5})
    assert cum.rounds_present_ == {3: 2, 7: 3, 9: 2}
    assert cum.ema_[9] == pytest.approx(0.5 * (0.5 * 0.4))
    assert cum.n_rounds_ == 3 and cum.ranking() == [9, 7, 3]
    np.testing.assert_allclose(cum.as_array("total", [9, 3, 11]), [0.4, 0.2, 0.0])
    ev = ExactShapley().fit(TabularGame(np.array([0.0, 1.0, 2.0, 3.0]), players=[3, 9]))
    cum.add(ev)
    assert cum.total_[3] == pytest.approx(0.2 + 1.0) and cum.total_[9] == pytest.approx(0.4 + 2.0)
