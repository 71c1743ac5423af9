"""The logit-linear surrogate game, its Shapley evaluator and control-variate Shapley on it."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedattr.evaluators import (
    EVALUATORS,
    ExactShapley,
    LogitSurrogateGame,
    MaxPermutations,
    ModelUtility,
    RoundGame,
    TabularGame,
    choose_pairs,
    default_n_pairs,
    fedavg_coefficients,
    logit_surrogate_for,
    make_evaluator,
    masks_to_matrix,
)

ANCHORS = ("grand", "clients", "both", "loo", "pairs")
# Pairs {0, 1}, {1, 3}, {2, 4}, {3, 4} of the five players: a part of the 10, so that the fit has
# pairs no forward informs.
SOME_PAIRS = [3, 10, 20, 24]


def _clients(state, n, scale, gen, bn=False):
    out = []
    for _ in range(n):
        sd = copy.deepcopy(state)
        for k, v in sd.items():
            if torch.is_floating_point(v):
                sd[k] = v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype)
        if bn:
            sd["bn.running_var"] = sd["bn.running_var"].abs() + 0.05
        out.append(sd)
    return out


# Two zero weights: coalitions {0}, {1} and {0, 1} take FedAvg's uniform fallback.
WEIGHTS = [0.0, 0.0, 3.0, 1.0, 2.0]


@pytest.fixture(scope="module")
def linear():
    """A linear classifier (logits affine in the parameters), float64, with large updates."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (60,), generator=g)
    state = copy.deepcopy(model.state_dict())
    return model, x, y, state, _clients(state, len(WEIGHTS), 0.8, g)


class TinyNet(nn.Module):
    """Linear -> BatchNorm -> tanh -> Linear, float64: non-linear, with running statistics."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyNet().double()
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 4, dtype=torch.float64))
    model.eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (50,), generator=g)
    state = copy.deepcopy(model.state_dict())
    return model, x, y, state, _clients(state, len(WEIGHTS), 0.6, g, bn=True)


def make_game(fixture, metric, weights=WEIGHTS, **kw):
    model, x, y, state, clients = fixture
    util = ModelUtility(model, x, y, metric=metric)
    return RoundGame.from_state_dicts(util, state, clients[:len(weights)], weights=weights, **kw)


def all_masks(n):
    return list(range(1 << n))


# ------------------------------------------------------------------------------ ModelUtility.logits


def test_model_utility_logits_match_forward_and_metrics(tiny):
    model, x, y, state, clients = tiny
    util = ModelUtility(model, x, y, metric="accuracy", batch_size=16)
    params = util.layout.flatten_many([state] + clients[:2])
    z = util.logits(params)
    assert z.shape == (3, 50, 3)
    net = copy.deepcopy(model).eval()
    for k, sd in enumerate([state] + clients[:2]):
        net.load_state_dict(sd)
        with torch.no_grad():
            np.testing.assert_allclose(z[k].numpy(), net(x).numpy(), rtol=1e-12, atol=1e-12)
    got = util.evaluate_all(params)
    np.testing.assert_array_equal(got["accuracy"], (z.argmax(-1) == y).double().mean(1).numpy())
    ce = torch.stack([F.cross_entropy(zk, y) for zk in z]).numpy()
    np.testing.assert_allclose(got["neg_ce"], -ce, rtol=1e-6)
    present = torch.unique(y)
    recall = [np.mean([int(((zk.argmax(-1) == y) & (y == c)).sum()) / int((y == c).sum()) for c in present]) for zk in z]
    np.testing.assert_allclose(got["balanced_accuracy"], recall, rtol=1e-12)
    assert util.logits(params[0]).shape == (1, 50, 3)
    with pytest.raises(ValueError, match="parameter sets of shape"):
        util.logits(params[:, :3])


# ------------------------------------------------------------------------------ the game


@pytest.mark.parametrize("anchor", ANCHORS)
@pytest.mark.parametrize("metric", ["accuracy", "neg_ce", "balanced_accuracy"])
def test_surrogate_equals_game_when_logits_are_linear(linear, metric, anchor):
    game = make_game(linear, metric)
    fresh = make_game(linear, metric)  # evaluated by the engine only, never by the surrogate
    n = game.n
    real = fresh.values(all_masks(n))
    sur = LogitSurrogateGame.from_round_game(game, anchor)
    assert float(np.ptp(real)) > 0.05  # a game worth attributing
    np.testing.assert_allclose(sur.values_of(masks_to_matrix(all_masks(n), n)), real, atol=1e-6)
    np.testing.assert_allclose(sur.table(), real, atol=1e-6)  # incl. the zero-weight coalitions 1, 2, 3
    # The anchor values the surrogate recorded in the game's cache are the engine's.
    for m in sur.anchor_masks:
        assert game.cache.peek(m) == pytest.approx(real[m], abs=1e-7)
    exact = ExactShapley().fit(fresh).values_
    values, is_exact = sur.shapley()
    assert is_exact
    np.testing.assert_allclose(values, exact, atol=1e-6)
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(n) for _ in range(12)] + [np.array([0, 1, 2, 3, 4])])
    walked = sur.permutation_marginals(perms, use_table=False)
    for p, row in zip(perms, walked):
        prefixes = np.cumsum([0] + [1 << int(i) for i in p])
        np.testing.assert_allclose(row[p], np.diff(real[prefixes]), atol=1e-6)


def _formula(z0, zc, zn, zl, weights, member, anchor, zp=None, ridge=0.01):
    """The surrogate's logits written out independently of the module (numpy, one coalition)."""
    n = len(weights)
    if not member.any():
        return z0
    c = fedavg_coefficients(member[None], weights)[0]
    p = fedavg_coefficients(np.ones((1, n), dtype=bool), weights)[0]
    d = zc - z0
    lin = z0 + np.tensordot(c, d, 1)
    r = zn - z0 - np.tensordot(p, d, 1)
    if anchor == "pairs":
        # Logits quadratic in c: per-client and per-pair curvature, ridge on the pair block.
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

        def feats(cc):
            return np.r_[cc * (1 - cc), [2 * cc[i] * cc[j] for i, j in pairs]]
        coal = [np.ones(n, dtype=bool)] + [np.arange(n) != k for k in range(n)] + [masks_to_matrix([m], n)[0] for m in zp]
        z_at = [zn] + list(zl) + list(zp.values())
        rows, rhs = [], []
        for mem, zz in zip(coal, z_at):
            ck = fedavg_coefficients(mem[None], weights)[0]
            rows.append(feats(ck))
            rhs.append((zz - z0 - np.tensordot(ck, d, 1)).reshape(-1))
        a, rhs = np.array(rows), np.array(rhs)
        pen = np.r_[np.zeros(n), np.full(len(pairs), ridge * np.mean(np.diag(a.T @ a)[n:]))]
        beta = np.linalg.pinv(a.T @ a + np.diag(pen)) @ a.T @ rhs
        return lin + (feats(c) @ beta).reshape(z0.shape)
    if anchor == "loo":
        # Per-client curvature u_i fitted (least squares) to the residuals at N and N \ {k}.
        rows, rhs = [p * (1 - p)], [r]
        for k in range(n):
            ck = fedavg_coefficients((np.arange(n) != k)[None], weights)[0]
            rows.append(ck * (1 - ck))
            rhs.append(zl[k] - z0 - np.tensordot(ck, d, 1))
        u = np.linalg.lstsq(np.array(rows), np.array(rhs).reshape(n + 1, -1), rcond=None)[0].reshape(d.shape)
        return lin + np.tensordot(c * (1 - c), u, 1)
    alpha = {"grand": 1.0, "clients": 0.0, "both": (1 - c @ c) / (1 - p @ p)}[anchor]
    return lin + alpha * r


@pytest.mark.parametrize("anchor", ANCHORS)
@pytest.mark.parametrize("metric", ["accuracy", "neg_ce"])
def test_surrogate_formula_and_exactness_on_a_nonlinear_game(tiny, metric, anchor):
    game = make_game(tiny, metric)
    n, full = game.n, game.full_mask
    real = make_game(tiny, metric).values(all_masks(n))
    sur = LogitSurrogateGame.from_round_game(game, anchor, pairs=SOME_PAIRS)
    table = sur.table()
    # Independent formula on the real forwards of the anchor models.
    util = game.utility
    loo = [full ^ (1 << k) for k in range(n)]
    z = util.logits(game.aggregate_many([0] + [1 << i for i in range(n)] + [full] + loo)).numpy()
    zp = dict(zip(SOME_PAIRS, util.logits(game.aggregate_many(SOME_PAIRS)).numpy()))
    y = util.validation_[1]
    for m in (3, 5, 6, 9, 13, 22, 26):
        zm = _formula(z[0], z[1:n + 1], z[n + 1], z[n + 2:], np.array(WEIGHTS), masks_to_matrix([m], n)[0], anchor, zp)
        if metric == "accuracy":
            want = float((zm.argmax(-1) == y.numpy()).mean())
        else:
            want = -float(F.cross_entropy(torch.as_tensor(zm), y))
        assert table[m] == pytest.approx(want, abs=1e-6), m
    # Exact (the real values, bit for bit) wherever the anchoring says so ...
    exact_at = {"grand": [0, full], "clients": [0] + [1 << i for i in range(n)],
                "both": [0, full] + [1 << i for i in range(n)], "loo": [0, full] + [1 << i for i in range(n)] + loo,
                "pairs": [0, full] + [1 << i for i in range(n)] + loo + SOME_PAIRS}[anchor]
    for m in exact_at:
        assert table[m] == game.cache.peek(m)
        assert table[m] == pytest.approx(real[m], abs=1e-6)
    # ... and not elsewhere: this game is far from logit-linear.
    others = [m for m in all_masks(n) if m not in exact_at]
    assert np.abs(table[others] - real[others]).max() > 1e-3
    if anchor == "grand":
        assert np.abs(table[[1 << i for i in range(n)]] - real[[1 << i for i in range(n)]]).max() > 1e-3
    if anchor == "clients":
        assert abs(table[full] - real[full]) > 1e-4


@pytest.mark.parametrize("anchor", ANCHORS)
def test_walked_marginals_are_prefix_differences_with_zero_weights(tiny, anchor):
    sur = LogitSurrogateGame.from_round_game(make_game(tiny, "neg_ce"), anchor)
    n = sur.n
    rng = np.random.default_rng(3)
    perms = np.stack([rng.permutation(n) for _ in range(20)] + [np.array([1, 0, 4, 3, 2])])
    walked = sur.permutation_marginals(perms, use_table=False)
    direct = sur.values_of(masks_to_matrix(all_masks(n), n))
    # The walk computes the float32 cross-entropy with its own log-sum-exp (class-major), so
    # neg_ce agrees with the coalition scoring to float32 round-off, not bit for bit.
    for p, row in zip(perms, walked):
        prefixes = np.cumsum([0] + [1 << int(i) for i in p])
        np.testing.assert_allclose(row[p], np.diff(direct[prefixes]), atol=1e-7)
    sur.table()
    np.testing.assert_allclose(sur.permutation_marginals(perms), walked, atol=1e-7)


def test_sampled_shapley_converges_to_enumeration(tiny):
    sur = LogitSurrogateGame.from_round_game(make_game(tiny, "neg_ce"), "both")
    exact, is_exact = sur.shapley()
    assert is_exact
    rng = np.random.default_rng(4)
    perms = np.stack([rng.permutation(sur.n) for _ in range(3000)])
    marg = sur.permutation_marginals(perms, use_table=False)
    se = marg.std(0) / np.sqrt(len(marg))
    assert np.all(np.abs(marg.mean(0) - exact) < 4 * se)
    small, large = (sur.shapley(max_exact_players=0, n_permutations=k, seed=1) for k in (4, 4000))
    assert not large[1]
    err = [np.abs(v - exact).sum() / np.abs(exact).sum() for v, _ in (small, large)]
    assert err[1] < 0.03 and err[1] < err[0] / 4


def test_efficiency_where_exact_at_both_ends(tiny):
    game = make_game(tiny, "accuracy")
    for anchor in ("grand", "both", "loo"):
        values = make_evaluator("logit_surrogate_shapley", anchor=anchor).fit(game).values_
        assert values.sum() == pytest.approx(game.gain(), abs=1e-12)


# ------------------------------------------------------------------------------ evaluator


def test_evaluator_counts_anchor_evaluations_and_shares_forwards(tiny):
    game = make_game(tiny, "neg_ce")
    n = game.n
    util = game.utility
    calls = []
    real_logits = util.logits

    def counting(params):
        calls.append(params.shape[0])
        return real_logits(params)

    util.logits = counting
    game.value(game.full_mask)  # known before: used as is, not recorded again
    ev = make_evaluator("logit_surrogate_shapley", anchor="both").fit(game)
    assert EVALUATORS["logit_surrogate_shapley"].__name__ == "LogitSurrogateShapley"
    assert ev.exact_ and ev.n_evaluations_ == n + 2 and ev.n_new_evaluations_ == n + 1
    assert game.cache.n_evaluations == n + 2 and sum(calls) == n + 2
    np.testing.assert_allclose(ev.values_, ev.surrogate_.shapley()[0], atol=0)
    other = make_evaluator("logit_surrogate_shapley", anchor="grand").fit(game)
    cv = make_evaluator("cv_shapley", anchor="both", stop=MaxPermutations(2)).fit(game, seed=0)
    assert sum(calls) == n + 2  # one set of forwards for every anchoring and evaluator
    assert other.n_new_evaluations_ == 0 and other.forward_seconds_ == 0.0
    assert cv.surrogate_ is ev.surrogate_
    loo_masks = [game.full_mask ^ (1 << k) for k in range(n)]
    unseen = sum(m not in game.cache for m in loo_masks)  # CV's walks may have evaluated some
    loo = make_evaluator("logit_surrogate_shapley", anchor="loo").fit(game)
    assert sum(calls) == 2 * n + 2 and loo.n_evaluations_ == 2 * n + 2 and loo.n_new_evaluations_ == unseen
    given = make_evaluator("logit_surrogate_shapley", surrogate=ev.surrogate_).fit(game)
    np.testing.assert_array_equal(given.values_, ev.values_)


def test_sampled_evaluator_beyond_max_exact(tiny):
    game = make_game(tiny, "neg_ce")
    exact = make_evaluator("logit_surrogate_shapley").fit(game).values_
    ev = make_evaluator("logit_surrogate_shapley", max_exact_players=3, n_permutations=4000).fit(game, seed=0)
    assert not ev.exact_
    assert np.abs(ev.values_ - exact).sum() < 0.03 * np.abs(exact).sum()


def test_requires_a_fedavg_round_game(tiny):
    with pytest.raises(ValueError, match="custom aggregation"):
        make_evaluator("logit_surrogate_shapley").fit(make_game(tiny, "neg_ce", aggregate=lambda u, w: u.median(0).values))
    with pytest.raises(ValueError, match="ModelUtility"):
        make_evaluator("logit_surrogate_shapley").fit(TabularGame(np.zeros(8)))
    with pytest.raises(ValueError, match="ModelUtility"):
        make_evaluator("cv_shapley", surrogate_kind="logit").fit(TabularGame(np.zeros(8)))
    with pytest.raises(ValueError, match="unknown anchor"):
        make_evaluator("logit_surrogate_shapley", anchor="middle").fit(make_game(tiny, "neg_ce"))
    with pytest.raises(ValueError, match="unknown surrogate_kind"):
        make_evaluator("cv_shapley", surrogate_kind="cubic").fit(make_game(tiny, "neg_ce"))


def test_component_check_covers_the_new_parameters():
    from fedattr.scenario.checks import check_evaluator

    assert check_evaluator("logit_surrogate_shapley", {"anchor": "grand"}, 10) is None
    assert check_evaluator("cv_shapley", {"surrogate_kind": "logit", "anchor": "clients"}, 10) is None
    assert check_evaluator("cv_shapley", {"surrogate_kind": "taylor"}, 10) is None
    assert "unknown anchor" in check_evaluator("logit_surrogate_shapley", {"anchor": "both_ends"}, 10)
    assert "unknown surrogate_kind" in check_evaluator("cv_shapley", {"surrogate_kind": "quadratic"}, 10)


# ------------------------------------------------------------------------------ control variate


@pytest.mark.parametrize("metric", ["accuracy", "neg_ce"])
def test_cv_with_exact_logit_surrogate_has_zero_residual(linear, metric):
    game = make_game(linear, metric)
    exact = ExactShapley().fit(make_game(linear, metric)).values_
    ev = make_evaluator("cv_shapley", surrogate_kind="logit", stop=MaxPermutations(6)).fit(game, seed=0)
    assert isinstance(ev.surrogate_, LogitSurrogateGame)
    np.testing.assert_allclose(ev.residual_, 0.0, atol=1e-6)
    np.testing.assert_allclose(ev.stderr_, 0.0, atol=1e-6)
    np.testing.assert_allclose(ev.values_, exact, atol=1e-6)
    assert ev.n_evaluations_ > game.n + 2  # it did walk real permutations


@pytest.mark.parametrize("anchor", ["grand", "both", "loo", "pairs"])
def test_cv_with_logit_surrogate_is_unbiased_on_a_nonlinear_game(tiny, anchor):
    game = make_game(tiny, "neg_ce")
    game.values(all_masks(game.n))  # the whole table once; every run below reads the cache
    exact = ExactShapley().fit(game).values_
    kw = {"n_pairs": 9} if anchor == "pairs" else {}  # 9 of the 10 pairs, drawn per seed
    sur = logit_surrogate_for(game, anchor, choose_pairs(game.n, 9, 0) if anchor == "pairs" else None)
    assert np.abs(sur.shapley()[0] - exact).sum() > 1e-3 * np.abs(exact).sum()  # biased alone
    runs = np.array([make_evaluator("cv_shapley", anchor=anchor, stop=MaxPermutations(2), antithetic=False, **kw)
                     .fit(game, seed=s).values_ for s in range(300)])
    se = runs.std(0) / np.sqrt(len(runs))
    assert np.all(se > 0)
    assert np.all(np.abs(runs.mean(0) - exact) < 4 * se)


def test_cv_budget_below_the_logit_anchors_is_a_clear_error(tiny):
    from fedattr.evaluators import MaxEvaluations

    game = make_game(tiny, "neg_ce")
    with pytest.raises(ValueError, match="n \\+ 2 = 7"):
        make_evaluator("cv_shapley", stop=MaxEvaluations(6)).fit(game, seed=0)
    ev = make_evaluator("cv_shapley", stop=MaxEvaluations(12)).fit(game, seed=0)
    assert ev.n_evaluations_ <= 12 and ev.budget_exhausted_


# ------------------------------------------------------------------------------ pair curvatures


def test_choose_pairs_draws_distinct_pairs_with_the_seed():
    drawn = choose_pairs(10, 29, 0)
    assert len(drawn) == len(set(drawn)) == 29 and drawn == sorted(drawn)
    assert all(bin(m).count("1") == 2 and m < 1 << 10 for m in drawn)
    assert choose_pairs(10, 29, 0) == drawn and choose_pairs(10, 29, 1) != drawn
    assert choose_pairs(10, None, 3) == choose_pairs(10, default_n_pairs(10), 3)
    assert default_n_pairs(10) == 29 and 2 * 10 + 2 + default_n_pairs(10) == 1024 // 20
    assert default_n_pairs(4) == 6 and len(choose_pairs(4, 100)) == 6  # every pair, no more
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="n_pairs must be a non-negative integer"):
            choose_pairs(10, bad)


@pytest.mark.parametrize("weights", [[2.0, 1.0, 3.0, 1.5, 0.5, 2.5], [0.0, 0.0, 3.0, 1.0, 2.0, 1.0]])
def test_pairs_is_exact_on_logits_quadratic_in_the_coefficients(weights):
    """Every pair drawn and no ridge: logits quadratic in FedAvg's coefficients (a free symmetric
    interaction per output) are recovered at every coalition; with some pairs only, the drawn
    coalitions are still exact and the others are not."""
    n, v, k = len(weights), 40, 4
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(v, k, generator=g, dtype=torch.float64)
    lin = torch.randn(n, v, k, generator=g, dtype=torch.float64)
    inter = torch.randn(n, n, v, k, generator=g, dtype=torch.float64)
    inter = inter + inter.transpose(0, 1)
    member = masks_to_matrix(all_masks(n), n)
    c = torch.as_tensor(fedavg_coefficients(member, np.array(weights)))
    z = z0 + torch.einsum("si,ivk->svk", c, lin) + torch.einsum("si,sj,ijvk->svk", c, c, inter)
    z[0] = z0
    y = torch.randint(0, k, (v,), generator=g)
    full = (1 << n) - 1
    loo = [full ^ (1 << q) for q in range(n)]

    def surrogate(pairs, ridge):
        return LogitSurrogateGame(z[0], z[[1 << i for i in range(n)]], z[full], y, "neg_ce", weights, "pairs",
                                  z_loo=z[loo], pairs=pairs, z_pairs=z[pairs], pair_ridge=ridge)
    real = LogitSurrogateGame(z[0], z[[1 << i for i in range(n)]], z[full], y, "neg_ce", weights, "clients")
    real = real.scores(z.float())
    every = choose_pairs(n, 100)
    np.testing.assert_allclose(surrogate(every, 0.0).table(), real, atol=1e-5)
    some = choose_pairs(n, 5, 0)
    part = surrogate(some, 0.01).table()
    anchors = [0, full] + [1 << i for i in range(n)] + loo + some
    np.testing.assert_array_equal(part[anchors], real[anchors])
    assert np.abs(part - real).max() > 1e-3
    # The plain per-client curvature cannot represent the interactions.
    assert np.abs(LogitSurrogateGame(z[0], z[[1 << i for i in range(n)]], z[full], y, "neg_ce", weights, "loo",
                                     z_loo=z[loo]).table() - real).max() > 1e-2


def test_pairs_evaluator_counts_its_forwards_and_draws_its_pairs_with_the_seed(tiny):
    game = make_game(tiny, "neg_ce")
    n = game.n
    loo = make_evaluator("logit_surrogate_shapley", anchor="loo").fit(game)
    assert loo.n_evaluations_ == 2 * n + 2
    ev = make_evaluator("logit_surrogate_shapley", anchor="pairs", n_pairs=4).fit(game, seed=0)
    assert ev.n_evaluations_ == 2 * n + 2 + 4 and ev.n_new_evaluations_ == 4  # the loo forwards are shared
    assert ev.surrogate_.pairs == choose_pairs(n, 4, np.random.default_rng(0))
    assert set(ev.surrogate_.anchor_masks) >= set(ev.surrogate_.pairs)
    again = make_evaluator("logit_surrogate_shapley", anchor="pairs", n_pairs=4).fit(game, seed=0)
    assert again.surrogate_ is ev.surrogate_ and again.n_new_evaluations_ == 0 and again.forward_seconds_ == 0.0
    other = make_evaluator("logit_surrogate_shapley", anchor="pairs", n_pairs=4).fit(game, seed=1)
    assert other.surrogate_.pairs != ev.surrogate_.pairs
    assert other.values_.sum() == pytest.approx(game.gain(), abs=1e-12)  # exact at both ends: efficient
    # Sampled beyond max_exact_players: the prefixes are scored directly.
    sampled = make_evaluator("logit_surrogate_shapley", anchor="pairs", n_pairs=4, max_exact_players=3,
                             n_permutations=1500).fit(game, seed=0)
    assert not sampled.exact_ and np.abs(sampled.values_ - ev.values_).sum() < 0.04 * np.abs(ev.values_).sum()


def test_pairs_parameters_are_checked():
    from fedattr.scenario.checks import check_evaluator

    assert check_evaluator("logit_surrogate_shapley", {"anchor": "pairs", "n_pairs": 40}, 10) is None
    assert "n_pairs must be" in check_evaluator("logit_surrogate_shapley", {"anchor": "pairs", "n_pairs": -2}, 10)
    assert "pair_ridge must be" in check_evaluator("cv_shapley", {"anchor": "pairs", "pair_ridge": -1.0}, 10)


# ------------------------------------------------------------------------------ walks and designs


def _integer_game(metric, anchor="clients", n=6, v=40, c=4, seed=0):
    """Small-integer logits: mixing them ties classes often (argmax must take the first)."""
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randint(-2, 3, (v, c), generator=g).double()
    zc = z0 + torch.randint(-2, 3, (n, v, c), generator=g).double()
    zn = zc.mean(0)
    y = torch.randint(0, c, (v,), generator=g)
    return LogitSurrogateGame(z0, zc, zn, y, metric, anchor=anchor)


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "neg_ce"])
def test_walked_prefix_values_match_coalition_scoring_with_ties(metric):
    sur = _integer_game(metric)
    n = sur.n
    direct = sur.values_of(masks_to_matrix(all_masks(n), n))
    mixed = sur._mixed(fedavg_coefficients(masks_to_matrix(all_masks(n), n), sur.weights), np.zeros(1 << n))
    top = mixed.max(-1, keepdim=True).values
    assert int(((mixed == top).sum(-1) > 1).sum()) > 100  # many tied maxima
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(n) for _ in range(40)])
    walked = sur.prefix_values(perms)
    prefixes = np.concatenate([np.zeros((40, 1), dtype=np.int64), np.cumsum(1 << perms, axis=1)], axis=1)
    np.testing.assert_allclose(walked, direct[prefixes], atol=1e-7 if metric == "neg_ce" else 0)


@pytest.mark.parametrize("anchor", ANCHORS)
def test_cyclic_marginals_are_the_sum_over_shifts_and_reversed_shifts(tiny, anchor):
    game = make_game(tiny, "neg_ce")
    pairs = SOME_PAIRS if anchor == "pairs" else None
    sur = LogitSurrogateGame.from_round_game(game, anchor, pairs=pairs)
    n = sur.n
    sigma = np.array([[3, 0, 4, 1, 2], [1, 2, 0, 4, 3]])
    perms = []
    for base in sigma:
        for t in range(n):
            perms.append(np.roll(base, -t))
            perms.append(np.roll(base[::-1], -t))
    perms = np.stack(perms)
    # Balanced: every player at every position exactly twice per base (once per direction).
    for i in range(n):
        np.testing.assert_array_equal(np.bincount(np.nonzero(perms == i)[1], minlength=n), 2 * len(sigma))
    np.testing.assert_allclose(sur.cyclic_marginals(sigma), sur.permutation_marginals(perms, use_table=False).sum(0),
                               atol=1e-12)


@pytest.mark.parametrize("anchor", ["both", "loo"])
def test_cyclic_design_converges_to_enumeration_and_keeps_efficiency(tiny, anchor):
    sur = LogitSurrogateGame.from_round_game(make_game(tiny, "neg_ce"), anchor)
    exact, is_exact = sur.shapley()
    assert is_exact
    small, large = (sur.shapley(max_exact_players=0, n_permutations=k, seed=1) for k in (10, 4000))
    assert not large[1]
    err = [np.abs(v - exact).sum() / np.abs(exact).sum() for v, _ in (small, large)]
    assert err[1] < 0.02 and err[1] < err[0] / 4
    # Every permutation's marginals sum to v(N) - v(empty), real values at both ends here.
    assert large[0].sum() == pytest.approx(sur.v_full - sur.v_empty, abs=1e-12)
    # Unbiased: the mean over independent seeds is within 4 standard errors of the exact values.
    runs = np.stack([sur.shapley(max_exact_players=0, n_permutations=10, seed=s)[0] for s in range(300)])
    se = runs.std(0) / np.sqrt(len(runs))
    assert np.all(np.abs(runs.mean(0) - exact) < 4 * se + 1e-12)


def test_cyclic_design_beats_independent_permutations_at_equal_walks():
    """Balanced positions and two permutations per walk: lower error for the same work (n = 12)."""
    sur = _integer_game("neg_ce", anchor="both", n=12, v=60, c=5, seed=3)
    ref = sur.shapley()[0]
    def err(design, k, seed):
        return np.abs(sur.shapley(max_exact_players=0, n_permutations=k, seed=seed, design=design)[0] - ref).sum()
    cyclic = np.mean([err("cyclic", 48, s) for s in range(40)])  # 2 bases: 24 walks
    antithetic = np.mean([err("antithetic", 24, s) for s in range(40)])  # 24 walks
    assert cyclic < 0.8 * antithetic
    with pytest.raises(ValueError, match="unknown design"):
        sur.shapley(max_exact_players=0, design="sobol")


def test_the_walk_gives_the_same_values_whatever_its_thread_count_and_restores_torchs():
    gen = torch.Generator().manual_seed(0)
    n, v, c = 24, 60, 5
    z0 = torch.randn(v, c, generator=gen)
    zc = z0 + 0.3 * torch.randn(n, v, c, generator=gen)
    zf = z0 + 0.3 * torch.randn(v, c, generator=gen)
    y = torch.randint(0, c, (v,), generator=gen)
    before = torch.get_num_threads()
    values = []
    for threads in (None, 1, 2):
        game = LogitSurrogateGame(z0, zc, zf, y, "neg_ce", np.arange(1.0, n + 1), "both")
        game.num_threads = threads
        values.append(game.shapley(n_permutations=200, seed=5)[0])
        assert torch.get_num_threads() == before
    assert all(np.array_equal(values[0], other) for other in values[1:])
